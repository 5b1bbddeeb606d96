//! [`log_softmax_gather`]: `log_softmax(x, dim)` picked at one index per position — the core of
//! every cross-entropy loss — as one differentiable op.
//!
//! Composed from candle ops (`x - max`, `exp`, `sum`, `log`, `- lse`, `gather`) the graph keeps
//! three class-map-sized tensors besides the logits; at a segmentation loss's full resolution
//! (2 x 150 x 512 x 512 for ADE20K at batch 2: 300 MB each) they are the largest tensors of a
//! training step. This op keeps only its input (the logits, which the graph holds anyway) and
//! one `log-sum-exp` value per position; its backward pass recomputes the softmax:
//! `dx_c = dy (1[c = y] - exp(x_c - lse))`, as PyTorch's `log_softmax` + `gather` give.
//!
//! CPU f32 only runs the fused kernel (rayon over blocks of positions, f32 as PyTorch's CPU
//! kernel); other devices and dtypes take the composed ops (same values).
//!
//! # Shapes
//! `x`: `d_0 x .. x C x ..` (`C` at `dim`), `idx`: one class per position (`x`'s elements / C,
//! row-major over the other dims) -> `x`'s dims without `dim`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::{exp_approx, has_avx2_fma};
use crate::ops::cpu_operand;
use crate::{Error, Result};

/// Positions per task.
const BLOCK: usize = 512;

/// `log_softmax(x, dim)` at class `idx[p]` of every position `p`; see the module docs.
pub fn log_softmax_gather(x: &Tensor, dim: usize, idx: Vec<u32>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dim >= dims.len() {
        return Err(Error::InvalidArgument(format!(
            "log_softmax_gather: dim {dim} out of range for shape {dims:?}"
        )));
    }
    let c = dims[dim];
    let mut out_dims = dims.clone();
    out_dims.remove(dim);
    let positions: usize = out_dims.iter().product();
    if idx.len() != positions {
        return Err(Error::shape(
            "log_softmax_gather indices",
            &out_dims,
            &[idx.len()],
        ));
    }
    if let Some(&bad) = idx.iter().find(|&&i| i as usize >= c) {
        return Err(Error::InvalidArgument(format!(
            "log_softmax_gather: index {bad} out of range for {c} classes"
        )));
    }
    if !(x.device().is_cpu() && x.dtype() == DType::F32) || c == 0 {
        return composed(x, dim, idx, &out_dims);
    }
    let outer: usize = dims[..dim].iter().product();
    let inner: usize = dims[dim + 1..].iter().product();
    let op = LsmGather {
        outer,
        c,
        inner,
        idx: Arc::new(idx),
        lse: Arc::new(Mutex::new(Vec::new())),
    };
    Ok(x.contiguous()?.apply_op1(op)?.reshape(out_dims)?)
}

/// The composed-candle-op path (any device / dtype).
fn composed(x: &Tensor, dim: usize, idx: Vec<u32>, out_dims: &[usize]) -> Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let diff = x.broadcast_sub(&max)?;
    let lse = diff.exp()?.sum_keepdim(dim)?.log()?;
    let lp = diff.broadcast_sub(&lse)?;
    let mut ishape = x.dims().to_vec();
    ishape[dim] = 1;
    let idx = Tensor::from_vec(idx, ishape, x.device())?;
    Ok(lp.contiguous()?.gather(&idx, dim)?.reshape(out_dims)?)
}

struct LsmGather {
    outer: usize,
    c: usize,
    inner: usize,
    idx: Arc<Vec<u32>>,
    /// `max + log(sum exp(x - max))` per position, written by the forward pass.
    lse: Arc<Mutex<Vec<f32>>>,
}

