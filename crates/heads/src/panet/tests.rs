use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_core::testing::synthetic_var_builder;
use segkit_core::FeatureSpec;

use super::postprocess::{nms_and_limit, paste_masks};
use super::*;

fn specs(c: usize) -> Vec<FeatureSpec> {
    (2..=5).map(|l| FeatureSpec::new(c, 1 << l)).collect()
}

fn small_cfg() -> PanetRoiHeadsConfig {
    let mut cfg = PanetRoiHeadsConfig::panet(5);
    cfg.box_head.conv_dim = 64;
    cfg.box_head.fc_dim = 16;
    if let Some(m) = cfg.mask_head.as_mut() {
        m.dim = 64;
    }
    cfg
}

fn feats(c: usize, h: usize, w: usize) -> Vec<Tensor> {
    (0..4)
        .map(|l| {
            let (hl, wl) = ((h >> l).max(1), (w >> l).max(1));
            segkit_core::testing::synthetic_input(&format!("f{l}"), (1, c, hl, wl), &Device::Cpu)
                .unwrap()
        })
        .collect()
}

#[test]
fn zero_proposals_and_one_pixel_images_give_valid_results() {
    let vb = synthetic_var_builder(DType::F32, &Device::Cpu);
    let heads = PanetRoiHeads::new(&small_cfg(), &specs(32), vb).unwrap();
    let f = feats(32, 1, 1);
    let out = heads.forward_test(&f, &[], 0, 1.0, (1, 1)).unwrap();
    assert!(out.detections.is_empty());
    assert_eq!(out.box_head.cls_score.dims(), [0, 5]);
    assert_eq!(out.box_head.bbox_pred.dims(), [0, 20]);
    assert_eq!(out.mask_logits.unwrap().dims(), [0, 5, 28, 28]);
    // Degenerate boxes (zero, negative size, outside, NaN-free) on a 1x1 image.
    let props = [
        [0.0, 0.0, 0.0, 0.0],
        [5.0, 5.0, 1.0, 1.0],
        [-50.0, -50.0, -40.0, -40.0],
        [0.0, 0.0, 1e6, 1e6],
    ];
    let out = heads.forward_test(&f, &props, 0, 1.0, (1, 1)).unwrap();
    assert_eq!(out.box_head.cls_score.dims(), [4, 5]);
    let d = &out.detections;
    assert_eq!(d.masks.len(), d.len());
    for (b, m) in d.boxes.iter().zip(&d.masks) {
        assert!(
            b.iter().all(|&v| v == 0.0),
            "clipped to the one pixel: {b:?}"
        );
        assert_eq!(m.len(), 1);
    }
    assert!(heads.forward_test(&f, &props, 1, 1.0, (1, 1)).is_err());
    assert!(heads.forward_test(&f[..3], &props, 0, 1.0, (1, 1)).is_err());
    assert!(heads.forward_test(&f, &props, 0, 0.0, (1, 1)).is_err());
}

#[test]
fn bad_wiring_is_a_typed_error() {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let cfg = small_cfg();
    let mut bad = specs(32);
    bad[2].channels = 16;
    assert!(matches!(
        PanetRoiHeads::new(&cfg, &bad, vb.clone()),
        Err(Error::InvalidConfig(_))
    ));
    assert!(PanetRoiHeads::new(&cfg, &[], vb.clone()).is_err());
    let mut c2 = cfg.clone();
    c2.mask_head.as_mut().unwrap().resolution = 27;
    assert!(PanetRoiHeads::new(&c2, &specs(32), vb.clone()).is_err());
    let heads = PanetRoiHeads::new(&cfg, &specs(32), vb).unwrap();
    let p = Tensor::zeros((2, 32, 5, 5), DType::F32, &Device::Cpu).unwrap();
    assert!(heads
        .box_head()
        .forward_pooled(&[p.clone(), p.clone(), p.clone(), p.clone()], false)
        .is_err());
    assert!(heads.box_head().forward_pooled(&[p], false).is_err());
}

#[test]
fn nms_and_limit_follow_detectron() {
    let cfg = PanetDetectionConfig {
        detections_per_image: 2,
        ..PanetDetectionConfig::panet()
    };
    // 3 proposals, 3 classes; class 1: two overlapping boxes (IoU >= 0.5) and one apart.
    let scores = [
        0.1, 0.8, 0.1, //
        0.2, 0.7, 0.1, //
        0.1, 0.6, 0.3,
    ];
    let b = |x: f32| [x, 0.0, x + 9.0, 9.0];
    let boxes: Vec<f32> = [b(0.0), b(1.0), b(50.0)]
        .iter()
        .flat_map(|bx| [*bx, *bx, *bx].concat())
        .collect();
    let (kb, ks, kc) = nms_and_limit(&cfg, &scores, &boxes, 3).unwrap();
    // class 1 keeps 0.8 and 0.6 (0.7 suppressed), class 2 keeps 0.3; the limit keeps the top 2.
    assert_eq!(kc, [1, 1]);
    assert_eq!(ks, [0.8, 0.6]);
    assert_eq!(kb, [b(0.0), b(50.0)]);
    assert!(nms_and_limit(&cfg, &scores[..8], &boxes, 3).is_err());
    let (kb, _, _) = nms_and_limit(&cfg, &[], &[], 3).unwrap();
    assert!(kb.is_empty());
}

#[test]
fn masks_take_the_class_channel() {
    let mut d = Detections {
        boxes: vec![[5.0, 5.0, 34.0, 34.0]],
        scores: vec![0.9],
        classes: vec![2],
        ..Detections::empty(40, 40)
    };
    let mut v = vec![-20f32; 3 * 16];
    v[2 * 16..].iter_mut().for_each(|x| *x = 20.0);
    let logits = Tensor::from_vec(v, (1, 3, 4, 4), &Device::Cpu).unwrap();
    paste_masks(&PanetDetectionConfig::panet(), &mut d, &logits).unwrap();
    assert_eq!(d.mask_resolution, 4);
    assert!(d.mask_probs[0].iter().all(|&p| p > 0.99));
    // The class channel is all ones: the box's inside is in the mask, the image corner not.
    assert_eq!((d.masks[0][20 * 40 + 20], d.masks[0][0]), (1, 0));
    assert_eq!(d.masks[0].len(), 1600);
    let wrong = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(paste_masks(&PanetDetectionConfig::panet(), &mut d, &wrong).is_err());
}

#[test]
fn transposed_conv_matches_candle() {
    let dev = Device::Cpu;
    let x = segkit_core::testing::synthetic_input("x", (2, 3, 4, 5), &dev).unwrap();
    let w = segkit_core::testing::synthetic_input("w", (3, 6, 2, 2), &dev).unwrap();
    let b = segkit_core::testing::synthetic_input("b", 6, &dev).unwrap();
    let got = mask_head::conv_transpose_2x2(&x, &w, &b).unwrap();
    let want = x
        .conv_transpose2d(&w, 0, 0, 2, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 6, 1, 1)).unwrap())
        .unwrap();
    let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
}
