//! Parity of segkit-backbones' `CaffeResNet` (Detectron's caffe-style ResNet, PANet's backbone)
//! against a PyTorch module (fixtures: tests/parity/gen_panet_backbone.py).
//!
//! Oracle: written from the official math (ShuLiu1993/PANet `lib/modeling/ResNet.py`,
//! `lib/nn/modules/affine.py`) in plain PyTorch, not an installable package: no maintained
//! package ships Detectron.pytorch's ResNet. Its module names equal the official module tree,
//! so the synthetic weights (keyed by the full name `Conv_Body.conv_body.res2.0.conv1.weight`)
//! also check every key name.
//!
//! Full-size networks, synthetic weights, input 1x3x517x389: a BGR image in 0..255 minus
//! Detectron's pixel means.

use candle_core::{DType, Device, Tensor};
use segkit_backbones::{subtract_pixel_means, CaffeResNet, CaffeResNetConfig};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_tests::{assert_sampled_close, load_fixture};

fn caffe_input(dev: &Device) -> Tensor {
    let img = ((synthetic_input("input", (1, 3, 517, 389), dev).unwrap() + 2.0).unwrap() * 63.75)
        .unwrap();
    subtract_pixel_means(&img).unwrap()
}

fn check(fixture: &str, cfg: CaffeResNetConfig) {
    let dev = Device::Cpu;
    let f = load_fixture(&format!("panet/{fixture}.safetensors"));
    let vb = synthetic_var_builder(DType::F32, &dev).pp("Conv_Body.conv_body");
    let net = CaffeResNet::new(&cfg, vb).expect("build");
    let out = net.forward(&caffe_input(&dev), false).expect("forward");
    for (name, t) in [
        ("c2", &out.c2),
        ("c3", &out.c3),
        ("c4", &out.c4),
        ("c5", &out.c5),
    ] {
        assert_sampled_close(name, t, &f);
    }
}

#[test]
fn resnet50_caffe() {
    check("resnet50_caffe", CaffeResNetConfig::detectron(50));
}

#[test]
fn resnet101_caffe() {
    check("resnet101_caffe", CaffeResNetConfig::detectron(101));
}

#[test]
fn resnet50_caffe_res5_dilation2() {
    let mut cfg = CaffeResNetConfig::detectron(50);
    cfg.res5_dilation = 2;
    check("resnet50_caffe_res5dil2", cfg);
}
