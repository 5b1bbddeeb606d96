//! segkit-train's losses against mmseg 1.2.2's `EncoderDecoder.loss` (fixtures:
//! tests/parity/gen_train_losses.py): one training step of DANet (CE on the fused, PAM and CAM
//! logits + the auxiliary FCN head's CE 0.4) and of EncNet (CE + SE loss 0.2 + auxiliary CE
//! 0.4), on a reduced-width ResNetV1c-18 (base 8, stem 16, dilated to stride 8; heads 16
//! channels; dropout 0) with synthetic weights, in train mode (BatchNorm batch statistics), on
//! a 2x3x64x64 input with labels that contain 255.
//!
//! The model is built from the segkit config with every weight a `Var` holding its synthetic
//! value, scored by `segkit_train::losses::compute` (the trainer's code path), and the total
//! backpropagated. Every named loss, the total and every element of every parameter's
//! gradient are compared: `max|rust - ref| <= 1e-4 * max(1, max|ref|)`.

use std::collections::HashMap;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use segkit::backbones::{KeyStyle, ResNetConfig, Stem};
use segkit::core::testing::set_synthetic;
use segkit::heads::{EncHeadConfig, InIndex};
use segkit::{BackboneConfig, EncoderDecoder, HeadConfig, SegmentorConfig};
use segkit_tests::{assert_close, get, load_fixture};

const NUM_CLASSES: usize = 19;

/// The fixture's network: mmseg's DANet config at reduced width (see the module docs).
fn danet() -> SegmentorConfig {
    let mut cfg = SegmentorConfig::preset("danet_r50-d8_cityscapes-512x1024").unwrap();
    cfg.name = "danet_r18w8-d8".into();
    cfg.backbone = BackboneConfig::ResNet(ResNetConfig {
        stem: Stem::Deep { width: 8 },
        key_style: KeyStyle::Mmseg,
        base_channels: 8,
        ..ResNetConfig::mmseg_v1c(18)
    });
    let HeadConfig::Da(d) = &mut cfg.decode_head else {
        panic!("DANet's decode head is a DAHead");
    };
    d.pam_channels = 8;
    for h in [Some(&mut cfg.decode_head), cfg.auxiliary_head.as_mut()]
        .into_iter()
        .flatten()
    {
        let b = h.base_mut();
        b.channels = 16;
        b.dropout_ratio = 0.0;
        // The heads run on the reduced backbone's features on purpose.
        b.designed_for = None;
    }
    cfg.validate().unwrap();
    cfg
}

/// The same with mmseg's EncNet head (`encnet_r50-d8`: C3, C4, C5; 32 codes; SE loss).
fn encnet() -> SegmentorConfig {
    let mut cfg = danet();
    cfg.name = "encnet_r18w8-d8".into();
    let mut enc = EncHeadConfig::encnet_r50_d8(NUM_CLASSES);
    enc.base.in_index = InIndex::Many(vec![1, 2, 3]);
    enc.base.channels = 16;
    enc.base.dropout_ratio = 0.0;
    enc.base.designed_for = None;
    cfg.decode_head = HeadConfig::Enc(enc);
    cfg.validate().unwrap();
    cfg
}

fn check(case: &str, cfg: &SegmentorConfig, want_losses: &[&str]) {
    let f = load_fixture(&format!("train_losses/{case}.safetensors"));
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model =
        EncoderDecoder::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let vars: HashMap<String, candle_core::Var> =
        set_synthetic(&varmap).unwrap().into_iter().collect();
    let x = get(&f, "input");
    let labels = get(&f, "labels");
    let out = model.forward_t(x, true).unwrap();
    let losses = segkit::train::losses::compute(cfg, &out, labels, 255).unwrap();
    let names: Vec<&str> = losses.items.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want_losses, "{case}: loss names");
    eprintln!("{case}:");
    for (name, v) in &losses.items {
        assert_close(
            &format!("{case} {name}"),
            &v.reshape(1).unwrap(),
            get(&f, &format!("loss.{name}")),
        );
    }
    // The fixture holds exactly these losses (and the total).
    let stored = f.keys().filter(|k| k.starts_with("loss.")).count();
    assert_eq!(stored, want_losses.len() + 1, "{case}: fixture losses");
    assert_close(
        &format!("{case} total"),
        &losses.total.reshape(1).unwrap(),
        get(&f, "loss.total"),
    );
    let grads = losses.total.backward().unwrap();
    let mut n = 0;
    for (k, want) in f
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("grad.")?, t)))
    {
        let var = vars
            .get(k)
            .unwrap_or_else(|| panic!("{case}: segkit has no parameter `{k}`"));
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{case}: no gradient for `{k}`"));
        assert_close(&format!("{case} grad {k}"), got, want);
        n += 1;
    }
    // Every segkit parameter (not the BatchNorm statistics) has a reference gradient.
    let params = vars
        .keys()
        .filter(|k| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
        .count();
    assert_eq!(n, params, "{case}: parameters with a reference gradient");
    eprintln!("{case}: {n} gradients compared");
}

#[test]
fn danet_training_step_matches_mmseg() {
    check(
        "danet",
        &danet(),
        &[
            "decode.pam_cam.loss_ce",
            "decode.pam.loss_ce",
            "decode.cam.loss_ce",
            "aux.loss_ce",
        ],
    );
}

#[test]
fn encnet_training_step_matches_mmseg() {
    check(
        "encnet",
        &encnet(),
        &["decode.loss_ce", "decode.loss_se", "aux.loss_ce"],
    );
}
