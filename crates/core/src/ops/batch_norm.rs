//! BatchNorm with batch statistics (training) and an optional ReLU, as one differentiable op.
//!
//! candle-nn's `BatchNorm::forward_train` composes ~8 tensor ops (transpose + contiguous copy,
//! subtract mean, square, divide by the deviation, scale, shift, transpose back, then the
//! activation and the next layer's contiguous copy), and autograd keeps every one of their
//! full-size results alive until the loss is dropped: 6-8 activation-sized tensors per norm.
//! [`batch_norm_train`] is a single candle `CustomOp3` over `(x, weight, bias)`, so the graph
//! keeps only its input and its output — what PyTorch's autograd saves for `BatchNorm2d` +
//! in-place `ReLU`. Its backward pass recomputes `x_hat` from `x` and the saved per-channel
//! mean and inverse deviation:
//!
//! - `g = dy * [y > 0]` (ReLU) or `dy`;
//! - `d_bias[c] = sum g`, `d_weight[c] = sum g x_hat`;
//! - `dx = weight invstd (g - d_bias / M - x_hat d_weight / M)`, `M = N H W`.
//!
//! The running statistics are updated as PyTorch does (`r = (1 - momentum) r + momentum s`,
//! the variance unbiased), in place in the layer's running-statistics variables. Sums are
//! accumulated in f64 per channel in a fixed order, so results do not depend on the thread
//! count. Other devices, dtypes and activations take candle-nn's composed ops.
//!
//! # Shapes
//! `N x C x ...` (rank >= 2) -> same.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, ModuleT, Shape, Tensor, Var};
use candle_nn::BatchNorm;
use rayon::prelude::*;

use super::fastmath::has_avx2_fma;
use super::{activate, Activation};
use crate::ops::cpu_operand;
use crate::{Error, Result};

/// `act(batch_norm(x))` with batch statistics, updating `bn`'s running statistics; see the
/// module docs. `bn` must have an affine weight and bias.
pub fn batch_norm_train(x: &Tensor, bn: &BatchNorm, act: Activation) -> Result<Tensor> {
    batch_norm_impl(x, bn, None, act)
}

/// `act(batch_norm(x) + residual)` with batch statistics (a residual block's last norm, its
/// shortcut add and ReLU) as one op: the graph keeps `x`, `residual` and the output, not the
/// normalised map nor the sum (PyTorch's in-place `out += identity; relu_(out)` saves the
/// same). Running statistics as [`batch_norm_train`].
pub fn batch_norm_add_train(
    x: &Tensor,
    bn: &BatchNorm,
    residual: &Tensor,
    act: Activation,
) -> Result<Tensor> {
    if residual.dims() != x.dims() {
        return Err(Error::shape(
            "BatchNorm residual",
            x.dims(),
            residual.dims(),
        ));
    }
    batch_norm_impl(x, bn, Some(residual), act)
}

fn batch_norm_impl(
    x: &Tensor,
    bn: &BatchNorm,
    residual: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    crate::runtime::configure_cpu_threads();
    let Some((weight, bias)) = bn.weight_and_bias() else {
        return Err(Error::InvalidArgument(
            "batch_norm_train: the BatchNorm has no affine weight and bias".into(),
        ));
    };
    let c = bn.running_mean().elem_count();
    if x.rank() < 2 || x.dim(1)? != c {
        return Err(Error::shape(
            "BatchNorm input (N x C x ...)",
            &[1, c],
            x.dims(),
        ));
    }
    let fused = x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.dtype() == DType::F32
        && residual.is_none_or(|r| r.dtype() == DType::F32)
        && matches!(act, Activation::None | Activation::Relu);
    let m = x.elem_count() / c.max(1);
    if !fused || m < 2 {
        let y = bn.forward_t(x, true)?;
        let y = match residual {
            Some(r) => (y + r)?,
            None => y,
        };
        return match act {
            Activation::Relu => relu_torch(&y),
            _ => activate(&y, act),
        };
    }
    let n = x.dim(0)?;
    let relu = act == Activation::Relu;
    let op = BnOp::new(n, c, m / n.max(1), bn.eps(), relu, residual.is_some());
    let shared = op.stats_handle();
    let op: Arc<Box<dyn CustomOp3 + Send + Sync>> = Arc::new(Box::new(op));
    let x = x.contiguous()?;
    let y = match residual {
        // (x, [weight; bias], residual): a CustomOp3 has three operands.
        Some(r) => x.apply_op3_arc(&Tensor::cat(&[weight, bias], 0)?, &r.contiguous()?, op)?,
        None => x.apply_op3_arc(&weight.contiguous()?, &bias.contiguous()?, op)?,
    };
    update_running(bn, &shared, m)?;
    Ok(y)
}

