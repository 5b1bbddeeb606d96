//! Decode heads (segkit-heads) and necks (segkit-necks) against mmseg 1.2.2 and torchvision
//! (fixtures: tests/parity/gen_heads.py).
//!
//! Every module alone, at its full mmseg config size, with synthetic weights
//! (`segkit_core::testing`); the i-th feature map of a module's input list is
//! `synthetic_input("input{i}", shape)`. Maps a head does not read are small zero tensors.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_core::{DecodeHead, FeatureSpec, Neck};
use segkit_heads::{
    AsppHead, AsppHeadConfig, DaHead, DaHeadConfig, EncHead, EncHeadConfig, FcnHead, FcnHeadConfig,
    InIndex, PspHead, PspHeadConfig,
};
use segkit_necks::{Fpn, FpnConfig, Jpu, JpuConfig};
use segkit_tests::{assert_sampled_close, load_fixture};

const D8: (usize, usize) = (13, 17);

/// Specs of a dilated (output stride 8) ResNet-50: C2..C5.
fn r50_d8() -> Vec<FeatureSpec> {
    vec![
        FeatureSpec::new(256, 4),
        FeatureSpec::new(512, 8),
        FeatureSpec::new(1024, 8),
        FeatureSpec::new(2048, 8),
    ]
}

/// One map per spec: the synthetic `input{i}` of the given shape where `shapes[i]` is set,
/// else a 1x1 zero map with the spec's channels (a map the module ignores).
fn features(specs: &[FeatureSpec], shapes: &[Option<(usize, usize, usize)>]) -> Vec<Tensor> {
    let dev = Device::Cpu;
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| match shapes.get(i).copied().flatten() {
            Some((n, h, w)) => {
                synthetic_input(&format!("input{i}"), (n, s.channels, h, w), &dev).unwrap()
            }
            None => Tensor::zeros((1, s.channels, 1, 1), DType::F32, &dev).unwrap(),
        })
        .collect()
}

fn vb() -> candle_nn::VarBuilder<'static> {
    synthetic_var_builder(DType::F32, &Device::Cpu)
}

fn fixture(name: &str) -> HashMap<String, Tensor> {
    load_fixture(&format!("heads/{name}.safetensors"))
}

fn c5(n: usize, (h, w): (usize, usize)) -> Vec<Option<(usize, usize, usize)>> {
    vec![None, None, None, Some((n, h, w))]
}

#[test]
fn fcn_aux_r50_d8() {
    let f = fixture("fcn_aux_r50_d8");
    let specs = r50_d8();
    let head = FcnHead::new(&FcnHeadConfig::aux_r50_d8(19), &specs, vb()).unwrap();
    assert_eq!(head.output_stride(), 8);
    let x = features(&specs, &[None, None, Some((1, D8.0, D8.1))]);
    assert_sampled_close("logits", &head.forward(&x, false).unwrap(), &f);
}

#[test]
fn fcn_aux_r50_d8_train_mode() {
    // BatchNorm with batch statistics, batch 2; dropout off (as in the reference) so that the
    // outputs are deterministic.
    let f = fixture("fcn_aux_r50_d8_train");
    let specs = r50_d8();
    let mut cfg = FcnHeadConfig::aux_r50_d8(19);
    cfg.base.dropout_ratio = 0.0;
    let head = FcnHead::new(&cfg, &specs, vb()).unwrap();
    let x = features(&specs, &[None, None, Some((2, D8.0, D8.1))]);
    assert_sampled_close("logits", &head.forward(&x, true).unwrap(), &f);
}

#[test]
fn fcn_r50_d8() {
    let f = fixture("fcn_r50_d8");
    let specs = r50_d8();
    let head = FcnHead::new(&FcnHeadConfig::fcn_r50_d8(19), &specs, vb()).unwrap();
    let x = features(&specs, &c5(1, D8));
    assert_sampled_close(
        "logits",
        &DecodeHead::forward_t(&head, &x, false).unwrap().logits,
        &f,
    );
}

#[test]
fn psp_r50_d8() {
    let specs = r50_d8();
    let x = features(&specs, &c5(1, D8));
    for (fixture_name, align_corners) in [("psp_r50_d8", false), ("psp_r50_d8_align_corners", true)]
    {
        let f = fixture(fixture_name);
        let mut cfg = PspHeadConfig::pspnet_r50_d8(19);
        cfg.base.align_corners = align_corners;
        let head = PspHead::new(&cfg, &specs, vb()).unwrap();
        assert_sampled_close("logits", &head.forward(&x, false).unwrap(), &f);
    }
}

