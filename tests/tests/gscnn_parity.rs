//! Gated-SCNN parity: segkit-backbones' `WideResNet`, segkit-heads' `gscnn` parts and
//! segkit-models' `Gscnn` against a PyTorch reference (fixtures: tests/parity/gen_gscnn.py).
//!
//! The official code (nv-tlabs/GSCNN) cannot be installed and runs Canny and CUDA inside its
//! forward, so the reference is a PyTorch module written in gen_gscnn.py from the official
//! code's math (`network/gscnn.py`, `network/wider_resnet.py`,
//! `my_functionals/GatedSpatialConv.py`): the same module tree and state-dict keys, BN / conv /
//! bias layout and upsampling modes. Both sides get the same Canny map: computed with OpenCV in
//! the generator as released (the normalised input cast to uint8, `cv2.Canny(img, 10, 100)`)
//! and stored in the fixture.
//!
//! Everything at full size (WRN38 to 4096 channels, 19 classes), synthetic weights
//! (`segkit_core::testing`), odd input 1 x 3 x 97 x 129 (`synthetic_input("input", ..)`).
//! Tolerance: DESIGN.md's, `1e-4 * max(1, max|ref|)` on the sampled values and projections
//! (`segkit_tests::assert_sampled_close`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use segkit::models::gscnn::{GscnnBackbone, GscnnConfig};
use segkit::models::Gscnn;
use segkit_backbones::{WideResNet, WideResNetConfig};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_core::FeatureSpec;
use segkit_heads::gscnn::{GatedSpatialConv, GscnnHead, GscnnHeadConfig};
use segkit_tests::{assert_sampled_close, get, load_fixture};

const H: usize = 97;
const W: usize = 129;

fn vb() -> candle_nn::VarBuilder<'static> {
    synthetic_var_builder(DType::F32, &Device::Cpu)
}

fn fixture(name: &str) -> HashMap<String, Tensor> {
    load_fixture(&format!("gscnn/{name}.safetensors"))
}

fn image() -> Tensor {
    synthetic_input("input", (1, 3, H, W), &Device::Cpu).unwrap()
}

