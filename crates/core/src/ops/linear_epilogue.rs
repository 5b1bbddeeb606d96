//! The epilogue of [`super::linear`]'s GEMM: the bias, a ReLU or the exact GELU, and a
//! residual add, applied in one parallel pass over the `gemm` crate's output (16-lane vectors
//! on AVX-512F, with [`gelu_erf_avx512`]; an AVX2 / FMA or portable loop elsewhere).
//!
//! Measured on Swin-T's linear layers (2 threads, AVX-512 Xeon, `timing_of_the_pass`): the
//! `gemm` crate followed by this pass runs at 80-98% of the speed of the bare `gemm` with a
//! bias or a residual, 63-92% with a GELU (the lowest at a depth of 96, where the GEMM has the
//! least work per output). A GEMM of segkit's own that applied the epilogue to
//! each output tile while it sat in L1 (six row pointers into `X`, `W^T` packed into
//! micro-panels) was slower on every one of these shapes: the `gemm` crate's packed 64 x 6
//! kernel reaches 85-100% of FP32 peak on them, more than the pass costs.

use rayon::prelude::*;

use super::conv::Activation;
use super::fastmath::{gelu_erf, has_avx2_fma};
#[cfg(target_arch = "x86_64")]
use super::fastmath::{gelu_erf_avx2, gelu_erf_avx512};

/// What each output element gets after the product, in this order: `+ bias[col]`, the
/// activation, `residual[row, col] + .`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added per output column (`dout` elements).
    pub(crate) bias: Option<&'a [f32]>,
    /// `None`, ReLU or the exact GELU (never a sigmoid: [`super::linear_act`] runs it after).
    pub(crate) act: Activation,
    /// Added last (`rows x dout`, row-major).
    pub(crate) residual: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    fn is_identity(&self) -> bool {
        self.bias.is_none() && self.act == Activation::None && self.residual.is_none()
    }
}

/// [`epilogue_run`] on 16-lane vectors (a masked last one), with [`gelu_erf_avx512`].
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_avx512(dst: &mut [f32], e: Epilogue<'_>) {
    use std::arch::x86_64::*;
    let n = dst.len();
    for i in (0..n).step_by(16) {
        let m: __mmask16 = if n - i >= 16 {
            0xffff
        } else {
            ((1u32 << (n - i)) - 1) as __mmask16
        };
        // SAFETY: the masked lanes i..min(i + 16, n) lie inside `dst` and inside `e`'s slices,
        // which are as long as `dst`.
        unsafe {
            let mut v = _mm512_maskz_loadu_ps(m, dst.as_ptr().add(i));
            if let Some(b) = e.bias {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b.as_ptr().add(i)));
            }
            match e.act {
                Activation::Relu => v = _mm512_max_ps(v, _mm512_setzero_ps()),
                Activation::Gelu => v = gelu_erf_avx512(v),
                Activation::None | Activation::Sigmoid => {}
            }
            if let Some(s) = e.residual {
                v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, s.as_ptr().add(i)), v);
            }
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), m, v);
        }
    }
}

