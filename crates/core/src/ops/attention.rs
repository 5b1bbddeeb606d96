//! [`attention`]: multi-head scaled dot-product attention as one differentiable op, as
//! `torch.nn.functional.scaled_dot_product_attention` computes it per head (additive float
//! mask, scale `1 / sqrt(head dim)` unless given, dropout on the probabilities).
//!
//! The heads stay packed in the last dimension, as `torch.nn.MultiheadAttention` projects
//! them: `q: B x Lq x (H D)`, `k: B x Lk x (H D)`, `v: B x Lk x (H Dv)` -> `B x Lq x (H Dv)`.
//! Head `h` of a row is its columns `h D .. (h + 1) D`; no transposed copies are made.
//!
//! On CPU with f32 operands it is one candle `CustomOp3` over `(q, k, v)`: the forward pass
//! computes a block of 64 query rows at a time (`S = scale Q K^T + mask`, the row softmax,
//! `O = P V`, the products through the `gemm` crate with strided operands), blocks and heads
//! in parallel; the graph keeps `q`, `k`, `v` and the output only. The composed ops keep the
//! scores, the softmax's five intermediates and the dropout product, each `B x H x Lq x Lk`,
//! and their backward formulas add as many passes again. The backward pass recomputes each
//! block's probabilities and applies the standard formulas (FlashAttention's, with
//! `delta_i = sum_e dO_ie O_ie`): `dV = P'^T dO`, `dP' = dO V^T`,
//! `dS = P (dP' keep - delta)`, `dQ = scale dS K`, `dK = scale dS^T Q`, where `P' = P keep`.
//!
//! The mask and the dropout multiplier are constants of the op (no gradient flows to them);
//! a mask that records gradients, or a non-CPU / non-f32 operand, takes the composed candle
//! ops instead (same values up to rounding). A row whose every score is `-inf` gives NaN, as
//! PyTorch's softmax does.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::fastmath::{exp_approx, has_avx2_fma};
use crate::ops::{cpu_operands, with_cpu_slices};
use crate::{Error, Result};

/// Query rows per task.
const BLOCK: usize = 64;

/// The optional parts of an [`attention`] call.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionOptions<'a> {
    /// Additive mask, broadcastable (right-aligned, as PyTorch broadcasts) to
    /// `B x H x Lq x Lk`; `-inf` where a query may not attend.
    pub mask: Option<&'a Tensor>,
    /// Dropout on the probabilities as a multiplier of shape `B x H x Lq x Lk` (`0` for a
    /// dropped element, `1 / (1 - p)` for a kept one).
    pub keep: Option<&'a Tensor>,
    /// The factor of `Q K^T`; `None` is `1 / sqrt(D)` (DANet's position attention uses `1`).
    pub scale: Option<f64>,
}

/// Multi-head scaled dot-product attention; see the module docs.
///
/// `q: B x Lq x (H D)`, `k: B x Lk x (H D)`, `v: B x Lk x (H Dv)`, `heads = H` -> `B x Lq x
/// (H Dv)`.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// use segkit_core::ops::{attention, AttentionOptions};
/// let q = Tensor::randn(0f32, 1.0, (2, 5, 16), &Device::Cpu)?;
/// let kv = Tensor::randn(0f32, 1.0, (2, 7, 16), &Device::Cpu)?;
/// let o = attention(&q, &kv, &kv, 4, AttentionOptions::default())?;
/// assert_eq!(o.dims(), &[2, 5, 16]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    opts: AttentionOptions<'_>,
) -> Result<Tensor> {
    let AttentionOptions { mask, keep, scale } = opts;
    let mut dims = Dims::new(q, k, v, heads)?;
    if let Some(s) = scale {
        dims.scale = s as f32;
    }
    let full = [dims.b, heads, dims.lq, dims.lk];
    if let Some(m) = mask {
        broadcast_strides(m.dims(), &full).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "attention: mask of shape {:?} does not broadcast to {full:?}",
                m.dims()
            ))
        })?;
    }
    if let Some(kp) = keep {
        if kp.dims() != full {
            return Err(Error::shape(
                "attention dropout multiplier",
                &full,
                kp.dims(),
            ));
        }
    }
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let constant = |t: Option<&Tensor>| t.is_none_or(|t| !t.track_op());
    if !(cpu_f32(q) && cpu_f32(k) && cpu_f32(v) && constant(mask) && constant(keep))
        || dims.lq == 0
        || dims.lk == 0
    {
        return attention_fallback(q, k, v, heads, opts);
    }
    let mask = mask
        .map(|m| -> Result<Arc<Consts>> {
            let strides = broadcast_strides(m.dims(), &full).unwrap_or_default();
            let data = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(Arc::new(Consts { data, strides }))
        })
        .transpose()?;
    let keep = keep
        .map(|kp| -> Result<Arc<Consts>> {
            let data = kp.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let strides = [heads * dims.lq * dims.lk, dims.lq * dims.lk, dims.lk, 1];
            Ok(Arc::new(Consts { data, strides }))
        })
        .transpose()?;
    let op = AttnOp { dims, mask, keep };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// The composed candle ops (any device; gradients for the mask too); the reference path of
