//! Fused element-wise epilogues of the linear layers for f32 CPU inference: one pass over the
//! GEMM output instead of a bias add followed by an activation or a residual add.

use candle_core::{DType, Tensor};

use super::kernel::{exp_approx, has_avx2_fma, madd};
use crate::Result;

/// Whether `t` can take the fused CPU path.
pub(crate) fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op()
}

/// Borrows the f32 data of a CPU tensor (made contiguous if it is not).
pub(crate) fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let data = match &*storage {
        candle_core::Storage::Cpu(s) => s.as_slice::<f32>()?,
        _ => {
            return Err(candle_core::Error::Msg("fused Swin op on a non-CPU tensor".into()).into())
        }
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(f(&data[a..b])),
        None => Err(candle_core::Error::Msg("fused Swin op on a strided tensor".into()).into()),
    }
}

/// Runs `f(first_row, rows)` over row-aligned chunks of `out` on the candle thread count.
fn par_rows(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / row.max(1);
    let threads = candle_core::utils::get_num_threads().clamp(1, rows.max(1));
    if threads == 1 || out.len() < 1 << 15 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        let mut chunks = out.chunks_mut(per * row).enumerate();
        let first = chunks.next();
        for (i, c) in chunks {
            let f = &f;
            s.spawn(move || f(i * per, c));
        }
        if let Some((_, c)) = first {
            f(0, c);
        }
    });
}

/// `y + b` (bias over the last dimension) followed by exact (erf) GELU.
pub(crate) fn bias_gelu(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = b.elem_count();
    let mut out = vec![0f32; y.elem_count()];
    with_data(b, |bias| {
        with_data(y, |src| {
            let simd = has_avx2_fma();
            par_rows(&mut out, n, |r0, dst| {
                let src = &src[r0 * n..r0 * n + dst.len()];
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: AVX2 and FMA were detected on this CPU.
                    unsafe { bias_gelu_avx2(src, bias, dst) };
                    return;
                }
                let _ = simd;
                bias_gelu_rows::<false>(src, bias, dst)
            })
        })
    })??;
    Ok(Tensor::from_vec(out, y.shape(), y.device())?)
}

/// `x + y + b` (bias over the last dimension): a linear layer's epilogue plus the residual.
pub(crate) fn bias_residual(y: &Tensor, b: &Tensor, x: &Tensor) -> Result<Tensor> {
    let n = b.elem_count();
    let mut out = vec![0f32; y.elem_count()];
    with_data(b, |bias| {
        with_data(y, |ys| {
            with_data(x, |xs| {
                par_rows(&mut out, n, |r0, dst| {
                    let range = r0 * n..r0 * n + dst.len();
                    for ((d, y), x) in dst
                        .chunks_exact_mut(n)
                        .zip(ys[range.clone()].chunks_exact(n))
                        .zip(xs[range].chunks_exact(n))
                    {
                        for (((d, &y), &x), &b) in d.iter_mut().zip(y).zip(x).zip(bias) {
                            *d = x + (y + b);
                        }
                    }
                })
            })
        })
    })???;
    Ok(Tensor::from_vec(out, y.shape(), y.device())?)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_gelu_avx2(src: &[f32], bias: &[f32], dst: &mut [f32]) {
    bias_gelu_rows::<true>(src, bias, dst)
}

#[inline(always)]
fn bias_gelu_rows<const FMA: bool>(src: &[f32], bias: &[f32], dst: &mut [f32]) {
    let n = bias.len();
    for (d, s) in dst.chunks_exact_mut(n).zip(src.chunks_exact(n)) {
        for ((d, &s), &b) in d.iter_mut().zip(s).zip(bias) {
            *d = gelu::<FMA>(s + b);
        }
    }
}

/// `x Phi(x) = x erfc(-x / sqrt 2) / 2`, with `erfc` from its Chebyshev-fitted form
/// `t exp(-z^2 + P(t))`, `t = 1 / (1 + z / 2)` (fractional error below 1.2e-7 for all `z` in
/// exact arithmetic; below 1e-6 of `max(|gelu(x)|, 0.1)` in f32).
#[inline(always)]
fn gelu<const FMA: bool>(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / madd::<FMA>(0.5, z, 1.0);
    let mut p = 0.170_872_77f32;
    p = madd::<FMA>(p, t, -0.822_152_23);
    p = madd::<FMA>(p, t, 1.488_515_9);
    p = madd::<FMA>(p, t, -1.135_204);
    p = madd::<FMA>(p, t, 0.278_868_07);
    p = madd::<FMA>(p, t, -0.186_288_06);
    p = madd::<FMA>(p, t, 0.096_784_18);
    p = madd::<FMA>(p, t, 0.374_091_96);
    p = madd::<FMA>(p, t, 1.000_023_7);
    p = madd::<FMA>(p, t, -1.265_512_2);
    // erfc(z) for z >= 0; erfc(-z) = 2 - erfc(z).
    let erfc = t * exp_approx::<FMA>(madd::<FMA>(-z, z, p));
    let phi2 = if x >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * x * phi2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_erf_form() {
        // Reference: GELU through f64 erf from its series / continued fraction (libm-free):
        // erf(x) = 2/sqrt(pi) * sum_k (-1)^k x^(2k+1) / (k! (2k+1)) for |x| < 3, else +-1 - tiny.
        fn erf(x: f64) -> f64 {
            if x.abs() > 5.0 {
                return x.signum();
            }
            let mut sum = 0f64;
            let mut term = x;
            let mut k = 0f64;
            while term.abs() > 1e-18 * sum.abs().max(1e-300) || k < 5.0 {
                sum += term / (2.0 * k + 1.0);
                k += 1.0;
                term *= -x * x / k;
                if k > 200.0 {
                    break;
                }
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        for i in -6000..6000 {
            let x = i as f32 * 1e-3;
            let want = 0.5 * x as f64 * (1.0 + erf(x as f64 / 2f64.sqrt()));
            let got = gelu::<false>(x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(0.1),
                "{x}: {got} vs {want}"
            );
        }
    }
}
