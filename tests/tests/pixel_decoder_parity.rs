//! Pixel-decoder parity against transformers' `OneFormerPixelDecoder` and its
//! `multi_scale_deformable_attention` (fixtures: tests/parity/gen_pixel_decoder.py).
//!
//! - The full oneformer_ade20k_swin_tiny pixel decoder (6 layers, 8 heads, 3 levels, 4 points,
//!   FFN 1024, width 256) with synthetic weights on Swin-T-shaped inputs of a 1x3x97x129 image
//!   (25x33, 13x17, 7x9, 4x5), on the CPU kernel (f32) and the composed path (f64).
//! - A reduced configuration with batch 2.
//! - The deformable-attention core alone, three configurations with points outside the maps.

use candle_core::{DType, Device, Tensor};
use segkit_core::testing::{synthetic_input, synthetic_var_builder};
use segkit_core::FeatureSpec;
use segkit_necks::msdeform::multi_scale_deformable_attention_fallback;
use segkit_necks::{
    multi_scale_deformable_attention, MsDeformAttnPixelDecoder, MsDeformAttnPixelDecoderConfig,
};
use segkit_tests::{assert_sampled_close, load_fixture};

const SWIN_T: [usize; 4] = [96, 192, 384, 768];

fn specs(channels: &[usize]) -> Vec<FeatureSpec> {
    channels
        .iter()
        .zip([4, 8, 16, 32])
        .map(|(&c, s)| FeatureSpec::new(c, s))
        .collect()
}