/// ReLU whose gradient is PyTorch's (`threshold_backward`: 0 where the output is 0, also at
/// an input of exactly 0; candle's `relu` passes the gradient there), so that the composed path
/// and the fused kernel agree where zero-initialised norms (`zero_init_residual`) make exact
/// zeros common.
fn relu_torch(x: &Tensor) -> Result<Tensor> {
    let mask = x.gt(0f64)?.to_dtype(x.dtype())?.detach();
    Ok(x.mul(&mask)?)
}

/// `r = (1 - momentum) r + momentum s` for the mean and the unbiased variance, from the
/// statistics a forward pass left in `slot` (none: nothing to update).
pub(super) fn update_running(bn: &BatchNorm, slot: &Mutex<Option<Stats>>, m: usize) -> Result<()> {
    let stats = slot
        .lock()
        .map_err(|_| Error::InvalidArgument("batch_norm_train: poisoned stats".into()))?
        .clone();
    let Some(s) = stats else {
        return Ok(());
    };
    let mom = bn.momentum();
    let unbias = m as f64 / (m as f64 - 1.0);
    let upd = |r: &Tensor, batch: Vec<f64>| -> Result<()> {
        let dt = r.dtype();
        let old: Vec<f64> = r.to_dtype(DType::F64)?.to_vec1()?;
        let new: Vec<f64> = old
            .iter()
            .zip(batch)
            .map(|(o, b)| (1.0 - mom) * o + mom * b)
            .collect();
        let t = Tensor::from_vec(new, r.shape(), r.device())?.to_dtype(dt)?;
        Var::from_tensor(r)?.set(&t)?;
        Ok(())
    };
    upd(bn.running_mean(), s.mean.clone())?;
    upd(bn.running_var(), s.var.iter().map(|v| v * unbias).collect())
}

/// Per-channel batch statistics of one forward pass.
#[derive(Debug, Clone)]
pub(super) struct Stats {
    mean: Vec<f64>,
    /// Biased variance.
    var: Vec<f64>,
    invstd: Vec<f32>,
}

pub(super) struct BnOp {
    n: usize,
    c: usize,
    plane: usize,
    eps: f64,
    relu: bool,
    /// Operands `(x, [weight; bias], residual)` instead of `(x, weight, bias)`.
    residual: bool,
    stats: Arc<Mutex<Option<Stats>>>,
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
fn with_data<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cs) = &*s else {
        candle_core::bail!("segkit batch_norm_train: CPU tensors only")
    };
    f(cpu_operand(cs, l, "segkit batch_norm_train")?)
}

impl BnOp {
    /// Per channel: the planes `x[n, c]` for every `n`.
    fn planes<'a>(&self, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (plane, stride) = (self.plane, self.c * self.plane);
        (0..self.n).map(move |n| &x[n * stride + c * plane..n * stride + (c + 1) * plane])
    }

    fn stats(&self, x: &[f32]) -> Stats {
        let m = (self.n * self.plane) as f64;
        let (mean, var): (Vec<f64>, Vec<f64>) = (0..self.c)
            .into_par_iter()
            .map(|c| {
                let s: f64 = self.planes(x, c).map(sum_f64).sum();
                let mu = s / m;
                let v: f64 = self.planes(x, c).map(|p| sq_dev_f64(p, mu)).sum();
                (mu, v / m)
            })
            .unzip();
        let invstd = var
            .iter()
            .map(|v| (1.0 / (v + self.eps).sqrt()) as f32)
            .collect();
        Stats { mean, var, invstd }
    }
}

