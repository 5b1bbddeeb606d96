//! Swin parity against transformers' `SwinBackbone` (fixtures: tests/parity/gen_swin.py).
//!
//! Full-size Swin-T with the `backbone_config` of shi-labs/oneformer_ade20k_swin_tiny and
//! synthetic weights (segkit_core::testing) under the checkpoint's key names; inputs 1x3x97x129
//! (padding in the patch embedding, the windows and patch merging) and 1x3x224x224; two reduced
//! configurations (window 4 with batch 2, the stem output and no qkv bias; window 12); full-size
//! Swin-S, Swin-B and Swin-L (window 12) at 1x3x97x129.

use candle_core::{DType, Device, Tensor};
use segkit_backbones::{HiddenAct, Swin, SwinConfig};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_core::Backbone;
use segkit_tests::{assert_sampled_close, load_fixture};

fn reduced_w4() -> SwinConfig {
    SwinConfig {
        embed_dim: 32,
        depths: vec![1, 2, 1, 1],
        num_heads: vec![1, 2, 2, 4],
        window_size: 4,
        mlp_ratio: 2.5,
        qkv_bias: false,
        drop_path_rate: 0.2,
        ..SwinConfig::default()
    }
    .with_out_features(["stem", "stage1", "stage2", "stage3", "stage4"])
}

fn reduced_w12() -> SwinConfig {
    SwinConfig {
        embed_dim: 24,
        depths: vec![2, 2, 2, 2],
        num_heads: vec![2, 4, 4, 8],
        window_size: 12,
        layer_norm_eps: 1e-6,
        ..SwinConfig::default()
    }
    .with_out_features(["stage2", "stage4"])
}

fn check(
    fixture: &str,
    cfg: &SwinConfig,
    key: &str,
    shape: (usize, usize, usize, usize),
    train: bool,
) {
    check_dtype(fixture, cfg, key, shape, train, DType::F32)
}

