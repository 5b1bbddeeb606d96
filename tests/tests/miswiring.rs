//! Compositions that used to run silently on the wrong features now fail with
//! `segkit_core::Error::Miswired`, naming the component, what it was designed for and what it
//! got (issue 17): one test per class — wrong start level, wrong `in_index`, channel
//! mismatch, stride mismatch — plus the cases that now just work (the JPU picks its levels
//! from the specs; a backbone returns the stages its `out_indices` name).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_backbones::{ResNet, ResNetConfig};
use segkit_core::{Backbone, Error, FeatureSpec, Neck};
use segkit_heads::{DaHead, DaHeadConfig, PspHead, PspHeadConfig};
use segkit_necks::{Jpu, JpuConfig};

fn zeros() -> VarBuilder<'static> {
    VarBuilder::zeros(DType::F32, &Device::Cpu)
}

/// ResNet-50's C2..C5 at output stride `os`.
fn r50(os: usize) -> Vec<FeatureSpec> {
    let cfg = ResNetConfig::torchvision(50)
        .with_output_stride(os)
        .unwrap();
    cfg.feature_specs().unwrap()
}

/// The `Miswired` error's component and problem, or a panic naming what came instead.
fn miswired<T>(r: segkit_core::Result<T>) -> (String, String) {
    match r {
        Err(Error::Miswired { component, problem }) => (component, problem),
        Err(e) => panic!("expected Error::Miswired, got {e:?}"),
        Ok(_) => panic!("expected Error::Miswired, the composition was built"),
    }
}

#[test]
fn wrong_start_level_is_an_error_and_the_default_picks_the_designed_levels() {
    // The case: a ResNet returns C2..C5 and the preset JPU fused C2 as well. Now it
    // takes what the specs give it: C3..C5, the levels it was designed for.
    let specs = r50(32);
    let jpu = Jpu::new(&JpuConfig::mmseg(), &specs, zeros()).unwrap();
    // Models and configs print (config and specs, not the weights).
    let dbg = format!("{jpu:?}");
    assert!(dbg.starts_with("Jpu { config: JpuConfig {") && dbg.contains("output_specs"));
    assert_eq!(
        jpu.output_specs(),
        [(512, 8), (1024, 16), (2048, 8)].map(|(c, s)| FeatureSpec::new(c, s))
    );
    // An explicit start level that fuses other levels is named.
    let (component, problem) = miswired(Jpu::new(
        &JpuConfig::mmseg().with_start_level(2),
        &specs,
        zeros(),
    ));
    assert!(component.contains("JPU (start_level 2"), "{component}");
    assert!(
        problem.contains("1024@16, 2048@32") && problem.contains("512@8, 1024@16, 2048@32"),
        "{problem}"
    );
    // Features with no run of the designed levels (a ResNet-18) are named too.
    let r18 = ResNetConfig::torchvision(18).feature_specs().unwrap();
    let (_, problem) = miswired(Jpu::new(&JpuConfig::mmseg(), &r18, zeros()));
    assert!(problem.contains("no consecutive inputs"), "{problem}");
}

#[test]
fn wrong_in_index_is_an_error() {
    // The case: the JPU fusing C2..C5 (what it did before, now only on purpose)
    // returns C2, C3, C4 and the fused map at stride 4; DANet's preset `in_index` 3 picked
    // the fused map and ran at stride 4.
    let specs = r50(32);
    let old = JpuConfig::mmseg().with_designed_for(None);
    let jpu = Jpu::new(&old, &specs, zeros()).unwrap();
    let (component, problem) = miswired(DaHead::new(
        &DaHeadConfig::danet_r50_d8(19),
        &jpu.output_specs(),
        zeros(),
    ));
    assert!(component.contains("`in_index` One(3)"), "{component}");
    assert!(
        problem.contains("designed for 2048 channels at stride 8")
            && problem.contains("2048 channels at stride 4")
            && problem.contains("stride mismatch"),
        "{problem}"
    );
    // A FastFCN head (`in_index` 2 = the JPU's fused map) put on the backbone directly
    // reads C4.
    let (_, problem) = miswired(PspHead::new(
        &PspHeadConfig::fastfcn_r50_d32_jpu_psp(19),
        &specs,
        zeros(),
    ));
    assert!(
        problem.contains("have 1024 channels at stride 16"),
        "{problem}"
    );
}

#[test]
fn channel_mismatch_is_an_error() {
    // DANet's ResNet-50 head on a dilated ResNet-18: C5 has 512 channels, not 2048.
    let r18 = ResNetConfig::torchvision(18)
        .with_output_stride(8)
        .unwrap()
        .feature_specs()
        .unwrap();
    let (component, problem) =
        miswired(DaHead::new(&DaHeadConfig::danet_r50_d8(19), &r18, zeros()));
    assert!(component.starts_with("DAHead"), "{component}");
    assert!(
        problem.contains("512 channels at stride 8") && problem.contains("channel mismatch"),
        "{problem}"
    );
    // On purpose: without `designed_for` the head takes the features as they are.
    let mut cfg = DaHeadConfig::danet_r50_d8(19);
    cfg.base.designed_for = None;
    DaHead::new(&cfg, &r18, zeros()).unwrap();
}

#[test]
fn stride_mismatch_is_an_error() {
    // DANet's D8 head on an undilated ResNet-50: C5 is at stride 32.
    let (_, problem) = miswired(DaHead::new(
        &DaHeadConfig::danet_r50_d8(19),
        &r50(32),
        zeros(),
    ));
    assert!(
        problem.contains("2048 channels at stride 32") && problem.contains("stride mismatch"),
        "{problem}"
    );
    // The dilated backbone it was designed for is accepted.
    DaHead::new(&DaHeadConfig::danet_r50_d8(19), &r50(8), zeros()).unwrap();
}

#[test]
fn a_backbone_returns_the_stages_its_out_indices_name() {
    let cfg = ResNetConfig {
        base_channels: 4,
        ..ResNetConfig::mmseg_v1c(50)
    }
    .with_out_indices(&[1, 2, 3]);
    let net = ResNet::new(&cfg, zeros()).unwrap();
    assert_eq!(
        net.feature_specs(),
        [(32, 8), (64, 8), (128, 8)].map(|(c, s)| FeatureSpec::new(c, s))
    );
    assert_eq!(net.feature_names(), ["c3", "c4", "c5"]);
    let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let f = net.forward_features(&x, false).unwrap();
    let dims: Vec<_> = f.iter().map(|t| t.dims().to_vec()).collect();
    assert_eq!(dims, [[1, 32, 4, 4], [1, 64, 4, 4], [1, 128, 4, 4]]);
    let bad = cfg.with_out_indices(&[2, 1]);
    assert!(matches!(
        ResNet::new(&bad, zeros()),
        Err(Error::InvalidConfig(_))
    ));
}