/// Independent partial sums per reduction (two 512-bit registers of f64),
/// so that the loops vectorise; the lanes are added in order at the end.
const LANES: usize = 16;

/// `sum p` and `sum (p - mu)^2` in f64 (see [`LANES`]).
fn sum_f64(p: &[f32]) -> f64 {
    lanes_sum(p, |v| v as f64)
}

fn sq_dev_f64(p: &[f32], mu: f64) -> f64 {
    lanes_sum(p, |v| {
        let d = v as f64 - mu;
        d * d
    })
}

/// `sum f(v)` over `p` in [`LANES`] independent f64 accumulators, under AVX2 where the CPU has
/// it (the same operations in the same order either way, so the result does not depend on it).
#[inline(always)]
pub(super) fn lanes_sum(p: &[f32], f: impl Fn(f32) -> f64 + Copy) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 was detected on this CPU.
        return unsafe { lanes_sum_avx2(p, f) };
    }
    lanes_sum_impl(p, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn lanes_sum_avx2(p: &[f32], f: impl Fn(f32) -> f64 + Copy) -> f64 {
    lanes_sum_impl(p, f)
}

#[inline(always)]
fn lanes_sum_impl(p: &[f32], f: impl Fn(f32) -> f64 + Copy) -> f64 {
    let mut acc = [0f64; LANES];
    let mut blocks = p.chunks_exact(LANES);
    for b in &mut blocks {
        for (a, &v) in acc.iter_mut().zip(b) {
            *a += f(v);
        }
    }
    let tail: f64 = blocks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f64>() + tail
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        "segkit-batch-norm-train"
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
        let x = cpu_operand(s1, l1, "segkit batch_norm_train")?;
        let (w, b, r) = if self.residual {
            let wb = cpu_operand(s2, l2, "segkit batch_norm_train")?;
            (
                &wb[..self.c],
                &wb[self.c..],
                Some(cpu_operand(s3, l3, "segkit batch_norm_train")?),
            )
        } else {
            (
                cpu_operand(s2, l2, "segkit batch_norm_train")?,
                cpu_operand(s3, l3, "segkit batch_norm_train")?,
                None,
            )
        };
        let y = self.forward_slices(x, w, b, r)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b_or_residual: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let st = self.saved_stats()?;
        let mut wv: Vec<f32> = w.detach().to_vec1()?;
        wv.truncate(self.c);
        let c = self.c;
        let (dx, dr, dw, db) = with_data(&x.detach(), |xs| {
            with_data(&dy.detach(), |dys| {
                with_data(&res.detach(), |ys| {
                    Ok(self.backward_slices(xs, dys, ys, &wv, &st))
                })
            })
        })?;
        let dev = x.device();
        let dx = Tensor::from_vec(dx, x.shape(), dev)?;
        let to = |v: Vec<f64>| -> candle_core::Result<Tensor> {
            Tensor::from_vec(v.into_iter().map(|v| v as f32).collect::<Vec<_>>(), c, dev)
        };
        if self.residual {
            let dr = match dr {
                Some(dr) => Tensor::from_vec(dr, x.shape(), dev)?,
                None => dy.detach(),
            };
            let dwb = Tensor::cat(&[to(dw)?, to(db)?], 0)?;
            return Ok((Some(dx), Some(dwb), Some(dr)));
        }
        Ok((Some(dx), Some(to(dw)?), Some(to(db)?)))
    }
}

/// The input gradient, the residual's (with a residual and a ReLU), and the per-channel
/// `(sum g x_hat, sum g)` (weight and bias gradients) of one BatchNorm backward pass.
pub(super) type BnGrads = (Vec<f32>, Option<Vec<f32>>, Vec<f64>, Vec<f64>);

impl BnOp {
    /// The op for an `n x c x plane` input (with a residual operand or not), with a fresh
    /// statistics slot.
    pub(super) fn new(
        n: usize,
        c: usize,
        plane: usize,
        eps: f64,
        relu: bool,
        residual: bool,
    ) -> Self {
        let stats = Arc::new(Mutex::new(None));
        Self {
            n,
            c,
            plane,
            eps,
            relu,
            residual,
            stats,
        }
    }