/// `dtype` F64 runs the composed (any-device) inference path instead of the fused CPU kernel.
fn check_dtype(
    fixture: &str,
    cfg: &SwinConfig,
    key: &str,
    shape: (usize, usize, usize, usize),
    train: bool,
    dtype: DType,
) {
    let dev = Device::Cpu;
    let f = load_fixture(&format!("swin/{fixture}.safetensors"));
    let net = Swin::new(cfg, synthetic_var_builder(dtype, &dev)).expect("build");
    let x = synthetic_input(key, shape, &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let out = net.forward(&x, train).expect("forward");
    assert_eq!(out.names, net.feature_names());
    for (name, t) in out.names.iter().zip(&out.feature_maps) {
        assert_sampled_close(name, t, &f);
    }
}

#[test]
fn swin_tiny_oneformer_97x129() {
    let cfg = SwinConfig::oneformer_swin_tiny();
    check(
        "swin_tiny_oneformer_97x129",
        &cfg,
        "input",
        (1, 3, 97, 129),
        false,
    );
}

#[test]
fn swin_tiny_oneformer_224() {
    let cfg = SwinConfig::oneformer_swin_tiny();
    check(
        "swin_tiny_oneformer_224",
        &cfg,
        "input",
        (1, 3, 224, 224),
        false,
    );
}

/// Full-size Swin-S (window 7), Swin-B and Swin-L (window 12, the Mask2Former / OneFormer
/// backbones) against transformers' SwinBackbone.
#[test]
fn swin_small_base_large_97x129() {
    for (fixture, cfg) in [
        ("swin_small_97x129", SwinConfig::small()),
        ("swin_base_w12_97x129", SwinConfig::base_window12()),
        ("swin_large_w12_97x129", SwinConfig::large_window12()),
    ] {
        eprintln!("{fixture}");
        check(fixture, &cfg, "input", (1, 3, 97, 129), false);
    }
}

#[test]
fn swin_reduced_window4_batch2_with_stem() {
    check(
        "swin_reduced_w4_b2",
        &reduced_w4(),
        "input_reduced",
        (2, 3, 75, 53),
        false,
    );
}

#[test]
fn swin_reduced_window12() {
    check(
        "swin_reduced_w12",
        &reduced_w12(),
        "input",
        (1, 3, 97, 129),
        false,
    );
}

/// The composed window attention (tensor ops: gather, batched matmuls, softmax, scatter), the
/// path of non-CPU devices and of dtypes other than f32, run here in f64.
#[test]
fn swin_composed_attention_path_f64() {
    let cfg = SwinConfig::oneformer_swin_tiny();
    check_dtype(
        "swin_tiny_oneformer_97x129",
        &cfg,
        "input",
        (1, 3, 97, 129),
        false,
        DType::F64,
    );
    check_dtype(
        "swin_reduced_w4_b2",
        &reduced_w4(),
        "input_reduced",
        (2, 3, 75, 53),
        false,
        DType::F64,
    );
}

/// Training mode without stochastic effects (drop path and dropouts 0) goes through the
/// differentiable ops and must give the same numbers as the reference.
#[test]
fn swin_reduced_train_mode_without_drop_path_matches() {
    let cfg = SwinConfig {
        drop_path_rate: 0.0,
        ..reduced_w4()
    };
    check(
        "swin_reduced_w4_b2",
        &cfg,
        "input_reduced",
        (2, 3, 75, 53),
        true,
    );
}

/// Drop path acts in training mode only: inference is deterministic, training is not.
#[test]
fn drop_path_is_training_only() {
    let dev = Device::Cpu;
    let cfg = SwinConfig {
        drop_path_rate: 0.9,
        ..reduced_w4()
    };
    let net = Swin::new(&cfg, synthetic_var_builder(DType::F32, &dev)).unwrap();
    let x = synthetic_input("input_reduced", (8, 3, 33, 35), &dev).unwrap();
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let e1 = net.forward(&x, false).unwrap().into_vec();
    let e2 = net.forward(&x, false).unwrap().into_vec();
    assert_eq!(diff(&e1[4], &e2[4]), 0.0);
    let t1 = net.forward(&x, true).unwrap().into_vec();
    let t2 = net.forward(&x, true).unwrap().into_vec();
    assert!(
        diff(&t1[4], &t2[4]) > 0.0,
        "drop path had no effect in training mode"
    );
    // With drop_path_rate 0 the config in training mode equals inference (test above); here the
    // stem (before any block) is never affected.
    assert!(diff(&t1[0], &e1[0]) < 1e-5);
}

#[test]
fn feature_specs_and_names() {
    let net = Swin::new(
        &SwinConfig::oneformer_swin_tiny(),
        candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let s: Vec<(usize, usize)> = net
        .feature_specs()
        .iter()
        .map(|f| (f.channels, f.stride))
        .collect();
    assert_eq!(s, vec![(96, 4), (192, 8), (384, 16), (768, 32)]);
    assert_eq!(
        net.feature_names(),
        ["stage1", "stage2", "stage3", "stage4"]
    );
    let large = SwinConfig::oneformer_swin_large();
    let s: Vec<usize> = large
        .feature_specs()
        .unwrap()
        .iter()
        .map(|f| f.channels)
        .collect();
    assert_eq!(s, vec![192, 384, 768, 1536]);
    assert_eq!(large.window_size, 12);
    assert_eq!(SwinConfig::base_window12().embed_dim, 128);
    assert_eq!(SwinConfig::base_window7().window_size, 7);
    assert_eq!(SwinConfig::small().depths, vec![2, 2, 18, 2]);
    assert_eq!(SwinConfig::large_window7().num_heads, vec![6, 12, 24, 48]);
    // HF's default: the last stage only.
    let d = SwinConfig::default();
    assert_eq!(
        d.feature_specs().unwrap(),
        vec![segkit_core::FeatureSpec::new(768, 32)]
    );
}

/// The `backbone_config` object of shi-labs/oneformer_ade20k_swin_tiny's config.json parses
/// (HF bookkeeping fields and the stray `path_norm` are ignored) into the preset.
#[test]
fn parses_hf_backbone_config() {
    let json = r#"{
        "_name_or_path": "", "attention_probs_dropout_prob": 0.0, "depths": [2, 2, 6, 2],
        "drop_path_rate": 0.3, "embed_dim": 96, "encoder_stride": 32, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "hidden_size": 768, "image_size": 224,
        "initializer_range": 0.02, "layer_norm_eps": 1e-05, "mlp_ratio": 4.0,
        "model_type": "swin", "num_channels": 3, "num_heads": [3, 6, 12, 24], "num_layers": 4,
        "out_features": ["stage1", "stage2", "stage3", "stage4"], "out_indices": [1, 2, 3, 4],
        "patch_size": 4, "path_norm": true, "qkv_bias": true,
        "stage_names": ["stem", "stage1", "stage2", "stage3", "stage4"],
        "torch_dtype": "float32", "use_absolute_embeddings": false, "window_size": 7
    }"#;
    let cfg: SwinConfig = serde_json::from_str(json).unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        SwinConfig {
            model_type: None,
            ..cfg.clone()
        },
        SwinConfig::oneformer_swin_tiny()
            .with_out_features(["stage1", "stage2", "stage3", "stage4"])
            .clone_with_indices([1, 2, 3, 4])
    );
    // Pairs for sizes, out_indices alone, another activation.
    let cfg: SwinConfig = serde_json::from_str(
        r#"{"patch_size": [4, 4], "image_size": [384, 384], "out_indices": [2, 4], "hidden_act": "gelu_new"}"#,
    )
    .unwrap();
    assert_eq!(cfg.patch_size, 4);
    assert_eq!(cfg.hidden_act, HiddenAct::GeluTanh);
    let specs = cfg.feature_specs().unwrap();
    assert_eq!(
        specs.iter().map(|s| s.stride).collect::<Vec<_>>(),
        vec![8, 32]
    );
    // Unknown activations and non-square patches fail at parse time.
    assert!(serde_json::from_str::<SwinConfig>(r#"{"hidden_act": "mish"}"#).is_err());
    assert!(serde_json::from_str::<SwinConfig>(r#"{"patch_size": [4, 2]}"#).is_err());
    // Round trip.
    let t = SwinConfig::oneformer_swin_large();
    let back: SwinConfig = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
}

trait WithIndices {
    fn clone_with_indices(self, idx: [usize; 4]) -> Self;
}

impl WithIndices for SwinConfig {
    fn clone_with_indices(mut self, idx: [usize; 4]) -> Self {
        self.out_indices = Some(idx.to_vec());
        self
    }
}

#[test]
fn bad_configs_and_inputs_are_typed_errors() {
    let vb = || candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let invalid = |cfg: SwinConfig| {
        let e = Swin::new(&cfg, vb())
            .err()
            .unwrap_or_else(|| panic!("{cfg:?} accepted"));
        assert!(
            matches!(e, segkit_backbones::Error::InvalidConfig(_)),
            "{cfg:?}: {e}"
        );
        eprintln!("rejected: {e}");
    };
    let t = SwinConfig::tiny;
    invalid(SwinConfig {
        num_heads: vec![5, 6, 12, 24],
        ..t()
    }); // 5 does not divide 96
    invalid(SwinConfig {
        num_heads: vec![3, 6, 0, 24],
        ..t()
    });
    invalid(SwinConfig {
        window_size: 0,
        ..t()
    });
    invalid(SwinConfig {
        patch_size: 0,
        ..t()
    });
    invalid(SwinConfig {
        embed_dim: 0,
        ..t()
    });
    invalid(SwinConfig {
        depths: vec![2, 2, 6],
        ..t()
    });
    invalid(SwinConfig {
        depths: vec![],
        num_heads: vec![],
        ..t()
    });
    invalid(SwinConfig {
        depths: vec![2, 0, 6, 2],
        ..t()
    });
    invalid(SwinConfig {
        drop_path_rate: 1.0,
        ..t()
    });
    invalid(SwinConfig {
        mlp_ratio: 0.0,
        ..t()
    });
    invalid(SwinConfig {
        layer_norm_eps: 0.0,
        ..t()
    });
    invalid(SwinConfig {
        model_type: Some("vit".into()),
        ..t()
    });
    invalid(t().with_out_features(["stage5"]));
    invalid(t().with_out_features(["stage2", "stage1"]));
    invalid(SwinConfig {
        out_indices: Some(vec![1, 2]),
        ..t()
    }); // disagrees with out_features
    let net = Swin::new(
        &SwinConfig {
            depths: vec![1, 1, 1, 1],
            ..t()
        },
        vb(),
    )
    .unwrap();
    for shape in [vec![1, 4, 32, 32], vec![3, 32, 32], vec![1, 3, 0, 8]] {
        let x = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
        let e = net.forward(&x, false).expect_err("bad input accepted");
        assert!(matches!(e, segkit_core::Error::ShapeMismatch { .. }), "{e}");
    }
}

/// Tiny inputs: a 1x1 image still runs (every stage is one padded window).
#[test]
fn tiny_inputs_run() {
    let cfg = reduced_w4();
    let net = Swin::new(&cfg, synthetic_var_builder(DType::F32, &Device::Cpu)).unwrap();
    for (h, w) in [(1, 1), (5, 3), (4, 33)] {
        let x = synthetic_input("input", (1, 3, h, w), &Device::Cpu).unwrap();
        let out = net.forward(&x, false).unwrap();
        let (gh, gw) = (h.div_ceil(4), w.div_ceil(4));
        assert_eq!(out.feature_maps[1].dims(), &[1, 32, gh, gw]);
        assert_eq!(
            out.feature_maps[4].dims(),
            &[1, 256, gh.div_ceil(8), gw.div_ceil(8)]
        );
    }
}

/// Swin-T forward at 1x3x512x512, median of 5 (run with RAYON_NUM_THREADS=2 and
/// `--ignored --nocapture`; compare with `python tests/parity/gen_swin.py --bench`).
#[test]
#[ignore]
fn bench_swin_tiny_512() {
    let dev = Device::Cpu;
    let net = Swin::new(
        &SwinConfig::oneformer_swin_tiny(),
        synthetic_var_builder(DType::F32, &dev),
    )
    .unwrap();
    let x = synthetic_input("bench", (1, 3, 512, 512), &dev).unwrap();
    net.forward(&x, false).unwrap();
    let mut t = Vec::new();
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let out = net.forward(&x, false).unwrap();
        std::hint::black_box(&out);
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "segkit Swin-T 1x3x512x512: median {:.1} ms (all {:?})",
        t[2],
        t.iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
}