#[test]
fn da_r50_d8() {
    let f = fixture("da_r50_d8");
    let specs = r50_d8();
    let head = DaHead::new(&DaHeadConfig::danet_r50_d8(19), &specs, vb()).unwrap();
    let x = features(&specs, &c5(1, D8));
    let out = head.forward(&x, false).unwrap();
    assert_sampled_close("fused", &out.fused, &f);
    assert_sampled_close("pam", &out.pam, &f);
    assert_sampled_close("cam", &out.cam, &f);
}

#[test]
fn aspp_r50_d8() {
    let f = fixture("aspp_r50_d8");
    let specs = r50_d8();
    let head = AsppHead::new(&AsppHeadConfig::deeplabv3_r50_d8(19), &specs, vb()).unwrap();
    let x = features(&specs, &c5(1, (25, 37)));
    assert_sampled_close("logits", &head.forward(&x, false).unwrap(), &f);
}

#[test]
fn enc_r50_d8() {
    let f = fixture("enc_r50_d8");
    let specs = r50_d8();
    let head = EncHead::new(&EncHeadConfig::encnet_r50_d8(19), &specs, vb()).unwrap();
    let s = Some((1, D8.0, D8.1));
    let x = features(&specs, &[None, s, s, s]);
    let out = head.forward(&x, false).unwrap();
    assert_sampled_close("seg", &out.seg, &f);
    assert_sampled_close("se", &out.se.unwrap(), &f);
}

/// JPU outputs: C3 (stride 8), C4 (16), fused (8, 2048 channels).
fn jpu_out_specs() -> Vec<FeatureSpec> {
    vec![
        FeatureSpec::new(512, 8),
        FeatureSpec::new(1024, 16),
        FeatureSpec::new(2048, 8),
    ]
}

#[test]
fn enc_lateral_batch2() {
    let specs = jpu_out_specs();
    let mut cfg = EncHeadConfig::fastfcn_r50_d32_jpu_enc(19);
    cfg.add_lateral = true;
    let x = features(
        &specs,
        &[
            Some((2, D8.0, D8.1)),
            Some((2, 7, 9)),
            Some((2, D8.0, D8.1)),
        ],
    );
    let f = fixture("enc_lateral");
    let head = EncHead::new(&cfg, &specs, vb()).unwrap();
    assert_eq!(head.output_stride(), 8);
    let out = head.forward(&x, false).unwrap();
    assert_sampled_close("seg", &out.seg, &f);
    assert_sampled_close("se", &out.se.unwrap(), &f);
    // Training mode: batch statistics in every BatchNorm, BatchNorm1d over the codes included.
    let f = fixture("enc_lateral_train");
    cfg.base.dropout_ratio = 0.0;
    let head = EncHead::new(&cfg, &specs, vb()).unwrap();
    let out = head.forward(&x, true).unwrap();
    assert_sampled_close("seg", &out.seg, &f);
    assert_sampled_close("se", &out.se.unwrap(), &f);
}

fn jpu_inputs() -> (Vec<FeatureSpec>, Vec<Tensor>) {
    let specs = vec![
        FeatureSpec::new(512, 8),
        FeatureSpec::new(1024, 16),
        FeatureSpec::new(2048, 32),
    ];
    let x = features(
        &specs,
        &[Some((1, 25, 33)), Some((1, 13, 17)), Some((1, 7, 9))],
    );
    (specs, x)
}

#[test]
fn jpu_mmseg() {
    let f = fixture("jpu_mmseg");
    let (specs, x) = jpu_inputs();
    let jpu = Jpu::new(&JpuConfig::mmseg(), &specs, vb()).unwrap();
    assert_eq!(jpu.output_specs(), jpu_out_specs());
    let out = Neck::forward_t(&jpu, &x, false).unwrap();
    assert_eq!(out.len(), 3);
    for i in 0..2 {
        let d = (&out[i] - &x[i]).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "pass-through {i}");
    }
    assert_sampled_close("fused", &out[2], &f);
}

#[test]
fn jpu_fastfcn_official() {
    let f = fixture("jpu_fastfcn");
    let (specs, x) = jpu_inputs();
    let jpu = Jpu::new(&JpuConfig::fastfcn(), &specs, vb()).unwrap();
    let out = jpu.forward(&x, false).unwrap();
    assert_sampled_close("fused", &out.fused, &f);
}