    /// The shared slot the forward pass writes its statistics to.
    pub(super) fn stats_handle(&self) -> Arc<Mutex<Option<Stats>>> {
        self.stats.clone()
    }

    /// The statistics of the last forward pass.
    pub(super) fn saved_stats(&self) -> candle_core::Result<Stats> {
        self.stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch_norm_train: poisoned stats".into()))?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("batch_norm_train: no forward".into()))
    }

    /// `act(batch_norm(x) (+ r))` with batch statistics, which it keeps for the backward pass.
    pub(super) fn forward_slices(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        r: Option<&[f32]>,
    ) -> candle_core::Result<Vec<f32>> {
        let st = self.stats(x);
        let (c, plane, relu) = (self.c, self.plane, self.relu);
        let y = super::resize::alloc_filled(x.len(), plane, |i, yo| {
            let ch = i % c;
            let s = w[ch] * st.invstd[ch];
            let t = b[ch] - st.mean[ch] as f32 * s;
            let ri = r.map(|r| &r[i * plane..(i + 1) * plane]);
            fwd_plane(yo, &x[i * plane..(i + 1) * plane], ri, s, t, relu);
        });
        *self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch_norm_train: poisoned stats".into()))? =
            Some(st);
        Ok(y)
    }

    /// The backward pass from the input `xs`, the upstream gradient `dys`, the output `ys`,
    /// the weight `wv` and the forward pass's statistics (see the module docs).
    pub(super) fn backward_slices(
        &self,
        xs: &[f32],
        dys: &[f32],
        ys: &[f32],
        wv: &[f32],
        st: &Stats,
    ) -> BnGrads {
        let (c, plane) = (self.c, self.plane);
        let m = (self.n * plane) as f64;
        // Per channel: sum g and sum g x_hat.
        let (db, dw): (Vec<f64>, Vec<f64>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mu, is) = (st.mean[ch] as f32, st.invstd[ch]);
                let (mut sg, mut sgx) = (0f64, 0f64);
                for n in 0..self.n {
                    let o = (n * c + ch) * plane;
                    let (xp, gp, yp) = (&xs[o..o + plane], &dys[o..o + plane], &ys[o..o + plane]);
                    let (a, bb) = self.channel_sums(xp, gp, yp, mu, is);
                    sg += a;
                    sgx += bb;
                }
                (sg, sgx)
            })
            .unzip();
        let dx = super::resize::alloc_filled(xs.len(), plane, |i, out| {
            let ch = i % c;
            let o = i * plane;
            let (mu, is) = (st.mean[ch] as f32, st.invstd[ch]);
            let k = wv[ch] * is;
            let (mg, mgx) = ((db[ch] / m) as f32, (dw[ch] / m) as f32);
            let (xp, gp, yp) = (&xs[o..o + plane], &dys[o..o + plane], &ys[o..o + plane]);
            bwd_plane(out, (xp, gp, yp), (mu, is, k, mg, mgx), self.relu);
        });
        // d residual = g, the upstream gradient through the activation, masked here in one
        // pass (no mask tensor, no zeros).
        let dr = (self.residual && self.relu).then(|| {
            super::resize::alloc_filled(xs.len(), plane, |i, out| {
                let o = i * plane;
                relu_mask(out, &dys[o..o + plane], &ys[o..o + plane]);
            })
        });
        (dx, dr, dw, db)
    }
}

impl BnOp {
    /// `(sum g, sum g x_hat)` over one plane, `g` masked by the ReLU, in f64 lanes (see
    /// [`LANES`]).
    fn channel_sums(&self, x: &[f32], g: &[f32], y: &[f32], mu: f32, is: f32) -> (f64, f64) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: AVX2 was detected on this CPU.
            return unsafe { channel_sums_avx2(x, g, y, mu, is, self.relu) };
        }
        channel_sums_impl(x, g, y, mu, is, self.relu)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn channel_sums_avx2(
    x: &[f32],
    g: &[f32],
    y: &[f32],
    mu: f32,
    is: f32,
    relu: bool,
) -> (f64, f64) {
    channel_sums_impl(x, g, y, mu, is, relu)
}

