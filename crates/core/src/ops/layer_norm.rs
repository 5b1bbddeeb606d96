//! Inference LayerNorm over the last dimension on CPU f32 rows (`nn::LayerNorm`'s fast path).
//!
//! Two passes per row in f32, as PyTorch's CPU kernel: the mean, then the mean squared
//! deviation (never `E[x^2] - E[x]^2`), each summed in 16 lanes so that the loops vectorise;
//! then `(x - mean) * inv_std * weight + bias`. Rows run in parallel (rayon).

use rayon::prelude::*;

use super::fastmath::has_avx2_fma;

const LANES: usize = 16;

/// Normalises each `weight.len()`-long row of `x`; returns a new buffer.
pub(crate) fn layer_norm_rows(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = vec![0f32; x.len()];
    if d == 0 {
        return out;
    }
    let simd = has_avx2_fma();
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, r)| {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AVX2 and FMA were detected on this CPU.
                return unsafe { row_avx2(o, r, weight, bias, eps) };
            }
            let _ = simd;
            row(o, r, weight, bias, eps)
        });
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(o: &mut [f32], r: &[f32], w: &[f32], b: &[f32], eps: f32) {
    row(o, r, w, b, eps)
}

#[inline(always)]
fn lane_sum(r: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut ch = r.chunks_exact(LANES);
    for c in &mut ch {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + ch.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

#[inline(always)]
fn row(o: &mut [f32], r: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let d = r.len() as f32;
    let m = lane_sum(r, |v| v) / d;
    let var = lane_sum(r, |v| (v - m) * (v - m)) / d;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &x), &w), &b) in o.iter_mut().zip(r).zip(w).zip(b) {
        *o = (x - m) * inv * w + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equals a float64 two-pass LayerNorm to f32 rounding, for rows shorter and longer than
    /// the lane count.
    #[test]
    fn matches_a_float64_reference() {
        for d in [1usize, 7, 16, 96, 100, 384] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * d)
                .map(|i| ((i * 2_654_435_761) % 1009) as f32 / 100.0 - 3.0)
                .collect();
            let w: Vec<f32> = (0..d).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..d).map(|i| (i % 5) as f32 * 0.01 - 0.02).collect();
            let got = layer_norm_rows(&x, &w, &b, 1e-5);
            for (k, r) in x.chunks(d).enumerate() {
                let m = r.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = r.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / d as f64;
                for j in 0..d {
                    let want = (r[j] as f64 - m) / (var + 1e-5).sqrt() * w[j] as f64 + b[j] as f64;
                    let g = got[k * d + j] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "d={d} [{k},{j}]: {g} vs {want}"
                    );
                }
            }
        }
    }
}