/// [`epilogue_run`] on four 8-lane vectors at a time, each element loaded and stored once,
/// with [`gelu_erf_avx2`] (the same values as the scalar FMA form); the last `< 32` elements
/// take [`epilogue_run`].
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn epilogue_avx2(dst: &mut [f32], e: Epilogue<'_>) {
    use std::arch::x86_64::*;
    const W: usize = 32;
    let full = dst.len() / W * W;
    for i in (0..full).step_by(W) {
        // SAFETY: lanes i..i + 32 lie inside `dst` and inside `e`'s slices, which are as long
        // as `dst`.
        unsafe {
            let at = |s: &[f32], j: usize| _mm256_loadu_ps(s.as_ptr().add(i + 8 * j));
            let mut v: [__m256; 4] = std::array::from_fn(|j| at(dst, j));
            if let Some(b) = e.bias {
                v = std::array::from_fn(|j| _mm256_add_ps(v[j], at(b, j)));
            }
            match e.act {
                Activation::Relu => v = v.map(|v| _mm256_max_ps(v, _mm256_setzero_ps())),
                Activation::Gelu => v = gelu_erf_avx2(v),
                Activation::None | Activation::Sigmoid => {}
            }
            if let Some(s) = e.residual {
                v = std::array::from_fn(|j| _mm256_add_ps(v[j], at(s, j)));
            }
            for (j, v) in v.into_iter().enumerate() {
                _mm256_storeu_ps(dst.as_mut_ptr().add(i + 8 * j), v);
            }
        }
    }
    let tail = Epilogue {
        bias: e.bias.map(|b| &b[full..]),
        residual: e.residual.map(|s| &s[full..]),
        ..e
    };
    epilogue_run::<true>(&mut dst[full..], tail)
}

/// `dst` (one run of an output row) gets `e`; `e`'s slices are aligned with `dst`.
#[inline(always)]
fn epilogue_run<const FMA: bool>(dst: &mut [f32], e: Epilogue<'_>) {
    if let Some(b) = e.bias {
        dst.iter_mut().zip(b).for_each(|(d, &b)| *d += b);
    }
    match e.act {
        Activation::Relu => dst.iter_mut().for_each(|d| *d = d.max(0.0)),
        Activation::Gelu => dst.iter_mut().for_each(|d| *d = gelu_erf::<FMA>(*d)),
        Activation::None | Activation::Sigmoid => {}
    }
    if let Some(s) = e.residual {
        dst.iter_mut().zip(s).for_each(|(d, &s)| *d += s);
    }
}