/// Checks every named output the fixture has.
fn check_all(named: &[(String, Tensor)], f: &HashMap<String, Tensor>) {
    let mut checked = 0;
    for (name, t) in named {
        if f.contains_key(&format!("{name}.shape")) {
            assert_sampled_close(name, t, f);
            checked += 1;
        }
    }
    let want = f.keys().filter(|k| k.ends_with(".shape")).count();
    assert_eq!(
        checked,
        want,
        "outputs {:?}",
        named.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
}

#[test]
fn wrn38_a2_backbone() {
    let f = fixture("wrn38");
    let net = WideResNet::new(&WideResNetConfig::wrn38_a2(), vb()).unwrap();
    let o = net.forward(&image(), false).unwrap().into_vec();
    for (i, t) in o.iter().enumerate() {
        assert_sampled_close(&format!("m{}", i + 1), t, &f);
    }
}

fn gcl_case(fixture_name: &str, n: usize, train: bool) {
    let f = fixture(fixture_name);
    let gcl = GatedSpatialConv::new(32, 1e-5, vb().pp("gate1")).unwrap();
    let dev = Device::Cpu;
    let s = synthetic_input("input0", (n, 32, H, W), &dev).unwrap();
    let r = synthetic_input("input1", (n, 1, H, W), &dev).unwrap();
    let o = gcl.forward_t(&s, &r, train).unwrap();
    assert_sampled_close("out", &o.out, &f);
    assert_sampled_close("alpha", &o.alpha, &f);
}

#[test]
fn gated_spatial_conv() {
    gcl_case("gcl", 1, false);
}

#[test]
fn gated_spatial_conv_train_mode() {
    // BatchNorm batch statistics, batch 2.
    gcl_case("gcl_train", 2, true);
}

#[test]
fn head_shape_stream_fusion_aspp_decoder() {
    // The head alone on synthetic WRN38-shaped maps: shape stream, Canny fusion (`acts`),
    // ASPP with the edge branch and the decoder.
    let f = fixture("head");
    let specs: Vec<FeatureSpec> = [(64, 1), (128, 2), (256, 4), (512, 8), (4096, 8)]
        .map(|(c, s)| FeatureSpec::new(c, s))
        .to_vec();
    let sizes = [(97, 129), (49, 65), (25, 33), (13, 17), (13, 17)];
    let head = GscnnHead::new(&GscnnHeadConfig::official(19), &specs, vb()).unwrap();
    let feats: Vec<Tensor> = specs
        .iter()
        .zip(sizes)
        .enumerate()
        .map(|(i, (s, (h, w)))| {
            synthetic_input(&format!("input{i}"), (1, s.channels, h, w), &Device::Cpu).unwrap()
        })
        .collect();
    let o = head
        .forward_t(&feats, Some(get(&f, "canny")), (H, W), false)
        .unwrap();
    let [a1, a2, a3] = o.alphas.unwrap();
    let named = [
        ("seg", o.seg),
        ("edge", o.edge.unwrap()),
        ("alpha1", a1),
        ("alpha2", a2),
        ("alpha3", a3),
        ("acts", o.acts.unwrap()),
    ]
    .map(|(n, t)| (n.to_string(), t));
    check_all(&named, &f);
}

fn model_case(fixture_name: &str, cfg: GscnnConfig, canny_from: &str) {
    let f = fixture(fixture_name);
    let canny = load_fixture(&format!("gscnn/{canny_from}.safetensors"));
    let m = Gscnn::new(&cfg, vb()).unwrap();
    let o = m
        .forward_t(&image(), Some(get(&canny, "canny")), false)
        .unwrap();
    assert_eq!(o.edge.is_some(), cfg.shape_stream);
    check_all(&o.named(), &f);
}

#[test]
fn whole_model_wrn38() {
    model_case(
        "wrn38_model",
        GscnnConfig::wrn38_cityscapes(),
        "wrn38_model",
    );
}

#[test]
fn whole_model_wrn38_without_shape_stream() {
    let cfg = GscnnConfig {
        shape_stream: false,
        ..GscnnConfig::wrn38_cityscapes()
    };
    model_case("wrn38_no_shape", cfg, "wrn38_model");
}

#[test]
fn whole_model_resnet50_d8() {
    let cfg = GscnnConfig {
        backbone: GscnnBackbone::ResNet50D8,
        ..GscnnConfig::wrn38_cityscapes()
    };
    model_case("r50_d8_model", cfg, "wrn38_model");
}

/// The official checkpoint layout for real: `{state_dict (module.-prefixed), optimizer, epoch,
/// mean_iu}` written by `torch.save(_use_new_zipfile_serialization=False)` (legacy format) in
/// the official key names, full WRN38 size, periodic synthetic values (gen_gscnn.py
/// `gen_legacy_checkpoint`). It loads strictly through the generic reader and reproduces the
/// reference's outputs; a missing or an extra key is a typed error naming it.
#[test]
fn legacy_official_checkpoint_loads_and_reproduces_the_reference() {
    use segkit::models::{Error, ModelConfig};
    use segkit_core::checkpoint::StateDict;
    use std::io::Read;

    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("best_cityscapes_checkpoint.pth");
    let src = segkit_tests::fixture_path("gscnn/legacy_wrn38.pth.gz");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    std::fs::write(&pth, &bytes).unwrap();
    drop(bytes);

    let sd = segkit::models::gscnn::load_state_dict(&pth, "gscnn_wrn38_cityscapes").unwrap();
    assert!(sd.keys().all(|k| !k.starts_with("module.")));
    let cfg = ModelConfig::Gscnn(Box::new(GscnnConfig::wrn38_cityscapes()));
    let dev = Device::Cpu;
    let model = cfg
        .from_state_dict("gscnn_wrn38_cityscapes", &sd, &pth, &dev)
        .unwrap();
    let gscnn = model.as_any().downcast_ref::<Gscnn>().unwrap();
    let canny = fixture("wrn38_model");
    let o = gscnn
        .forward_t(&image(), Some(get(&canny, "canny")), false)
        .unwrap();
    check_all(&o.named(), &fixture("legacy_expected"));

    // A key the model needs, missing: named.
    let missing = "gate2._gate_conv.3.bias";
    let mut less: StateDict = sd.clone();
    less.remove(missing).unwrap();
    let e = cfg
        .from_state_dict("gscnn", &less, &pth, &dev)
        .err()
        .unwrap();
    assert!(matches!(&e, Error::Checkpoint { .. }), "{e}");
    assert!(chain(&e).contains(missing), "{}", chain(&e));
    // A key the model does not have: named.
    let mut more = sd;
    more.insert(
        "aux_head.weight",
        Tensor::zeros(3, DType::F32, &dev).unwrap(),
    );
    let e = cfg
        .from_state_dict("gscnn", &more, &pth, &dev)
        .err()
        .unwrap();
    assert!(chain(&e).contains("aux_head.weight"), "{}", chain(&e));
}

/// An error and its sources, one message each.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `predict_image` (the official single-scale evaluation on an 8-bit image) returns the argmax
/// of `seg` and `round(255 * edge)` at the image's size, with the Canny map computed in Rust
/// from the normalised tensor as released; `forward_named` names every output.
#[test]
fn predict_image_and_named_outputs() {
    use segkit::models::Model;
    let (h, w) = (37, 53);
    let px: Vec<u8> = (0..h * w * 3).map(|i| ((i * 37) % 251) as u8).collect();
    let img = image::RgbImage::from_raw(w as u32, h as u32, px).unwrap();
    let m = Gscnn::new(&GscnnConfig::wrn38_cityscapes(), vb()).unwrap();
    let p = m
        .predict_image(&image::DynamicImage::ImageRgb8(img.clone()))
        .unwrap();
    let x = m.image_tensor(&img).unwrap();
    let named = m.forward_named(&x, None).unwrap();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["seg", "edge", "alpha1", "alpha2", "alpha3", "acts"]);
    let seg = &named[0].1;
    assert_eq!(seg.dims(), &[1, 19, h, w]);
    let ids: Vec<u32> = seg
        .argmax(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(p.semantic.class_map, ids);
    let edge: Vec<f32> = named[1].1.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<u8> = edge.iter().map(|e| (e * 255.0).round() as u8).collect();
    assert_eq!(p.edge.unwrap().into_raw(), want);
    // The Canny map computed from the tensor equals segkit-data's Canny on the cast input.
    let canny: Vec<f32> = m
        .canny_map(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let chw: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let cast = segkit::data::edges::released_input(&chw, h, w).unwrap();
    let want = segkit::data::edges::canny(&cast, h, w, 10.0, 100.0).unwrap();
    assert_eq!(canny, want.iter().map(|&v| v as f32).collect::<Vec<_>>());
}