#[inline(always)]
fn channel_sums_impl(x: &[f32], g: &[f32], y: &[f32], mu: f32, is: f32, relu: bool) -> (f64, f64) {
    let term = |xv: f32, gv: f32, yv: f32| {
        let gv = if relu && yv <= 0.0 { 0.0 } else { gv };
        (gv as f64, (gv * (xv - mu) * is) as f64)
    };
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    let n = x.len().min(g.len()).min(y.len());
    let full = n / LANES * LANES;
    for i in (0..full).step_by(LANES) {
        let (xb, gb, yb) = (&x[i..i + LANES], &g[i..i + LANES], &y[i..i + LANES]);
        for l in 0..LANES {
            let (p, q) = term(xb[l], gb[l], yb[l]);
            a[l] += p;
            b[l] += q;
        }
    }
    let (mut ta, mut tb) = (0f64, 0f64);
    for i in full..n {
        let (p, q) = term(x[i], g[i], y[i]);
        ta += p;
        tb += q;
    }
    (a.iter().sum::<f64>() + ta, b.iter().sum::<f64>() + tb)
}

/// One plane of the forward pass: `act(x s + t (+ r))`. The loops are vectorised under AVX2
/// (same operations, no contraction into FMA: bit-identical to the portable build).
fn fwd_plane(y: &mut [f32], x: &[f32], r: Option<&[f32]>, s: f32, t: f32, relu: bool) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 was detected on this CPU.
        return unsafe { fwd_plane_avx2(y, x, r, s, t, relu) };
    }
    fwd_plane_impl(y, x, r, s, t, relu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_plane_avx2(y: &mut [f32], x: &[f32], r: Option<&[f32]>, s: f32, t: f32, relu: bool) {
    fwd_plane_impl(y, x, r, s, t, relu)
}

#[inline(always)]
fn fwd_plane_impl(y: &mut [f32], x: &[f32], r: Option<&[f32]>, s: f32, t: f32, relu: bool) {
    match r {
        Some(r) => {
            for ((o, &v), &rv) in y.iter_mut().zip(x).zip(r) {
                let z = v * s + t + rv;
                *o = if relu { z.max(0.0) } else { z };
            }
        }
        None => {
            for (o, &v) in y.iter_mut().zip(x) {
                let z = v * s + t;
                *o = if relu { z.max(0.0) } else { z };
            }
        }
    }
}

/// One plane of the input gradient: `k (g - mean g - x_hat mean(g x_hat))`, `g` masked by the
/// ReLU; `(x, dy, y)` planes and `(mean, invstd, k, mean g, mean g x_hat)`.
fn bwd_plane(
    out: &mut [f32],
    p: (&[f32], &[f32], &[f32]),
    c: (f32, f32, f32, f32, f32),
    relu: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 was detected on this CPU.
        return unsafe { bwd_plane_avx2(out, p, c, relu) };
    }
    bwd_plane_impl(out, p, c, relu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_plane_avx2(
    out: &mut [f32],
    p: (&[f32], &[f32], &[f32]),
    c: (f32, f32, f32, f32, f32),
    relu: bool,
) {
    bwd_plane_impl(out, p, c, relu)
}

#[inline(always)]
fn bwd_plane_impl(
    out: &mut [f32],
    (x, dy, y): (&[f32], &[f32], &[f32]),
    (mu, is, k, mg, mgx): (f32, f32, f32, f32, f32),
    relu: bool,
) {
    for (((o, &xv), &gv), &yv) in out.iter_mut().zip(x).zip(dy).zip(y) {
        let g = if relu && yv <= 0.0 { 0.0 } else { gv };
        let xh = (xv - mu) * is;
        *o = k * (g - mg - xh * mgx);
    }
}

/// `out = g` where `y > 0`, else 0: the gradient through a ReLU from its output `y`.
fn relu_mask(out: &mut [f32], g: &[f32], y: &[f32]) {
    for ((o, &gv), &yv) in out.iter_mut().zip(g).zip(y) {
        *o = if yv > 0.0 { gv } else { 0.0 };
    }
}

#[cfg(test)]
#[path = "batch_norm_tests.rs"]
mod tests;