/// Applies `e` to the whole `rows x dout` output `y` (after a GEMM that had no epilogue), in
/// parallel over blocks of rows.
pub(crate) fn epilogue_rows(y: &mut [f32], dout: usize, e: Epilogue<'_>) {
    if e.is_identity() || dout == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::is_x86_feature_detected!("avx512f");
    let simd = has_avx2_fma();
    let block = (4096 / dout).max(1);
    y.par_chunks_mut(block * dout)
        .enumerate()
        .for_each(|(blk, chunk)| {
            for (r, dst) in chunk.chunks_exact_mut(dout).enumerate() {
                let at = (blk * block + r) * dout;
                let e = Epilogue {
                    residual: e.residual.map(|s| &s[at..][..dout]),
                    ..e
                };
                #[cfg(target_arch = "x86_64")]
                if avx512 {
                    // SAFETY: AVX-512F was detected on this CPU.
                    unsafe { epilogue_avx512(dst, e) };
                    continue;
                } else if simd {
                    // SAFETY: AVX2 and FMA were detected on this CPU.
                    unsafe { epilogue_avx2(dst, e) };
                    continue;
                }
                let _ = simd;
                epilogue_run::<false>(dst, e);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::linear::gemm_rows;

    fn reference(x: &[f32], w: &[f32], (rows, din, dout): (usize, usize, usize)) -> Vec<f64> {
        let mut y = vec![0f64; rows * dout];
        for i in 0..rows {
            for o in 0..dout {
                y[i * dout + o] = (0..din)
                    .map(|k| x[i * din + k] as f64 * w[o * din + k] as f64)
                    .sum();
            }
        }
        y
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
                (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Every element against an f64 GEMM with the epilogue: the pass alone on the exact
    /// product, and `linear`'s whole path (`gemm_rows`), over ragged rows, a row narrower than
    /// one vector, and widths that end in a partial vector.
    #[test]
    fn matches_f64_reference() {
        for &(rows, din, dout) in &[
            (1, 1, 1),
            (7, 19, 37),
            (13, 96, 48),
            (200, 300, 17),
            (5, 40, 100),
        ] {
            let (x, w) = (data(rows * din, 1), data(dout * din, 2));
            let bias = data(dout, 3);
            let res = data(rows * dout, 4);
            let want = reference(&x, &w, (rows, din, dout));
            for (with_bias, act, with_res) in [
                (false, Activation::None, false),
                (true, Activation::None, false),
                (true, Activation::Gelu, false),
                (true, Activation::Relu, false),
                (true, Activation::None, true),
                (false, Activation::Gelu, true),
                (false, Activation::Relu, true),
            ] {
                let epi = Epilogue {
                    bias: with_bias.then_some(&bias[..]),
                    act,
                    residual: with_res.then_some(&res[..]),
                };
                let expect: Vec<f64> = want
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let v = v + if with_bias {
                            bias[i % dout] as f64
                        } else {
                            0.0
                        };
                        let v = match act {
                            Activation::Gelu => gelu_f64(v),
                            Activation::Relu => v.max(0.0),
                            _ => v,
                        };
                        v + if with_res { res[i] as f64 } else { 0.0 }
                    })
                    .collect();
                let scale = (din as f64).sqrt() * 0.3;
                let mut pass: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                epilogue_rows(&mut pass, dout, epi);
                let whole = gemm_rows(&x, &w, (rows, din, dout), epi);
                for (name, got) in [("epilogue_rows", pass), ("gemm_rows", whole)] {
                    assert_eq!(got.len(), rows * dout);
                    for (i, (&g, &e)) in got.iter().zip(&expect).enumerate() {
                        assert!(
                            (g as f64 - e).abs() <= 2e-6 * scale.max(e.abs()),
                            "{name} {rows}x{din}x{dout} {with_bias}/{act:?}/{with_res} at {i}: \
                             {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    fn gelu_f64(x: f64) -> f64 {
        // erf by its Taylor series (|x| small here): enough terms for 1e-12.
        let z = x / std::f64::consts::SQRT_2;
        let (mut sum, mut term, mut k) = (0f64, z, 0f64);
        while term.abs() > 1e-16 || k < 3.0 {
            sum += term / (2.0 * k + 1.0);
            k += 1.0;
            term *= -z * z / k;
        }
        0.5 * x * (1.0 + sum * 2.0 / std::f64::consts::PI.sqrt())
    }

    /// What the pass costs: `linear`'s path with an epilogue against the bare `gemm` crate on
    /// Swin-T's linear layers at 512 x 512 (run with `cargo test --release -p segkit-core
    /// timing_of_the_pass -- --ignored --nocapture`).
    #[test]
    #[ignore = "timing, not a check"]
    fn timing_of_the_pass() {
        for (rows, din, dout) in [
            (16384, 96, 384),
            (16384, 384, 96),
            (4096, 192, 768),
            (1024, 384, 1536),
            (256, 768, 3072),
        ] {
            let (x, w) = (data(rows * din, 1), data(dout * din, 2));
            let (bias, res) = (data(dout, 3), data(rows * dout, 4));
            let flop = 2.0 * (rows * din * dout) as f64;
            let gflops = |epi: Epilogue<'_>| {
                let mut best = f64::MAX;
                for _ in 0..9 {
                    let t = std::time::Instant::now();
                    std::hint::black_box(gemm_rows(&x, &w, (rows, din, dout), epi));
                    best = best.min(t.elapsed().as_secs_f64());
                }
                flop / best / 1e9
            };
            let bare = gflops(Epilogue::default());
            let with = |act, residual| {
                gflops(Epilogue {
                    bias: Some(&bias),
                    act,
                    residual,
                })
            };
            let (b, g, r) = (
                with(Activation::None, None),
                with(Activation::Gelu, None),
                with(Activation::None, Some(&res[..])),
            );
            println!(
                "{rows}x{din}x{dout}: gemm {bare:.0} GFLOP/s; + bias {b:.0}, + bias + GELU \
                 {g:.0}, + bias + residual {r:.0}"
            );
        }
    }
}