/// [`attention`]'s tests.
#[doc(hidden)]
pub fn attention_fallback(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    opts: AttentionOptions<'_>,
) -> Result<Tensor> {
    let AttentionOptions { mask, keep, scale } = opts;
    let Dims {
        b, lq, lk, d, dv, ..
    } = Dims::new(q, k, v, heads)?;
    let split = |t: &Tensor, l: usize, e: usize| -> Result<Tensor> {
        Ok(t.reshape((b, l, heads, e))?.transpose(1, 2)?.contiguous()?)
    };
    let (qh, kh, vh) = (split(q, lq, d)?, split(k, lk, d)?, split(v, lk, dv)?);
    let mut s = (qh.matmul(&kh.t()?)? * scale.unwrap_or((d as f64).powf(-0.5)))?;
    if let Some(m) = mask {
        s = s.broadcast_add(&m.to_dtype(s.dtype())?)?;
    }
    let mut p = candle_nn::ops::softmax(&s, D::Minus1)?;
    if let Some(kp) = keep {
        p = (p * kp.to_dtype(s.dtype())?)?;
    }
    let o = p.matmul(&vh)?;
    Ok(o.transpose(1, 2)?.reshape((b, lq, heads * dv))?)
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    d: usize,
    dv: usize,
    /// The factor of `Q K^T`.
    scale: f32,
}

