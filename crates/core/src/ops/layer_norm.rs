//! LayerNorm over the last dimension on CPU f32 rows: `nn::LayerNorm`'s fast paths.
//!
//! Two passes per row in f32, as PyTorch's CPU kernel: the mean, then the mean squared
//! deviation (never `E[x^2] - E[x]^2`), each summed in 16 lanes so that the loops vectorise;
//! then `(x - mean) * inv_std * weight + bias`. Rows run in parallel (rayon).
//!
//! [`layer_norm_train`] is the same forward as one differentiable candle `CustomOp3` over
//! `(x, weight, bias)`: the graph keeps its input and output only, where the composed ops
//! (mean, centre, square, mean, add, sqrt, divide, scale, shift) keep ~8 full-size
//! intermediates per norm. Its backward recomputes each row's mean and inverse deviation from
//! `x` and applies PyTorch's formulas: with `g = dy * weight` and `x_hat` the normalised row,
//! `dx = inv_std (g - mean(g) - x_hat mean(g x_hat))`, `dweight = sum_rows dy x_hat`,
//! `dbias = sum_rows dy` (the sums over rows in f64).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::has_avx2_fma;
use crate::ops::cpu_operands;

const LANES: usize = 16;

/// Normalises each `weight.len()`-long row of `x`; returns a new buffer (never zero-filled:
/// each row kernel writes every element of its row).
pub(crate) fn layer_norm_rows(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    if d == 0 {
        return vec![0f32; x.len()];
    }
    let len = x.len() / d * d;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    layer_norm_rows_into(x, weight, bias, eps, &mut out.spare_capacity_mut()[..len]);
    // SAFETY: `layer_norm_rows_into` wrote all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// [`layer_norm_rows`] into `out` (`x`'s whole rows), which it writes whole: it may be
/// uninitialised. `weight` is not empty.
pub(crate) fn layer_norm_rows_into<'o>(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    out: &'o mut [MaybeUninit<f32>],
) -> &'o mut [f32] {
    let d = weight.len();
    assert!(
        d > 0 && out.len() == x.len() / d * d && bias.len() == d,
        "layer_norm_rows_into: rows of {d} ({} / {} / {})",
        x.len(),
        bias.len(),
        out.len()
    );
    let simd = has_avx2_fma();
    out.par_chunks_mut(d)
        .zip(x.par_chunks_exact(d))
        .for_each(|(o, r)| {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AVX2 and FMA were detected on this CPU.
                return unsafe { row_avx2(o, r, weight, bias, eps) };
            }
            let _ = simd;
            row(o, r, weight, bias, eps)
        });
    // SAFETY: the row kernels wrote every element of every row.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// LayerNorm over the last dimension of `x` (`.. x D`, `weight` and `bias` of length `D`) as
/// one differentiable op on CPU f32; `None` when the tensors are not all CPU f32 (the caller
/// then composes candle ops).
pub(crate) fn layer_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> crate::Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(cpu_f32(x) && cpu_f32(weight) && cpu_f32(bias)) || weight.elem_count() == 0 {
        return Ok(None);
    }
    let op = LnOp { eps };
    Ok(Some(x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        op,
    )?))
}

struct LnOp {
    eps: f32,
}

/// Rows per backward task.
const ROWS: usize = 64;

impl CustomOp3 for LnOp {
    fn name(&self) -> &'static str {
        "segkit-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [x, w, b] = cpu_operands([(s1, l1), (s2, l2), (s3, l3)], "segkit layer_norm_train")?;
        let y = layer_norm_rows(x, w, b, self.eps);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let wv: Vec<f32> = w.detach().to_vec1()?;
        let xs: Vec<f32> = x.detach().flatten_all()?.to_vec1()?;
        let dys: Vec<f32> = dy.detach().flatten_all()?.to_vec1()?;
        let eps = self.eps;
        let mut dx = vec![0f32; xs.len()];
        let partial: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(ROWS * d)
            .zip(xs.par_chunks(ROWS * d).zip(dys.par_chunks(ROWS * d)))
            .map(|(dxc, (xc, gc))| {
                let (mut dw, mut db) = (vec![0f64; d], vec![0f64; d]);
                for ((o, r), g) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let n = d as f32;
                    let m = lane_sum(r, |v| v) / n;
                    let var = lane_sum(r, |v| (v - m) * (v - m)) / n;
                    let inv = 1.0 / (var + eps).sqrt();
                    let (mut sg, mut sgx) = (0f32, 0f32);
                    for ((&xv, &gv), &wv) in r.iter().zip(g).zip(&wv) {
                        let xh = (xv - m) * inv;
                        sg += gv * wv;
                        sgx += gv * wv * xh;
                    }
                    let (mg, mgx) = (sg / n, sgx / n);
                    for ((((o, &xv), &gv), &wv), (dw, db)) in o
                        .iter_mut()
                        .zip(r)
                        .zip(g)
                        .zip(&wv)
                        .zip(dw.iter_mut().zip(db.iter_mut()))
                    {
                        let xh = (xv - m) * inv;
                        *o = inv * (gv * wv - mg - xh * mgx);
                        *dw += (gv * xh) as f64;
                        *db += gv as f64;
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f64; d], vec![0f64; d]);
        for (pw, pb) in partial {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        let to = |v: Vec<f64>| {
            Tensor::from_vec(v.into_iter().map(|v| v as f32).collect::<Vec<_>>(), d, dev)
        };
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(to(dw)?),
            Some(to(db)?),
        ))
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(o: &mut [MaybeUninit<f32>], r: &[f32], w: &[f32], b: &[f32], eps: f32) {
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
fn row(o: &mut [MaybeUninit<f32>], r: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let d = r.len() as f32;
    let m = lane_sum(r, |v| v) / d;
    let var = lane_sum(r, |v| (v - m) * (v - m)) / d;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &x), &w), &b) in o.iter_mut().zip(r).zip(w).zip(b) {
        o.write((x - m) * inv * w + b);
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

    /// Values and the three gradients equal candle's composed ops (what `nn::LayerNorm` ran
    /// before), for widths below and above the lane count and more rows than one task.
    #[test]
    fn train_op_matches_composed_ops() -> crate::Result<()> {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        for (shape, d) in [((3usize, 70usize, 7usize), 7usize), ((2, 50, 96), 96)] {
            let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, shape, &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, d, &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, d, &dev)?)?;
            let up = Tensor::randn(0f32, 1.0, shape, &dev)?;
            let composed = {
                let mean = x.mean_keepdim(2)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(2)?;
                xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?
                    .broadcast_mul(&w)?
                    .broadcast_add(&b)?
            };
            let fused = layer_norm_train(&x, &w, &b, 1e-5)?.expect("CPU f32");
            let diff = |a: &Tensor, b: &Tensor| -> crate::Result<f32> {
                Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
            };
            assert!(diff(&fused, &composed)? < 1e-5);
            let ga = (composed * &up)?.sum_all()?.backward()?;
            let gb = (fused * &up)?.sum_all()?.backward()?;
            for (name, v) in [
                ("x", x.as_tensor()),
                ("w", w.as_tensor()),
                ("b", b.as_tensor()),
            ] {
                let (a, b) = (ga.get(v).expect("grad"), gb.get(v).expect("grad"));
                let scale = a.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                assert!(diff(a, b)? < 1e-4 * scale, "d={d} {name}: {}", diff(a, b)?);
            }
        }
        Ok(())
    }
}
