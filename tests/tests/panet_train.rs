//! PANet training pieces (fixture: tests/parity/gen_panet_train.py).
//!
//! - RoIAlign's gradient on CPU: `segkit_core::ops::roi_align` on a `Var` takes the custom op
//!   with a backward pass; its pooled output and input gradient vs torchvision's own
//!   `roi_align(aligned=False)` forward and autograd backward (INDEPENDENT oracle), at full
//!   size: 2 x 256 x 136 x 104 (N2 of a 544x416 batch) with 512 RoIs to 7x7 (sampling ratio 2)
//!   and 2 x 256 x 34 x 26 with 128 RoIs to 14x14 (adaptive sampling), RoIs straddling the
//!   border, tiny and degenerate. Every element enters the comparison (sampled summaries,
//!   tolerance 1e-4 * max(1, max|ref|)).
//! - `Panet::forward_train` on a small model (R-50 body, 64-channel pyramid and heads,
//!   5 classes) and two synthetic 96 x 128 images: the five named losses are finite and
//!   positive, every trainable part gets a gradient (the pyramid through RoIAlign), SGD steps
//!   lower the total loss; bad instances are typed errors.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap, SGD};
use segkit::models::panet::{Panet, PanetConfig, PanetTrainConfig, PanetTrainImage};
use segkit_core::ops::detection::SeededSampler;
use segkit_core::ops::roi_align;
use segkit_core::testing::{synthetic_input, synthetic_tensor};
use segkit_heads::panet::PanetRoiHeadsConfig;
use segkit_tests::{assert_sampled_close, get, load_fixture};