fn fpn_inputs() -> (Vec<FeatureSpec>, Vec<Tensor>) {
    let specs = vec![
        FeatureSpec::new(256, 4),
        FeatureSpec::new(512, 8),
        FeatureSpec::new(1024, 16),
        FeatureSpec::new(2048, 32),
    ];
    let x = features(
        &specs,
        &[
            Some((1, 25, 33)),
            Some((1, 13, 17)),
            Some((1, 7, 9)),
            Some((1, 4, 5)),
        ],
    );
    (specs, x)
}

#[test]
fn fpn_torchvision_last_level_max_pool() {
    let f = fixture("fpn_torchvision");
    let (specs, x) = fpn_inputs();
    let fpn = Fpn::new(&FpnConfig::torchvision_maskrcnn(), &specs, vb()).unwrap();
    let strides: Vec<usize> = fpn.output_specs().iter().map(|s| s.stride).collect();
    assert_eq!(strides, [4, 8, 16, 32, 64]);
    let out = fpn.forward(&x, false).unwrap();
    assert_eq!(out.len(), 5);
    for (i, t) in out.iter().enumerate() {
        assert_sampled_close(&format!("p{i}"), t, &f);
    }
}

#[test]
fn fpn_mmdet_retinanet() {
    let f = fixture("fpn_mmdet_retinanet");
    let (specs, x) = fpn_inputs();
    let fpn = Fpn::new(&FpnConfig::mmdet_retinanet(), &specs, vb()).unwrap();
    let strides: Vec<usize> = fpn.output_specs().iter().map(|s| s.stride).collect();
    assert_eq!(strides, [8, 16, 32, 64, 128]);
    let out = Neck::forward_t(&fpn, &x, false).unwrap();
    assert_eq!(out.len(), 5);
    for (i, t) in out.iter().enumerate() {
        assert_sampled_close(&format!("p{i}"), t, &f);
    }
}

#[test]
fn wrong_inputs_give_typed_errors() {
    let specs = r50_d8();
    // A C5 map with the wrong channel count.
    let head = DaHead::new(&DaHeadConfig::danet_r50_d8(19), &specs, vb()).unwrap();
    let mut x = features(&specs, &c5(1, (3, 4)));
    x[3] = Tensor::zeros((1, 1024, 3, 4), DType::F32, &Device::Cpu).unwrap();
    match DecodeHead::forward_t(&head, &x, false) {
        Err(segkit_core::Error::ShapeMismatch { expected, got, .. }) => {
            assert_eq!((expected, got), (vec![2048], vec![1024]))
        }
        other => panic!(
            "expected a shape mismatch, got {:?}",
            other.map(|t| t.logits.shape().clone())
        ),
    }
    // Too few feature maps.
    assert!(matches!(
        head.forward(&x[..3], false),
        Err(segkit_heads::Error::WrongInputCount {
            expected: 4,
            got: 3,
            ..
        })
    ));
    // A rank-3 map.
    x[3] = Tensor::zeros((2048, 3, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        head.forward(&x, false),
        Err(segkit_core::Error::ShapeMismatch { .. })
    ));
    // in_index beyond the specs.
    assert!(matches!(
        PspHead::new(&PspHeadConfig::pspnet_r50_d8(19), &specs[..3], vb()),
        Err(segkit_heads::Error::InvalidConfig(_))
    ));
    // EncHead needs a list of indices.
    let mut enc = EncHeadConfig::encnet_r50_d8(19);
    enc.base.in_index = InIndex::One(3);
    assert!(matches!(
        EncHead::new(&enc, &specs, vb()),
        Err(segkit_heads::Error::InvalidConfig(_))
    ));
    // A JPU fed the wrong channels.
    let (jspecs, mut jx) = jpu_inputs();
    let jpu = Jpu::new(&JpuConfig::mmseg(), &jspecs, vb()).unwrap();
    jx.swap(0, 1);
    assert!(matches!(
        Neck::forward_t(&jpu, &jx, false),
        Err(segkit_core::Error::ShapeMismatch { .. })
    ));
    // A checkpoint whose weights do not fit the specs (C4 head weights, C5 spec).
    let dev = Device::Cpu;
    let mut w = HashMap::new();
    w.insert(
        "convs.0.conv.weight".to_string(),
        Tensor::zeros((256, 1024, 3, 3), DType::F32, &dev).unwrap(),
    );
    let real = candle_nn::VarBuilder::from_tensors(w, DType::F32, &dev);
    let mut cfg = FcnHeadConfig::aux_r50_d8(19);
    cfg.base.in_index = InIndex::One(3);
    assert!(FcnHead::new(&cfg, &specs, real).is_err());
}