impl LsmGather {
    /// Blocks of positions: `(outer index, first inner index, length)`.
    fn blocks(&self) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        for o in 0..self.outer {
            let mut i = 0;
            while i < self.inner {
                let len = BLOCK.min(self.inner - i);
                v.push((o, i, len));
                i += len;
            }
        }
        v
    }

    /// `lse` of the positions `i0..i0 + len` of outer index `o`.
    fn block_lse(&self, x: &[f32], o: usize, i0: usize, len: usize) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA were detected on this CPU.
            return unsafe { self.block_lse_avx2(x, o, i0, len) };
        }
        self.block_lse_impl::<false>(x, o, i0, len)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_lse_avx2(&self, x: &[f32], o: usize, i0: usize, len: usize) -> Vec<f32> {
        self.block_lse_impl::<true>(x, o, i0, len)
    }

    /// The class loops run over `len` contiguous positions, so they vectorise; the exponential
    /// is `fastmath::exp_approx` (~2 ulp; its argument is never positive here).
    #[inline(always)]
    fn block_lse_impl<const FMA: bool>(
        &self,
        x: &[f32],
        o: usize,
        i0: usize,
        len: usize,
    ) -> Vec<f32> {
        let base = o * self.c * self.inner + i0;
        let mut m = x[base..base + len].to_vec();
        for k in 1..self.c {
            let row = &x[base + k * self.inner..base + k * self.inner + len];
            for (m, &v) in m.iter_mut().zip(row) {
                *m = m.max(v);
            }
        }
        let mut s = vec![0f32; len];
        for k in 0..self.c {
            let row = &x[base + k * self.inner..base + k * self.inner + len];
            for ((s, &v), &m) in s.iter_mut().zip(row).zip(&m) {
                *s += exp_approx::<FMA>(v - m);
            }
        }
        m.iter().zip(&s).map(|(&m, &s)| m + s.ln()).collect()
    }

    /// One `(outer, class)` row of the input gradient: `d = dy (1[y = k] - exp(x - lse))`.
    fn grad_row(&self, r: usize, d: &mut [f32], xr: &[f32], dy: &[f32], lse: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA were detected on this CPU.
            return unsafe { self.grad_row_avx2(r, d, xr, dy, lse) };
        }
        self.grad_row_impl::<false>(r, d, xr, dy, lse)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn grad_row_avx2(&self, r: usize, d: &mut [f32], xr: &[f32], dy: &[f32], lse: &[f32]) {
        self.grad_row_impl::<true>(r, d, xr, dy, lse)
    }

    #[inline(always)]
    fn grad_row_impl<const FMA: bool>(
        &self,
        r: usize,
        d: &mut [f32],
        xr: &[f32],
        dy: &[f32],
        lse: &[f32],
    ) {
        let (o, k) = (r / self.c, r % self.c);
        let p0 = o * self.inner;
        let (dy, lse, idx) = (
            &dy[p0..p0 + self.inner],
            &lse[p0..p0 + self.inner],
            &self.idx[p0..p0 + self.inner],
        );
        for ((((d, &x), &g), &l), &y) in d.iter_mut().zip(xr).zip(dy).zip(lse).zip(idx) {
            let onehot = if y as usize == k { 1.0 } else { 0.0 };
            // x <= lse up to rounding; the clamp keeps exp_approx in its domain.
            let e = exp_approx::<FMA>((x - l).min(0.0));
            *d = g * (onehot - e);
        }
    }
}

impl CustomOp1 for LsmGather {
    fn name(&self) -> &'static str {
        "segkit-log-softmax-gather"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_operand(s, l, "segkit log_softmax_gather")?;
        let blocks = self.blocks();
        let lse: Vec<Vec<f32>> = blocks
            .par_iter()
            .map(|&(o, i0, len)| self.block_lse(x, o, i0, len))
            .collect();
        let lse: Vec<f32> = lse.into_iter().flatten().collect();
        let out: Vec<f32> = (0..self.outer * self.inner)
            .map(|p| {
                let (o, i) = (p / self.inner, p % self.inner);
                let k = self.idx[p] as usize;
                x[(o * self.c + k) * self.inner + i] - lse[p]
            })
            .collect();
        *self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("log_softmax_gather: poisoned".into()))? = lse;
        Ok((CpuStorage::F32(out), Shape::from(self.outer * self.inner)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let lse = self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("log_softmax_gather: poisoned".into()))?
            .clone();
        let dy: Vec<f32> = dy.detach().flatten_all()?.to_vec1()?;
        let x = x.detach().contiguous()?;
        let (s, l) = x.storage_and_layout();
        let candle_core::Storage::Cpu(cs) = &*s else {
            candle_core::bail!("segkit log_softmax_gather backward: CPU tensors only")
        };
        let xs = cpu_operand(cs, l, "segkit log_softmax_gather")?;
        let inner = self.inner;
        let mut dx = vec![0f32; xs.len()];
        // One task per (outer, class) row of `inner` values.
        dx.par_chunks_mut(inner)
            .zip(xs.par_chunks(inner))
            .enumerate()
            .for_each(|(r, (d, xr))| self.grad_row(r, d, xr, &dy, &lse));
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and gradients equal the composed ops', for the class dim in the middle and last.
    #[test]
    fn matches_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, dim) in [
            ((2usize, 7usize, 5usize, 3usize), 1usize),
            ((2, 7, 5, 3), 3),
        ] {
            let x0 = (Tensor::randn(0f32, 3.0, shape, &dev)? + 10.0)?;
            let c = x0.dim(dim)?;
            let n = x0.elem_count() / c;
            let idx: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % c) as u32).collect();
            let (a, b) = (Var::from_tensor(&x0)?, Var::from_tensor(&x0.copy()?)?);
            let ya = log_softmax_gather(a.as_tensor(), dim, idx.clone())?;
            let mut od = x0.dims().to_vec();
            od.remove(dim);
            let yb = composed(b.as_tensor(), dim, idx, &od)?;
            assert_eq!(ya.dims(), yb.dims());
            let w = Tensor::randn(0f32, 1.0, ya.shape(), &dev)?;
            let d = (&ya - &yb)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(d < 1e-5, "dim {dim}: value {d}");
            let ga = (&ya * &w)?.sum_all()?.backward()?;
            let gb = (&yb * &w)?.sum_all()?.backward()?;
            let (ga, gb) = (
                ga.get(a.as_tensor()).expect("grad"),
                gb.get(b.as_tensor()).expect("grad"),
            );
            let d = (ga - gb)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(d < 1e-5, "dim {dim}: grad {d}");
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_indices() -> Result<()> {
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu)?;
        assert!(log_softmax_gather(&x, 1, vec![0; 7]).is_err());
        assert!(log_softmax_gather(&x, 1, vec![3; 8]).is_err());
        assert!(log_softmax_gather(&x, 3, vec![0; 8]).is_err());
        Ok(())
    }
}