#[test]
fn roi_align_gradient_matches_torchvision() {
    let f = load_fixture("panet_train/roi_align.safetensors");
    let cases = [
        ("box", (136, 104), 0.25f32, 7, 2),
        ("mask", (34, 26), 0.0625, 14, 0),
    ];
    for (name, (h, w), scale, out, sr) in cases {
        let x = Var::from_tensor(
            &synthetic_input(
                &format!("panet_train.{name}.feat"),
                (2, 256, h, w),
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
        let rois = get(&f, &format!("{name}.rois"));
        let y = roi_align(x.as_tensor(), rois, (out, out), scale, sr, false).unwrap();
        assert_sampled_close(&format!("{name}.pooled"), &y, &f);
        let dy =
            synthetic_input(&format!("panet_train.{name}.dy"), y.dims(), &Device::Cpu).unwrap();
        let grads = (y * dy).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads
            .get(x.as_tensor())
            .expect("roi_align records a gradient");
        assert_sampled_close(&format!("{name}.grad"), dx, &f);
    }
}

/// A small PANet (R-50 body, 64-channel pyramid and heads, 5 classes) on a VarMap.
fn small_panet() -> (Panet, VarMap) {
    let mut c = PanetConfig::r50_fpn_2x_coco();
    c.fpn.out_channels = 64;
    c.roi_heads = PanetRoiHeadsConfig::panet(5);
    c.roi_heads.box_head.conv_dim = 64;
    c.roi_heads.box_head.fc_dim = 64;
    if let Some(m) = c.roi_heads.mask_head.as_mut() {
        m.dim = 64;
    }
    c.meta.classes = (0..5).map(|i| format!("c{i}")).collect();
    c.meta.palette.truncate(5);
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let m = Panet::new(&c, vb).unwrap();
    // Synthetic values (candle's default init leaves some layers at zero).
    for (k, v) in vm.data().lock().unwrap().iter() {
        v.set(&synthetic_tensor(k, v.shape(), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
    }
    (m, vm)
}

/// Two 96 x 128 images with two or three rectangular instances each (scale 1: the blob is the
/// image), BGR-minus-means-like values: instances brighter than the background per class.
fn tiny_batch() -> (Tensor, Vec<PanetTrainImage>) {
    let (h, w) = (96usize, 128usize);
    let objs: [&[(usize, [usize; 4])]; 2] = [
        &[(1, [8, 10, 50, 60]), (2, [70, 20, 120, 80])],
        &[
            (3, [5, 5, 40, 40]),
            (4, [50, 30, 110, 90]),
            (1, [10, 60, 40, 90]),
        ],
    ];
    let mut data = vec![0f32; 2 * 3 * h * w];
    let mut images = Vec::new();
    for (i, objs) in objs.iter().enumerate() {
        let mut img = PanetTrainImage {
            size: (h, w),
            im_info: [h as f32, w as f32, 1.0],
            ..Default::default()
        };
        for &(cls, [x1, y1, x2, y2]) in objs.iter() {
            let mut mask = vec![0u8; h * w];
            for y in y1..=y2 {
                for x in x1..=x2 {
                    mask[y * w + x] = 1;
                    for ch in 0..3 {
                        let v = if ch == cls % 3 {
                            60.0
                        } else {
                            20.0 * cls as f32
                        };
                        data[((i * 3 + ch) * h + y) * w + x] = v;
                    }
                }
            }
            img.boxes.push([x1 as f32, y1 as f32, x2 as f32, y2 as f32]);
            img.classes.push(cls);
            img.crowd.push(false);
            img.masks.push(mask);
        }
        images.push(img);
    }
    let x = Tensor::from_vec(data, (2, 3, h, w), &Device::Cpu).unwrap();
    (x, images)
}

#[test]
fn training_forward_gives_five_losses_and_learns() {
    let (m, vm) = small_panet();
    let (x, images) = tiny_batch();
    let cfg = PanetTrainConfig::official(5);
    let step = |seed| {
        let mut s = SeededSampler::new(seed);
        m.forward_train(&x, &images, &cfg, &mut s).unwrap()
    };
    let l = step(7);
    for (name, t) in l.named() {
        let v = t.to_scalar::<f32>().unwrap();
        assert!(v.is_finite() && v > 0.0, "{name} = {v}");
        eprintln!("{name} = {v}");
    }
    assert!(l.num_proposals > 0 && l.num_proposals <= 2000);
    // Every trainable part receives a gradient, the pyramid through RoIAlign too (the frozen
    // affine norms of the body excepted).
    let total = l.total().unwrap();
    let g = total.backward().unwrap();
    let vars = vm.data().lock().unwrap().clone();
    for prefix in [
        "RPN.FPN_RPN_conv.weight",
        "Box_Outs.cls_score.weight",
        "Box_Outs.bbox_pred.weight",
        "Mask_Outs.classify.weight",
        "Box_Head.fc.weight",
        "Mask_Head.",
        "Conv_Body.panet_buttomup_conv",
        "Conv_Body.conv_body.res5",
    ] {
        let (key, v) = vars
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.ends_with("weight") && !k.contains(".bn"))
            .min_by_key(|(k, _)| k.as_str())
            .unwrap_or_else(|| panic!("no var {prefix}*"));
        let gv = g
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no grad {key}"));
        let n = gv
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0 && n.is_finite(), "{key}: |grad| = {n}");
    }
    // A few SGD steps on the batch (same draws each step) lower the total loss.
    let first = total.to_scalar::<f32>().unwrap();
    let mut opt = SGD::new(vm.all_vars(), 0.01).unwrap();
    let mut last = first;
    for _ in 0..6 {
        let t = step(7).total().unwrap();
        last = t.to_scalar::<f32>().unwrap();
        opt.backward_step(&t).unwrap();
    }
    eprintln!("total loss {first} -> {last}");
    assert!(last < 0.9 * first, "loss {first} -> {last}");
}

#[test]
fn training_forward_rejects_bad_instances() {
    let (m, _) = small_panet();
    let (x, mut images) = tiny_batch();
    let cfg = PanetTrainConfig::official(5);
    let mut s = SeededSampler::new(1);
    images[1].masks.pop();
    let e = m.forward_train(&x, &images, &cfg, &mut s).unwrap_err();
    assert!(e.to_string().contains("image 1"), "{e}");
    let (_, mut images) = tiny_batch();
    images[0].classes[0] = 9;
    assert!(m.forward_train(&x, &images, &cfg, &mut s).is_err());
    assert!(m.forward_train(&x, &images[..1], &cfg, &mut s).is_err());
}
