//! Unit tests of the pixel decoder and the deformable-attention kernel.

use super::*;
use candle_core::DType;

fn small_cfg() -> MsDeformAttnPixelDecoderConfig {
    MsDeformAttnPixelDecoderConfig {
        conv_dim: 32,
        mask_dim: 8,
        encoder_layers: 1,
        encoder_feedforward_dim: 16,
        num_attention_heads: 4,
        ..MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny()
    }
}

fn specs() -> Vec<FeatureSpec> {
    vec![
        FeatureSpec::new(4, 4),
        FeatureSpec::new(8, 8),
        FeatureSpec::new(12, 16),
        FeatureSpec::new(16, 32),
    ]
}

#[test]
fn shapes_specs_and_neck_order() {
    let dev = Device::Cpu;
    let vb = VarBuilder::zeros(DType::F32, &dev);
    let dec = MsDeformAttnPixelDecoder::new(&small_cfg(), &specs(), vb).unwrap();
    assert_eq!(
        dec.output_specs(),
        vec![
            FeatureSpec::new(8, 4),
            FeatureSpec::new(32, 8),
            FeatureSpec::new(32, 16),
            FeatureSpec::new(32, 32)
        ]
    );
    // The config reports the same specs without building the decoder.
    assert_eq!(
        small_cfg().output_specs(&specs()).unwrap(),
        dec.output_specs()
    );
    assert!(matches!(
        small_cfg().output_specs(&specs()[2..]),
        Err(Error::InvalidConfig(_))
    ));
    let xs: Vec<Tensor> = [(4, 9, 11), (8, 5, 6), (12, 3, 3), (16, 2, 2)]
        .iter()
        .map(|&(c, h, w)| Tensor::zeros((2, c, h, w), DType::F32, &dev).unwrap())
        .collect();
    let o = Neck::forward_t(&dec, &xs, true).unwrap();
    let dims: Vec<Vec<usize>> = o.iter().map(|t| t.dims().to_vec()).collect();
    assert_eq!(
        dims,
        vec![
            vec![2, 8, 9, 11],
            vec![2, 32, 5, 6],
            vec![2, 32, 3, 3],
            vec![2, 32, 2, 2]
        ]
    );
}

#[test]
fn typed_errors() {
    let dev = Device::Cpu;
    let vb = VarBuilder::zeros(DType::F32, &dev);
    let bad = MsDeformAttnPixelDecoderConfig {
        num_attention_heads: 5,
        ..small_cfg()
    };
    assert!(matches!(
        MsDeformAttnPixelDecoder::new(&bad, &specs(), vb.clone()),
        Err(Error::InvalidConfig(_))
    ));
    let bad = MsDeformAttnPixelDecoderConfig {
        common_stride: 2,
        ..small_cfg()
    };
    assert!(matches!(
        MsDeformAttnPixelDecoder::new(&bad, &specs(), vb.clone()),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        MsDeformAttnPixelDecoder::new(&small_cfg(), &specs()[2..], vb.clone()),
        Err(Error::InvalidConfig(_))
    ));
    let dec = MsDeformAttnPixelDecoder::new(&small_cfg(), &specs(), vb).unwrap();
    let xs: Vec<Tensor> = [(4, 9, 11), (8, 5, 6), (13, 3, 3), (16, 2, 2)]
        .iter()
        .map(|&(c, h, w)| Tensor::zeros((1, c, h, w), DType::F32, &dev).unwrap())
        .collect();
    assert!(matches!(
        dec.forward(&xs, false),
        Err(segkit_core::Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        dec.forward(&xs[..3], false),
        Err(Error::WrongInputCount { .. })
    ));
    let v = Tensor::zeros((1, 10, 2, 4), DType::F32, &dev).unwrap();
    let loc = Tensor::zeros((1, 3, 2, 1, 2, 2), DType::F32, &dev).unwrap();
    let a = Tensor::zeros((1, 3, 2, 1, 2), DType::F32, &dev).unwrap();
    assert!(multi_scale_deformable_attention(&v, &[(3, 3)], &loc, &a).is_err());
    assert!(multi_scale_deformable_attention(&v, &[(2, 5)], &loc, &a).is_ok());
}

#[test]
fn config_roundtrip_and_hf_fields() {
    let c = MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny();
    let j = serde_json::to_string(&c).unwrap();
    assert_eq!(
        serde_json::from_str::<MsDeformAttnPixelDecoderConfig>(&j).unwrap(),
        c
    );
    let hf: MsDeformAttnPixelDecoderConfig = serde_json::from_str(
        r#"{"conv_dim": 64, "encoder_layers": 2, "num_queries": 150, "model_type": "oneformer"}"#,
    )
    .unwrap();
    assert_eq!(hf.conv_dim, 64);
    assert_eq!(hf.mask_dim, 256);
}

/// The CPU kernel equals the composed path, with points inside and outside the maps.
#[test]
fn kernel_matches_fallback() {
    let dev = Device::Cpu;
    let shapes = [(5, 7), (3, 2), (1, 1)];
    let s: usize = shapes.iter().map(|&(h, w)| h * w).sum();
    let (b, q, h, d, l, p) = (2, 11, 3, 5, 3, 2);
    let v = Tensor::randn(0f32, 1.0, (b, s, h, d), &dev).unwrap();
    let loc = Tensor::rand(-0.3f32, 1.3, (b, q, h, l, p, 2), &dev).unwrap();
    let a = Tensor::rand(0f32, 1.0, (b, q, h, l, p), &dev).unwrap();
    let k = multi_scale_deformable_attention(&v, &shapes, &loc, &a).unwrap();
    let f = multi_scale_deformable_attention_fallback(&v, &shapes, &loc, &a).unwrap();
    let diff = (k - f)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
}

/// Dropout acts in training mode only.
#[test]
fn dropout_is_training_only() {
    let dev = Device::Cpu;
    let vb = segkit_core::testing::synthetic_var_builder(DType::F32, &dev);
    let cfg = MsDeformAttnPixelDecoderConfig {
        dropout: 0.5,
        ..small_cfg()
    };
    let dec = MsDeformAttnPixelDecoder::new(&cfg, &specs(), vb).unwrap();
    let xs: Vec<Tensor> = [(4, 9, 11), (8, 5, 6), (12, 3, 3), (16, 2, 2)]
        .iter()
        .enumerate()
        .map(|(i, &(c, h, w))| {
            segkit_core::testing::synthetic_input(&format!("x{i}"), (1, c, h, w), &dev).unwrap()
        })
        .collect();
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
    let e1 = dec.forward(&xs, false).unwrap();
    let e2 = dec.forward(&xs, false).unwrap();
    assert_eq!(diff(&e1.mask_features, &e2.mask_features), 0.0);
    let t1 = dec.forward(&xs, true).unwrap();
    let t2 = dec.forward(&xs, true).unwrap();
    assert!(diff(&t1.mask_features, &t2.mask_features) > 0.0);
}