impl Dims {
    fn new(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Self> {
        let (b, lq, c) = q.dims3().map_err(|_| rank3("q", q))?;
        let (bk, lk, ck) = k.dims3().map_err(|_| rank3("k", k))?;
        let (bv, lv, cv) = v.dims3().map_err(|_| rank3("v", v))?;
        if heads == 0 || !c.is_multiple_of(heads) || !cv.is_multiple_of(heads) {
            return Err(Error::InvalidArgument(format!(
                "attention: the widths of q ({c}) and v ({cv}) must be multiples of the {heads} \
                 heads"
            )));
        }
        if (bk, ck) != (b, c) {
            return Err(Error::shape("attention k", &[b, lk, c], k.dims()));
        }
        if (bv, lv) != (b, lk) {
            return Err(Error::shape("attention v", &[b, lk, cv], v.dims()));
        }
        Ok(Self {
            b,
            lq,
            lk,
            heads,
            d: c / heads,
            dv: cv / heads,
            scale: ((c / heads) as f32).powf(-0.5),
        })
    }

    fn c(&self) -> usize {
        self.heads * self.d
    }

    fn cv(&self) -> usize {
        self.heads * self.dv
    }
}

fn rank3(what: &str, t: &Tensor) -> Error {
    Error::InvalidArgument(format!(
        "attention: `{what}` must have rank 3 (B x L x heads * head dim), got shape {:?}",
        t.dims()
    ))
}

/// Element strides of a contiguous tensor of shape `dims` read as `full` (PyTorch's
/// right-aligned broadcasting: a missing or size-1 dimension repeats); `None` when it does not
/// broadcast.
fn broadcast_strides(dims: &[usize], full: &[usize; 4]) -> Option<[usize; 4]> {
    if dims.len() > 4 {
        return None;
    }
    let mut strides = [0usize; 4];
    let mut step = 1usize;
    for (i, &n) in dims.iter().enumerate().rev() {
        let f = full[4 - dims.len() + i];
        if n == f {
            strides[4 - dims.len() + i] = if n == 1 { 0 } else { step };
        } else if n != 1 {
            return None;
        }
        step *= n;
    }
    Some(strides)
}

/// A constant `B x H x Lq x Lk` operand (mask or dropout multiplier), read through strides.
#[derive(Debug)]
struct Consts {
    data: Vec<f32>,
    strides: [usize; 4],
}

impl Consts {
    /// Row `i` of head `(b, h)`: its elements with the step between them.
    fn row(&self, b: usize, h: usize, i: usize, lk: usize) -> (&[f32], usize) {
        let [sb, sh, si, sj] = self.strides;
        let start = b * sb + h * sh + i * si;
        let len = if sj == 0 { 1 } else { (lk - 1) * sj + 1 };
        (&self.data[start..start + len], sj)
    }
}

struct AttnOp {
    dims: Dims,
    mask: Option<Arc<Consts>>,
    keep: Option<Arc<Consts>>,
}

/// A raw pointer the tasks of one call write through, each to its own elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks that share one only write disjoint element sets (see each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst (m x n) = [dst +] beta lhs (m x k) rhs (k x n)`, strided operands, one thread.
///
/// # Safety
/// Every element addressed through the pointers and strides must be in bounds, and `dst`
/// must not overlap the operands or elements another thread touches.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
) {
    // SAFETY: the caller's contract (above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

impl AttnOp {
    /// The probabilities of query rows `i0 .. i0 + rows` of head `(b, h)` into `p`
    /// (`rows x Lk`); without the dropout multiplier.
    fn probs(
        &self,
        q: &[f32],
        k: &[f32],
        (b, h, i0, rows): (usize, usize, usize, usize),
        p: &mut [f32],
    ) {
        let Dims {
            lq, lk, d, scale, ..
        } = self.dims;
        let c = self.dims.c();
        // SAFETY: q rows `b lq + i0 ..` (row stride c, columns h d .. h d + d) and k rows
        // `b lk ..` (read transposed: element (e, j) at j c + e) are in bounds; `p` holds
        // rows x lk.
        unsafe {
            gemm_strided(
                (rows, lk, d),
                (p.as_mut_ptr(), lk, 1),
                false,
                (q.as_ptr().add((b * lq + i0) * c + h * d), c, 1),
                (k.as_ptr().add(b * lk * c + h * d), 1, c),
                scale,
            );
        }
        let simd = has_avx2_fma();
        for (i, row) in p.chunks_mut(lk).enumerate() {
            if let Some(m) = &self.mask {
                let (mr, step) = m.row(b, h, i0 + i, lk);
                if step == 0 {
                    row.iter_mut().for_each(|s| *s += mr[0]);
                } else {
                    row.iter_mut()
                        .zip(mr.iter().step_by(step))
                        .for_each(|(s, &m)| *s += m);
                }
            }
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AVX2 and FMA were detected on this CPU.
                unsafe { softmax_row_avx2(row) };
                continue;
            }
            let _ = simd;
            softmax_row::<false>(row);
        }
    }

    /// Multiplies `p`'s rows (query rows from `i0`) by the dropout multiplier, if any.
    fn apply_keep(&self, (b, h, i0): (usize, usize, usize), p: &mut [f32]) {
        let Some(kp) = &self.keep else { return };
        let lk = self.dims.lk;
        for (i, row) in p.chunks_mut(lk).enumerate() {
            let (kr, _) = kp.row(b, h, i0 + i, lk);
            row.iter_mut().zip(kr).for_each(|(p, &m)| *p *= m);
        }
    }

    /// The tasks of a call: `(b, h, i0, rows)` for every block of query rows.
    fn tasks(&self) -> Vec<(usize, usize, usize, usize)> {
        let Dims { b, heads, lq, .. } = self.dims;
        let mut t = Vec::with_capacity(b * heads * lq.div_ceil(BLOCK));
        for bi in 0..b {
            for h in 0..heads {
                for i0 in (0..lq).step_by(BLOCK) {
                    t.push((bi, h, i0, BLOCK.min(lq - i0)));
                }
            }
        }
        t
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(row: &mut [f32]) {
    softmax_row::<true>(row)
}

/// In-place softmax of one row; `-inf` scores give exact zeros, an all-`-inf` row NaN.
#[inline(always)]
fn softmax_row<const FMA: bool>(row: &mut [f32]) {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    if m == f32::NEG_INFINITY {
        row.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    }
    let mut lanes = [0f32; 16];
    for chunk in row.chunks_mut(16) {
        for (v, l) in chunk.iter_mut().zip(lanes.iter_mut()) {
            let e = exp_approx::<FMA>(*v - m);
            *v = if *v == f32::NEG_INFINITY { 0.0 } else { e };
            *l += *v;
        }
    }
    let inv = 1.0 / lanes.iter().sum::<f32>();
    row.iter_mut().for_each(|v| *v *= inv);
}

impl CustomOp3 for AttnOp {
    fn name(&self) -> &'static str {
        "segkit-attention"
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
        let [q, k, v] = cpu_operands([(s1, l1), (s2, l2), (s3, l3)], "segkit attention")?;
        let Dims { b, lq, lk, dv, .. } = self.dims;
        let cv = self.dims.cv();
        let mut out = vec![0f32; b * lq * cv];
        let dst = SendPtr(out.as_mut_ptr());
        self.tasks().into_par_iter().for_each(|(bi, h, i0, rows)| {
            let mut p = vec![0f32; rows * lk];
            self.probs(q, k, (bi, h, i0, rows), &mut p);
            self.apply_keep((bi, h, i0), &mut p);
            // SAFETY: this task alone writes output rows `bi lq + i0 .. + rows`, columns
            // `h dv .. h dv + dv` (row stride cv); v rows `bi lk ..` are in bounds.
            unsafe {
                gemm_strided(
                    (rows, dv, lk),
                    (dst.get().add((bi * lq + i0) * cv + h * dv), cv, 1),
                    false,
                    (p.as_ptr(), lk, 1),
                    (v.as_ptr().add(bi * lk * cv + h * dv), cv, 1),
                    1.0,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, lq, cv))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = with_cpu_slices(
            [q, k, v, res, dy],
            "segkit attention backward",
            |[q, k, v, o, dout]| Ok(self.backward(q, k, v, o, dout)),
        )?;
        let wrap = |g: Vec<f32>, t: &Tensor| Tensor::from_vec(g, t.shape(), t.device());
        Ok((Some(wrap(dq, q)?), Some(wrap(dk, k)?), Some(wrap(dv, v)?)))
    }
}

impl AttnOp {
    /// `(dq, dk, dv)` from the operands, the output `o` and its gradient `dout`.
    fn backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        o: &[f32],
        dout: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let Dims {
            b,
            lq,
            lk,
            heads,
            d,
            dv,
            scale,
        } = self.dims;
        let (c, cv) = (self.dims.c(), self.dims.cv());
        let mut dq = vec![0f32; q.len()];
        let mut dk = vec![0f32; k.len()];
        let mut dvv = vec![0f32; v.len()];
        let ptrs = (
            SendPtr(dq.as_mut_ptr()),
            SendPtr(dk.as_mut_ptr()),
            SendPtr(dvv.as_mut_ptr()),
        );
        let pairs: Vec<(usize, usize)> = (0..b)
            .flat_map(|bi| (0..heads).map(move |h| (bi, h)))
            .collect();
        pairs.into_par_iter().for_each(|(bi, h)| {
            let (dqp, dkp, dvp) = ptrs;
            let rows_max = BLOCK.min(lq);
            let mut p = vec![0f32; rows_max * lk];
            let mut dp = vec![0f32; rows_max * lk];
            for (blk, i0) in (0..lq).step_by(BLOCK).enumerate() {
                let rows = BLOCK.min(lq - i0);
                let (p, dp) = (&mut p[..rows * lk], &mut dp[..rows * lk]);
                self.probs(q, k, (bi, h, i0, rows), p);
                let dout_blk = dout[(bi * lq + i0) * cv + h * dv..].as_ptr();
                // SAFETY (all four products): the operands are the in-bounds rows of head
                // (bi, h); this task alone writes dv / dk rows `bi lk ..` at columns of head
                // h and dq rows `bi lq + i0 .. + rows` at columns of head h.
                unsafe {
                    // dP' = dO V^T (before the multiplier: P' = P keep).
                    gemm_strided(
                        (rows, lk, dv),
                        (dp.as_mut_ptr(), lk, 1),
                        false,
                        (dout_blk, cv, 1),
                        (v.as_ptr().add(bi * lk * cv + h * dv), 1, cv),
                        1.0,
                    );
                }
                for (i, (pr, dpr)) in p.chunks_mut(lk).zip(dp.chunks_mut(lk)).enumerate() {
                    let r = (bi * lq + i0 + i) * cv + h * dv;
                    let delta: f32 = dout[r..r + dv]
                        .iter()
                        .zip(&o[r..r + dv])
                        .map(|(a, b)| a * b)
                        .sum();
                    match &self.keep {
                        Some(kp) => {
                            let (kr, _) = kp.row(bi, h, i0 + i, lk);
                            for ((pv, g), &m) in pr.iter_mut().zip(dpr.iter_mut()).zip(kr) {
                                *g = *pv * (*g * m - delta);
                                *pv *= m;
                            }
                        }
                        None => pr
                            .iter()
                            .zip(dpr.iter_mut())
                            .for_each(|(&pv, g)| *g = pv * (*g - delta)),
                    }
                }
                unsafe {
                    // dV += P'^T dO
                    gemm_strided(
                        (lk, dv, rows),
                        (dvp.0.add(bi * lk * cv + h * dv), cv, 1),
                        blk > 0,
                        (p.as_ptr(), 1, lk),
                        (dout_blk, cv, 1),
                        1.0,
                    );
                    // dQ = scale dS K
                    gemm_strided(
                        (rows, d, lk),
                        (dqp.0.add((bi * lq + i0) * c + h * d), c, 1),
                        false,
                        (dp.as_ptr(), lk, 1),
                        (k.as_ptr().add(bi * lk * c + h * d), c, 1),
                        scale,
                    );
                    // dK += scale dS^T Q
                    gemm_strided(
                        (lk, d, rows),
                        (dkp.0.add(bi * lk * c + h * d), c, 1),
                        blk > 0,
                        (dp.as_ptr(), 1, lk),
                        (q.as_ptr().add((bi * lq + i0) * c + h * d), c, 1),
                        scale,
                    );
                }
            }
        });
        (dq, dk, dvv)
    }
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