fn features(
    prefix: &str,
    batch: usize,
    channels: &[usize],
    sizes: &[(usize, usize)],
    dtype: DType,
) -> Vec<Tensor> {
    channels
        .iter()
        .zip(sizes)
        .enumerate()
        .map(|(i, (&c, &(h, w)))| {
            synthetic_input(
                &format!("{prefix}.stage{}", i + 1),
                (batch, c, h, w),
                &Device::Cpu,
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn check_decoder(
    fixture: &str,
    cfg: &MsDeformAttnPixelDecoderConfig,
    channels: &[usize],
    prefix: &str,
    batch: usize,
    sizes: &[(usize, usize)],
    dtype: DType,
    train: bool,
) {
    let f = load_fixture(&format!("pixel_decoder/{fixture}.safetensors"));
    let dec = MsDeformAttnPixelDecoder::new(
        cfg,
        &specs(channels),
        synthetic_var_builder(dtype, &Device::Cpu),
    )
    .expect("build");
    let xs = features(prefix, batch, channels, sizes, dtype);
    let out = dec.forward(&xs, train).expect("forward");
    assert_sampled_close("mask_features", &out.mask_features, &f);
    assert_eq!(out.multi_scale_features.len(), 3);
    for (i, t) in out.multi_scale_features.iter().enumerate() {
        assert_sampled_close(&format!("multi_scale_features.{i}"), t, &f);
    }
}

const SIZES_97X129: [(usize, usize); 4] = [(25, 33), (13, 17), (7, 9), (4, 5)];

#[test]
fn oneformer_swin_tiny_97x129() {
    check_decoder(
        "oneformer_swin_tiny_97x129",
        &MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny(),
        &SWIN_T,
        "pd",
        1,
        &SIZES_97X129,
        DType::F32,
        false,
    );
}

/// The composed path (non-CPU devices, non-f32 dtypes), run here in f64.
#[test]
fn oneformer_swin_tiny_97x129_composed_f64() {
    check_decoder(
        "oneformer_swin_tiny_97x129",
        &MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny(),
        &SWIN_T,
        "pd",
        1,
        &SIZES_97X129,
        DType::F64,
        false,
    );
}

fn reduced() -> MsDeformAttnPixelDecoderConfig {
    MsDeformAttnPixelDecoderConfig {
        conv_dim: 64,
        mask_dim: 32,
        encoder_layers: 2,
        num_attention_heads: 4,
        encoder_feedforward_dim: 96,
        ..MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny()
    }
}

const REDUCED_SIZES: [(usize, usize); 4] = [(21, 18), (11, 9), (6, 5), (3, 3)];

#[test]
fn reduced_batch2() {
    check_decoder(
        "reduced_b2",
        &reduced(),
        &[16, 24, 40, 64],
        "pdr",
        2,
        &REDUCED_SIZES,
        DType::F32,
        false,
    );
}

/// Training mode with dropout 0 (the only stochastic effect) equals the reference.
#[test]
fn reduced_batch2_train_mode_without_dropout() {
    let cfg = MsDeformAttnPixelDecoderConfig {
        dropout: 0.0,
        ..reduced()
    };
    check_decoder(
        "reduced_b2",
        &cfg,
        &[16, 24, 40, 64],
        "pdr",
        2,
        &REDUCED_SIZES,
        DType::F32,
        true,
    );
}

/// (name, batch, heads, head dim, level shapes, queries, location scale, points): as
/// gen_pixel_decoder.py's MSDA_CASES.
type MsdaCase = (
    &'static str,
    usize,
    usize,
    usize,
    &'static [(usize, usize)],
    usize,
    f64,
    usize,
);

const MSDA_CASES: [MsdaCase; 3] = [
    (
        "hf_like",
        2,
        8,
        32,
        &[(13, 17), (7, 9), (4, 5)],
        50,
        0.35,
        4,
    ),
    ("odd", 1, 2, 5, &[(1, 1), (6, 3)], 40, 0.5, 3),
    ("one_level", 1, 3, 8, &[(9, 14)], 33, 0.3, 2),
];

fn msda_inputs(c: &MsdaCase, dtype: DType) -> (Tensor, Tensor, Tensor) {
    let &(name, b, h, d, shapes, q, scale, p) = c;
    let dev = Device::Cpu;
    let s: usize = shapes.iter().map(|&(hh, ww)| hh * ww).sum();
    let l = shapes.len();
    let value = synthetic_input(&format!("msda.{name}.value"), (b, s, h, d), &dev).unwrap();
    let u = synthetic_input(&format!("msda.{name}.loc"), (b, q, h, l, p, 2), &dev).unwrap();
    let loc = u.affine(scale, 0.5).unwrap();
    let logits = synthetic_input(&format!("msda.{name}.attn"), (b, q, h, l * p), &dev).unwrap();
    let attn = candle_nn::ops::softmax_last_dim(&logits)
        .unwrap()
        .reshape((b, q, h, l, p))
        .unwrap();
    let cast = |t: Tensor| t.to_dtype(dtype).unwrap();
    (cast(value), cast(loc), cast(attn))
}

#[test]
fn msda_core_cpu_kernel() {
    let f = load_fixture("pixel_decoder/msda_core.safetensors");
    for c in &MSDA_CASES {
        let (v, loc, a) = msda_inputs(c, DType::F32);
        let out = multi_scale_deformable_attention(&v, c.4, &loc, &a).unwrap();
        assert_sampled_close(&format!("msda.{}", c.0), &out, &f);
    }
}

#[test]
fn msda_core_composed() {
    let f = load_fixture("pixel_decoder/msda_core.safetensors");
    for c in &MSDA_CASES {
        let (v, loc, a) = msda_inputs(c, DType::F32);
        let out = multi_scale_deformable_attention_fallback(&v, c.4, &loc, &a).unwrap();
        assert_sampled_close(&format!("msda.{}", c.0), &out, &f);
        // f64 takes the composed path through the public entry point.
        let (v, loc, a) = msda_inputs(c, DType::F64);
        let out = multi_scale_deformable_attention(&v, c.4, &loc, &a).unwrap();
        assert_eq!(out.dtype(), DType::F64);
        assert_sampled_close(&format!("msda.{}", c.0), &out, &f);
    }
}

fn median_ms(mut f: impl FnMut()) -> (f64, Vec<f64>) {
    f();
    let mut t = Vec::new();
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        f();
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    (t[2], t.iter().map(|v| (v * 10.0).round() / 10.0).collect())
}

/// The attention core and the whole decoder at the sizes of a 512x512 image (Swin-T features
/// 128x128 .. 16x16), median of 5. Run with RAYON_NUM_THREADS=2 and `--ignored --nocapture`;
/// compare with `python tests/parity/gen_pixel_decoder.py --bench`.
#[test]
#[ignore]
fn bench_pixel_decoder_512() {
    let dev = Device::Cpu;
    let shapes: &'static [(usize, usize)] = &[(16, 16), (32, 32), (64, 64)];
    let s: usize = shapes.iter().map(|&(h, w)| h * w).sum();
    let c: MsdaCase = ("bench", 1, 8, 32, shapes, s, 0.3, 4);
    let (v, loc, a) = msda_inputs(&c, DType::F32);
    let (m, all) = median_ms(|| {
        std::hint::black_box(multi_scale_deformable_attention(&v, shapes, &loc, &a).unwrap());
    });
    eprintln!(
        "segkit multi_scale_deformable_attention 1x{s} queries: median {m:.1} ms (all {all:?})"
    );
    let (m, all) = median_ms(|| {
        std::hint::black_box(
            multi_scale_deformable_attention_fallback(&v, shapes, &loc, &a).unwrap(),
        );
    });
    eprintln!("segkit msda composed path: median {m:.1} ms (all {all:?})");
    let dec = MsDeformAttnPixelDecoder::new(
        &MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny(),
        &specs(&SWIN_T),
        synthetic_var_builder(DType::F32, &dev),
    )
    .unwrap();
    let xs = features(
        "bench",
        1,
        &SWIN_T,
        &[(128, 128), (64, 64), (32, 32), (16, 16)],
        DType::F32,
    );
    let (m, all) = median_ms(|| {
        std::hint::black_box(dec.forward(&xs, false).unwrap());
    });
    eprintln!("segkit pixel decoder 512x512 sizes: median {m:.1} ms (all {all:?})");
}
