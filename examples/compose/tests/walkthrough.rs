//! The README's walkthrough, at reduced width so that it runs in the test command (about
//! 20 s in release on 2 cores; `cargo run --release -p segkit-example-compose` runs the
//! full-size models).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use segkit::ModelConfig;
use segkit_example_compose::compose::{r50_d8_jpu_danet, swin_t_danet, Parts, Size};
use segkit_example_compose::train::{segment_with_segmenter, train_save_reload};

const CLASSES: usize = 11;

#[test]
fn json_configs_are_the_typed_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for cfg in [
        r50_d8_jpu_danet(CLASSES, Size::Full),
        swin_t_danet(CLASSES, Size::Full),
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{}.json", cfg.name))).unwrap();
        let parsed = ModelConfig::from_json(&text).unwrap();
        assert_eq!(parsed, ModelConfig::EncoderDecoder(Box::new(cfg)));
    }
}

#[test]
fn parts_start_from_the_reference_initialisation() {
    let cfg = r50_d8_jpu_danet(CLASSES, Size::Reduced);
    let map = VarMap::new();
    let parts = Parts::new(
        &cfg,
        VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let logits = parts.forward_t(&x, false).unwrap();
    assert_eq!(logits.dims(), &[1, CLASSES, 8, 8]);
    // A VarMap no longer gives all-zero weights: the logits vary.
    let v = logits.flatten_all().unwrap();
    let spread = (v.max(0).unwrap().to_scalar::<f32>().unwrap()
        - v.min(0).unwrap().to_scalar::<f32>().unwrap())
    .abs();
    assert!(spread > 0.0, "logits are constant");
    // The parts' keys are the segmentor's: the same VarMap loads into the config model.
    let data = map.data().lock().unwrap();
    assert!(data.contains_key("decode_head.conv_seg.weight"));
    assert!(data.contains_key("neck.dilation_layers.3.0.pointwise_conv.conv.weight"));
}

fn walk(cfg: segkit::SegmentorConfig) {
    let t = std::time::Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "segkit-compose-test-{}-{}",
        std::process::id(),
        cfg.name
    ));
    let r = train_save_reload(&cfg, 3, &dir).unwrap();
    assert!(r.initial_logit_std > 0.0, "{r:?}");
    assert!(r.losses.iter().all(|l| l.is_finite()), "{r:?}");
    assert!(r.losses.last() < r.losses.first(), "{}: {r:?}", cfg.name);
    // The same weights give the same logits; the reloaded model folds its BatchNorms from
    // the file's f32 values, so equal to f32 rounding.
    assert!(r.reload_max_diff <= 1e-5 * r.logit_max.max(1.0), "{r:?}");
    let agree = segment_with_segmenter(&dir).unwrap();
    assert!((0.0..=1.0).contains(&agree));
    eprintln!(
        "{}: losses {:?}, {:.1} s",
        cfg.name,
        r.losses,
        t.elapsed().as_secs_f32()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn r50_d8_jpu_danet_trains_saves_and_reloads() {
    walk(r50_d8_jpu_danet(CLASSES, Size::Reduced));
}

#[test]
fn swin_t_danet_trains_saves_and_reloads() {
    walk(swin_t_danet(CLASSES, Size::Reduced));
}
