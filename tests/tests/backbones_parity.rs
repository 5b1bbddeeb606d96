//! ResNet parity against torchvision, timm and mmseg (fixtures: tests/parity/gen_backbones.py).
//!
//! Full-size networks with synthetic weights (segkit_core::testing), input 1x3x97x129.

use candle_core::{DType, Device};
use segkit_backbones::{ResNet, ResNetConfig};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_tests::{assert_sampled_close, load_fixture};

fn check(fixture: &str, cfg: ResNetConfig) {
    let dev = Device::Cpu;
    let f = load_fixture(&format!("backbones/{fixture}.safetensors"));
    let net = ResNet::new(&cfg, synthetic_var_builder(DType::F32, &dev)).expect("build");
    let x = synthetic_input("input", (1, 3, 97, 129), &dev).unwrap();
    let out = net.forward(&x, false).expect("forward");
    for (name, t) in [("c2", &out.c2), ("c3", &out.c3), ("c4", &out.c4), ("c5", &out.c5)] {
        assert_sampled_close(name, t, &f);
    }
}

#[test]
fn torchvision_resnet50() {
    check("torchvision_resnet50", ResNetConfig::torchvision(50));
}

#[test]
fn torchvision_resnet101() {
    check("torchvision_resnet101", ResNetConfig::torchvision(101));
}

#[test]
fn timm_resnet50d_os8() {
    check("timm_resnet50d_os8", ResNetConfig::timm_d(50, 8).unwrap());
}

#[test]
fn timm_resnet50d_os16() {
    check("timm_resnet50d_os16", ResNetConfig::timm_d(50, 16).unwrap());
}

#[test]
fn mmseg_resnetv1c50_d8() {
    check("mmseg_resnetv1c50_d8", ResNetConfig::mmseg_v1c(50));
}

#[test]
fn mmseg_resnetv1c101_d8() {
    check("mmseg_resnetv1c101_d8", ResNetConfig::mmseg_v1c(101));
}
