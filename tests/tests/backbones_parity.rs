//! ResNet parity against torchvision, timm and mmseg (fixtures: tests/parity/gen_backbones.py).
//!
//! Full-size networks with synthetic weights (segkit_core::testing), input 1x3x97x129.

use candle_core::{DType, Device};
use segkit_backbones::{ResNet, ResNetConfig};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_tests::{assert_sampled_close, load_fixture};

fn check(fixture: &str, cfg: ResNetConfig) {
    run(fixture, cfg, false)
}

/// Training mode: batch statistics (batch of 2, 65x47) outside frozen stages.
fn check_train(fixture: &str, cfg: ResNetConfig) {
    run(fixture, cfg, true)
}

fn run(fixture: &str, cfg: ResNetConfig, train: bool) {
    let dev = Device::Cpu;
    let f = load_fixture(&format!("backbones/{fixture}.safetensors"));
    let net = ResNet::new(&cfg, synthetic_var_builder(DType::F32, &dev)).expect("build");
    let x = if train {
        synthetic_input("input_train", (2, 3, 65, 47), &dev).unwrap()
    } else {
        synthetic_input("input", (1, 3, 97, 129), &dev).unwrap()
    };
    let out = net.forward(&x, train).expect("forward");
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
fn torchvision_resnet50() {
    check("torchvision_resnet50", ResNetConfig::torchvision(50));
}

#[test]
fn torchvision_resnet101() {
    check("torchvision_resnet101", ResNetConfig::torchvision(101));
}

#[test]
fn torchvision_resnet152() {
    check("torchvision_resnet152", ResNetConfig::torchvision(152));
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

#[test]
fn torchvision_resnet34() {
    check("torchvision_resnet34", ResNetConfig::torchvision(34));
}

#[test]
fn torchvision_resnet18_train_mode() {
    check_train("torchvision_resnet18_train", ResNetConfig::torchvision(18));
}

#[test]
fn mmseg_resnetv1d50_d8() {
    check("mmseg_resnetv1d50_d8", ResNetConfig::mmseg_v1d(50));
}

#[test]
fn mmseg_resnetv1c50_d8_multi_grid() {
    let cfg = ResNetConfig {
        multi_grid: Some(vec![4, 8, 16]),
        ..ResNetConfig::mmseg_v1c(50)
    };
    check("mmseg_resnetv1c50_d8_mg", cfg);
}

#[test]
fn mmseg_resnetv1c50_d8_train_mode_frozen_stages() {
    let cfg = ResNetConfig {
        frozen_stages: 1,
        ..ResNetConfig::mmseg_v1c(50)
    };
    check_train("mmseg_resnetv1c50_d8_train_frozen1", cfg);
}

#[test]
fn feature_specs_follow_strides() {
    use segkit_core::Backbone;
    let net = ResNet::new(
        &ResNetConfig::mmseg_v1c(50),
        synthetic_var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let s: Vec<(usize, usize)> = net
        .feature_specs()
        .iter()
        .map(|f| (f.channels, f.stride))
        .collect();
    assert_eq!(s, vec![(256, 4), (512, 8), (1024, 8), (2048, 8)]);
}

#[test]
fn bad_configs_and_inputs_are_typed_errors() {
    let vb = || synthetic_var_builder(DType::F32, &Device::Cpu);
    for cfg in [
        ResNetConfig {
            depth: 51,
            ..Default::default()
        },
        ResNetConfig {
            stem: segkit_backbones::Stem::Deep { width: 32 },
            ..Default::default()
        },
        ResNetConfig {
            multi_grid: Some(vec![1, 2]),
            ..Default::default()
        },
        ResNetConfig {
            strides: [1, 0, 2, 2],
            ..Default::default()
        },
    ] {
        assert!(
            ResNet::new(&cfg, vb()).is_err(),
            "{cfg:?} should be rejected"
        );
    }
    assert!(ResNetConfig::timm_d(50, 4).is_err());
    let net = ResNet::new(&ResNetConfig::torchvision(18), vb()).unwrap();
    let x = candle_core::Tensor::zeros((1, 4, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(net.forward(&x, false).is_err());
    let x = candle_core::Tensor::zeros((3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(net.forward(&x, false).is_err());
}
