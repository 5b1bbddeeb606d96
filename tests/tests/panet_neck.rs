//! Parity of segkit-necks' PANet pyramid (`PanetFpn`) and mmdet's `PAFPN` (`PaFpn`)
//! (fixtures: tests/parity/gen_panet_neck.py).
//!
//! Oracles:
//! - `PanetFpn` (GN FPN + bottom-up path + P6, also without GN and without the bottom-up path):
//!   a PyTorch module WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet `lib/modeling/FPN.py`),
//!   not an installable package; its module names equal the official module tree
//!   (`Conv_Body.panet_buttomup_conv1_modules.0.0.weight`, ...), so the synthetic weights check
//!   every key name.
//! - `PaFpn`: INDEPENDENT, mmdet 3.3.0's own `PAFPN` (pip `mmdet`).
//!
//! Full size (256 channels on C2..C5 of 256..2048 channels), synthetic weights and inputs.
//! PANet at the padded sizes of a 517x389 image (544x416), PAFPN at the unpadded sizes.

use candle_core::{DType, Device, Tensor};
use segkit_core::nn::Norm;
use segkit_core::ops::Activation;
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_core::FeatureSpec;
use segkit_necks::{ExtraSource, PaFpn, PaFpnConfig, PanetFpn, PanetFpnConfig};
use segkit_tests::{assert_sampled_close, load_fixture};

const CHANNELS: [usize; 4] = [256, 512, 1024, 2048];

fn specs() -> Vec<FeatureSpec> {
    CHANNELS
        .iter()
        .enumerate()
        .map(|(i, &c)| FeatureSpec::new(c, 4 << i))
        .collect()
}

fn inputs(prefix: &str, sizes: [(usize, usize); 4]) -> Vec<Tensor> {
    CHANNELS
        .iter()
        .zip(sizes)
        .enumerate()
        .map(|(i, (&c, (h, w)))| {
            synthetic_input(&format!("{prefix}.c{}", i + 2), (1, c, h, w), &Device::Cpu).unwrap()
        })
        .collect()
}

fn check_panet(fixture: &str, cfg: PanetFpnConfig) {
    let f = load_fixture(&format!("panet/{fixture}.safetensors"));
    let vb = synthetic_var_builder(DType::F32, &Device::Cpu).pp("Conv_Body");
    let neck = PanetFpn::new(&cfg, &specs(), vb).expect("build");
    let xs = inputs("panet", [(136, 104), (68, 52), (34, 26), (17, 13)]);
    let out = neck.forward_all(&xs, false).expect("forward");
    if cfg.bottom_up {
        for (i, p) in out.fpn.iter().enumerate() {
            assert_sampled_close(&format!("p{}", i + 2), p, &f);
        }
    }
    assert_eq!(out.outputs.len(), 5);
    for (i, n) in out.outputs.iter().enumerate() {
        assert_sampled_close(&format!("n{}", i + 2), n, &f);
    }
}

#[test]
fn panet_fpn_gn_bottom_up() {
    check_panet("panet_fpn_gn", PanetFpnConfig::panet());
}

#[test]
fn panet_fpn_without_gn() {
    let cfg = PanetFpnConfig {
        use_gn: false,
        ..PanetFpnConfig::panet()
    };
    check_panet("panet_fpn_nogn", cfg);
}

#[test]
fn detectron_fpn_gn() {
    check_panet("detectron_fpn_gn", PanetFpnConfig::detectron_fpn_gn());
}

fn check_pafpn(fixture: &str, cfg: PaFpnConfig) {
    let f = load_fixture(&format!("panet/{fixture}.safetensors"));
    let vb = synthetic_var_builder(DType::F32, &Device::Cpu);
    let neck = PaFpn::new(&cfg, &specs(), vb).expect("build");
    let xs = inputs("pafpn", [(130, 98), (65, 49), (33, 25), (17, 13)]);
    let out = neck.forward(&xs, false).expect("forward");
    assert_eq!(out.len(), cfg.num_outs);
    for (i, o) in out.iter().enumerate() {
        assert_sampled_close(&format!("o{}", i + 2), o, &f);
    }
}

#[test]
fn mmdet_pafpn_default() {
    check_pafpn("mmdet_pafpn", PaFpnConfig::mmdet(256, 5));
}

#[test]
fn mmdet_pafpn_gn_relu_extra_convs_on_input() {
    let cfg = PaFpnConfig {
        add_extra_convs: Some(ExtraSource::Input),
        relu_before_extra_convs: true,
        norm: Some(Norm::group_norm(32)),
        act: Activation::Relu,
        ..PaFpnConfig::mmdet(256, 6)
    };
    check_pafpn("mmdet_pafpn_gn_relu_extra", cfg);
}
