//! ImageNet-sized PSSL training: PaddleSeg's 1001-class layout (1000 synsets + background,
//! ignore 1001) trains through the [`crate::Trainer`] with class ids past 255.

use std::path::Path;

use candle_core::Tensor;

use super::dataset::{Background, PaddleSegPsslConfig};
use super::dataset_tests::write_npz_shaped;
use crate::config::*;
use crate::Trainer;
use segkit_models::encoder_decoder::demo;
use segkit_models::{BackboneConfig, HeadConfig, SegmentorConfig};

const SYNSETS: usize = 1000;
const SIDE: usize = 24;

/// A narrow PSPNet of `classes` classes (the demo model with 4 / 8 channels).
fn tiny_psp(classes: &[String]) -> SegmentorConfig {
    let mut c = demo::demo_config();
    c.name = "tiny_pssl".into();
    let BackboneConfig::ResNet(r) = &mut c.backbone else {
        panic!("the demo model has a ResNet backbone");
    };
    r.base_channels = 4;
    r.stem = segkit_backbones::Stem::Deep { width: 4 };
    for h in [Some(&mut c.decode_head), c.auxiliary_head.as_mut()]
        .into_iter()
        .flatten()
    {
        let b = h.base_mut();
        b.channels = 8;
        b.num_classes = classes.len();
        b.dropout_ratio = 0.0;
    }
    if let HeadConfig::Psp(p) = &mut c.decode_head {
        p.pool_scales = vec![1, 2, 3];
    }
    c.meta.classes = classes.to_vec();
    c.meta.palette = (0..classes.len())
        .map(|i| [(i % 256) as u8, (i / 256) as u8, 0])
        .collect();
    c.data_preprocessor.size = Some([32, 32]);
    c
}

/// PaddleSeg's layout with 1000 synsets and two 24x24 images of classes 300 and 999
/// (foreground: a square), returning the config.
fn imagenet_sized_set(dir: &Path) -> PaddleSegPsslConfig {
    let (inet, pssl) = (dir.join("imagenet"), dir.join("pssl"));
    let synsets: Vec<String> = (0..SYNSETS).map(|i| format!("n{i:08}")).collect();
    std::fs::create_dir_all(&pssl).unwrap();
    std::fs::write(pssl.join("synsets.txt"), synsets.join("\n")).unwrap();
    let mut list = String::new();
    for (k, class) in [300usize, 999].into_iter().enumerate() {
        let syn = &synsets[class];
        let stem = format!("train/{syn}/{syn}_{k}");
        for d in [inet.join("train").join(syn), pssl.join("train").join(syn)] {
            std::fs::create_dir_all(d).unwrap();
        }
        let inside =
            |x: usize, y: usize| (4 + 6 * k..16 + 6 * k).contains(&x) && (6..18).contains(&y);
        image::RgbImage::from_fn(SIDE as u32, SIDE as u32, |x, y| {
            let f = inside(x as usize, y as usize);
            image::Rgb(if f {
                [200, 40, 30 + 150 * k as u8]
            } else {
                [90, 90, 90]
            })
        })
        .save_with_format(inet.join(format!("{stem}.JPEG")), image::ImageFormat::Png)
        .unwrap();
        let mask: Vec<u8> = (0..SIDE * SIDE)
            .map(|p| u8::from(inside(p % SIDE, p / SIDE)))
            .collect();
        let npz = pssl.join(format!("{stem}.JPEG_eiseg.npz"));
        write_npz_shaped(&npz, "|u1", (SIDE, SIDE), &mask);
        list.push_str(&format!("{stem}.JPEG_eiseg.npz\n"));
    }
    std::fs::write(pssl.join("train.txt"), list).unwrap();
    PaddleSegPsslConfig {
        imagenet_root: inet,
        pssl_root: pssl,
        list: "train.txt".into(),
        val_list: None,
        synsets: "synsets.txt".into(),
        background: Background::Last,
        background_weight: Some(0.1),
    }
}

fn bias(t: &Trainer) -> Vec<f32> {
    let w = t.weights().unwrap();
    let b: &Tensor = &w["decode_head.conv_seg.bias"];
    b.to_vec1::<f32>().unwrap()
}

#[test]
fn paddleseg_1001_classes_train_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = imagenet_sized_set(dir.path());
    let mut classes: Vec<String> = (0..SYNSETS).map(|i| format!("c{i}")).collect();
    classes.push("background".into());
    // From JSON, so that fields other runs add keep their defaults.
    let mut cfg = TrainConfig::from_json(
        r#"{
            "model": {"type": "Preset", "name": "segkit_demo_r18w16_psp_fashion-128x128"},
            "dataset": {"type": "Custom", "root": "unused"},
            "pipeline": [],
            "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
            "schedule": {"policy": {"type": "Constant"}},
            "iterations": 1,
            "batch_size": 2,
            "aux_loss_weight": 0.4,
            "seed": 5,
            "output_dir": "unused"
        }"#,
    )
    .unwrap();
    cfg.model = ModelSpec::Config {
        config: Box::new(tiny_psp(&classes)),
    };
    // No augmentation: the 24x24 samples are padded to 32x32 with the ignore index (1001).
    cfg.dataset = DatasetConfig::PaddleSegPssl(data);
    cfg.output_dir = dir.path().join("out");
    let mut t = Trainer::new(cfg).unwrap().quiet(true);
    let before = bias(&t);
    let r = t.step().unwrap();
    assert!(r.loss.is_finite() && r.loss > 0.0, "{r:?}");
    let after = bias(&t);
    // SGD moves a class's bias against its gradient, sum over labelled pixels of
    // (p - [label == c]): up for the classes present (300, 999, background 1000), down for
    // every other one, including 300 % 256 = 44 and 999 % 256 = 231, where 8-bit labels
    // would have put them.
    let moved: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    for c in [300, 999, 1000] {
        assert!(moved[c] > 0.0, "class {c}: {}", moved[c]);
    }
    for c in [0, 44, 231, 255, 256, 998] {
        assert!(moved[c] < 0.0, "class {c}: {}", moved[c]);
    }
    // The saved model config carries PSSL's weighted CE over 1001 classes.
    let saved = t.segmentor_config().unwrap();
    let (_, _, lists) = saved.head_losses().remove(0);
    let segkit_losses::LossConfig::CrossEntropy(ce) = &lists[0].losses[0];
    let w = ce.class_weight.as_ref().unwrap();
    assert_eq!((w.len(), w[999], w[1000]), (1001, 1.0, 0.1));
}
