//! [`resized_log_softmax_gather`]: `log_softmax(resize_bilinear(x, size), 1)` picked at one
//! class per output pixel, as one differentiable op that never builds the resized map.
//!
//! mmseg scores a decode head by resizing its `N x C x h x w` logits to the label size
//! (`BaseDecodeHead.loss_by_feat`: `resize(seg_logits, size=seg_label.shape[2:],
//! mode='bilinear', align_corners=self.align_corners)`) and taking the cross-entropy there. At
//! ADE20K's 512 x 512 crops, batch 2, the resized logits are 2 x 150 x 512 x 512 (315 MB), and
//! composed ops keep them, and their gradient, for every scored output (PSPNet two, DANet
//! four). This op computes the same numbers row by row: for each output row it interpolates the
//! two input rows it needs (per class, horizontally once per input row, as
//! [`resize_bilinear`](super::resize_bilinear)'s kernel), takes the log-sum-exp over the
//! classes per pixel and picks the target class. It keeps only its input and one log-sum-exp
//! per output pixel. The backward pass recomputes the interpolated logits row by row, forms
//! `dy (1[c = y] - softmax_c)` and scatters it to the four input taps, band by band of input
//! rows (each band into its own buffer, added in band order: the result does not depend on the
//! thread count).
//!
//! The forward values are bit-identical to [`resize_bilinear`](super::resize_bilinear) (the
//! kernel, which matches PyTorch's `upsample_bilinear2d`) followed by
//! [`log_softmax_gather`](super::log_softmax_gather); the gradient equals the composed ops'
//! up to the order of the sums.
//!
//! CPU f32 runs the fused kernel; other devices and dtypes take the composed ops (same
//! values). An input already at `size` is passed to [`log_softmax_gather`](super::log_softmax_gather)
//! unresized, as mmseg skips the resize.
//!
//! # Shapes
//! `x`: `N x C x h x w`, `size = (H, W)`, `idx`: `N * H * W` classes (row-major over
//! `N x H x W`) -> `N x H x W`.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_core::ops::{log_softmax_gather, resize_bilinear, resized_log_softmax_gather};
//!
//! let x = Tensor::randn(0f32, 1.0, (1, 3, 4, 4), &Device::Cpu)?;
//! let idx: Vec<u32> = (0..64).map(|i| i % 3).collect();
//! let fused = resized_log_softmax_gather(&x, (8, 8), false, idx.clone())?;
//! let composed = log_softmax_gather(&resize_bilinear(&x, (8, 8), false)?, 1, idx)?;
//! assert_eq!(fused.dims(), [1, 8, 8]);
//! assert_eq!(fused.flatten_all()?.to_vec1::<f32>()?, composed.flatten_all()?.to_vec1::<f32>()?);
//! # Ok::<(), segkit_core::Error>(())
//! ```

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::{exp_approx, has_avx2_fma};
use super::resize::{check_resize_args, hinterp, linear_table, target_tasks, LinearTable};
use super::{cpu_operand, log_softmax_gather, resize_bilinear, with_cpu_slices};
use crate::{Error, Result};

/// Upper bound, in f32 elements, of one backward task's vertical accumulator.
const BAND_BUDGET: usize = 1 << 22;

/// `log_softmax(resize_bilinear(x, size, align_corners), 1)` at class `idx[p]` of every output
/// pixel `p`; see the module docs.
pub fn resized_log_softmax_gather(
    x: &Tensor,
    size: (usize, usize),
    align_corners: bool,
    idx: Vec<u32>,
) -> Result<Tensor> {
    let (n, c, h, w) = check_resize_args(x, size, "resized_log_softmax_gather")?;
    let (oh, ow) = size;
    if idx.len() != n * oh * ow {
        return Err(Error::shape(
            "resized_log_softmax_gather indices",
            &[n, oh, ow],
            &[idx.len()],
        ));
    }
    if let Some(&bad) = idx.iter().find(|&&i| i as usize >= c) {
        return Err(Error::InvalidArgument(format!(
            "resized_log_softmax_gather: index {bad} out of range for {c} classes"
        )));
    }
    if (h, w) == size {
        return log_softmax_gather(x, 1, idx);
    }
    if !(x.device().is_cpu() && x.dtype() == DType::F32) || n * c == 0 {
        return composed(x, size, align_corners, idx);
    }
    let op = ResizedLsm {
        n,
        c,
        h,
        w,
        oh,
        ow,
        ty: linear_table(h, oh, align_corners),
        tx: linear_table(w, ow, align_corners),
        idx,
        lse: Mutex::new(Vec::new()),
    };
    Ok(x.contiguous()?.apply_op1(op)?.reshape((n, oh, ow))?)
}

/// The composed-op path: [`resize_bilinear`] (differentiable when `x` records gradients), then
/// [`log_softmax_gather`].
fn composed(
    x: &Tensor,
    size: (usize, usize),
    align_corners: bool,
    idx: Vec<u32>,
) -> Result<Tensor> {
    log_softmax_gather(&resize_bilinear(x, size, align_corners)?, 1, idx)
}

struct ResizedLsm {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    ty: LinearTable,
    tx: LinearTable,
    idx: Vec<u32>,
    /// Log-sum-exp of every output pixel, written by the forward pass.
    lse: Mutex<Vec<f32>>,
}

/// The horizontally interpolated rows (`C x ow`) of up to two input rows of one image.
struct RowCache {
    rows: [usize; 2],
    data: [Vec<f32>; 2],
}

impl RowCache {
    fn new(len: usize) -> Self {
        Self {
            rows: [usize::MAX; 2],
            data: [vec![0.0; len], vec![0.0; len]],
        }
    }

    /// Makes input rows `a` and `b` of `image` (`C x h x w`) present; returns their slots.
    fn load(&mut self, op: &ResizedLsm, image: &[f32], a: usize, b: usize) -> (usize, usize) {
        let (h, w, ow) = (op.h, op.w, op.ow);
        for need in [a, b] {
            if self.rows[0] != need && self.rows[1] != need {
                // Replace the slot that is not the other needed row.
                let slot = usize::from(self.rows[0] == a || self.rows[0] == b);
                for (k, dst) in self.data[slot].chunks_exact_mut(ow).enumerate() {
                    hinterp(&image[(k * h + need) * w..][..w], &op.tx, dst);
                }
                self.rows[slot] = need;
            }
        }
        let slot = |r: usize| usize::from(self.rows[0] != r);
        (slot(a), slot(b))
    }

    /// The interpolated logits of output row `oy` (`C x ow`) into `v`.
    fn row(&mut self, op: &ResizedLsm, image: &[f32], oy: usize, v: &mut [f32]) {
        let (a, b) = (op.ty.i0[oy], op.ty.i1[oy]);
        let (sa, sb) = self.load(op, image, a, b);
        let (w0, w1) = (op.ty.w0[oy], op.ty.w1[oy]);
        for ((o, &va), &vb) in v.iter_mut().zip(&self.data[sa]).zip(&self.data[sb]) {
            *o = va * w0 + vb * w1;
        }
    }
}

impl ResizedLsm {
    /// Output rows `oy0..` of image `ni` (as many as `out` holds): the picked log-probabilities
    /// into `out`, the log-sum-exps into `lse`.
    fn forward_rows(&self, x: &[f32], ni: usize, oy0: usize, out: &mut [f32], lse: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA were detected on this CPU.
            return unsafe { self.forward_rows_avx2(x, ni, oy0, out, lse) };
        }
        self.forward_rows_impl::<false>(x, ni, oy0, out, lse)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_rows_avx2(
        &self,
        x: &[f32],
        ni: usize,
        oy0: usize,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        self.forward_rows_impl::<true>(x, ni, oy0, out, lse)
    }

    #[inline(always)]
    fn forward_rows_impl<const FMA: bool>(
        &self,
        x: &[f32],
        ni: usize,
        oy0: usize,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        let (c, ow) = (self.c, self.ow);
        let image = &x[ni * c * self.h * self.w..][..c * self.h * self.w];
        let mut cache = RowCache::new(c * ow);
        let mut v = vec![0f32; c * ow];
        for (r, (orow, lrow)) in out
            .chunks_exact_mut(ow)
            .zip(lse.chunks_exact_mut(ow))
            .enumerate()
        {
            let oy = oy0 + r;
            cache.row(self, image, oy, &mut v);
            row_lse::<FMA>(&v, ow, lrow);
            let idx = &self.idx[(ni * self.oh + oy) * ow..][..ow];
            for (j, ((o, &l), &k)) in orow.iter_mut().zip(lrow.iter()).zip(idx).enumerate() {
                *o = v[k as usize * ow + j] - l;
            }
        }
    }

    /// The input rows `base..base + rows` of image `ni`'s gradient (`C x (rows + 1) x w`; the
    /// last row is the one the band shares with the next), from the output rows whose first
    /// tap lies in the band.
    fn band_grad(
        &self,
        x: &[f32],
        dy: &[f32],
        lse: &[f32],
        ni: usize,
        base: usize,
        rows: usize,
    ) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA were detected on this CPU.
            return unsafe { self.band_grad_avx2(x, dy, lse, ni, base, rows) };
        }
        self.band_grad_impl::<false>(x, dy, lse, ni, base, rows)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn band_grad_avx2(
        &self,
        x: &[f32],
        dy: &[f32],
        lse: &[f32],
        ni: usize,
        base: usize,
        rows: usize,
    ) -> Vec<f32> {
        self.band_grad_impl::<true>(x, dy, lse, ni, base, rows)
    }

    #[inline(always)]
    fn band_grad_impl<const FMA: bool>(
        &self,
        x: &[f32],
        dy: &[f32],
        lse: &[f32],
        ni: usize,
        base: usize,
        rows: usize,
    ) -> Vec<f32> {
        let (c, h, w, ow) = (self.c, self.h, self.w, self.ow);
        let span = rows + 1;
        let image = &x[ni * c * h * w..][..c * h * w];
        // Output rows whose first tap `i0` lies in `base..base + rows` (i0 is non-decreasing).
        let first = self.ty.i0.partition_point(|&a| a < base);
        let last = self.ty.i0.partition_point(|&a| a < base + rows);
        // Vertical pass into `C x span x ow`, then the horizontal scatter into `C x span x w`.
        let mut vacc = vec![0f32; c * span * ow];
        let mut cache = RowCache::new(c * ow);
        let mut g = vec![0f32; c * ow];
        for oy in first..last {
            cache.row(self, image, oy, &mut g);
            let p0 = (ni * self.oh + oy) * ow;
            let (dyr, lr, ir) = (&dy[p0..p0 + ow], &lse[p0..p0 + ow], &self.idx[p0..p0 + ow]);
            let (ra, rb) = (self.ty.i0[oy] - base, self.ty.i1[oy] - base);
            let (wa, wb) = (self.ty.w0[oy], self.ty.w1[oy]);
            for (k, gk) in g.chunks_exact_mut(ow).enumerate() {
                for (((gv, &d), &l), &y) in gk.iter_mut().zip(dyr).zip(lr).zip(ir) {
                    let onehot = if y as usize == k { 1.0 } else { 0.0 };
                    // v <= lse up to rounding; the clamp keeps exp_approx in its domain.
                    *gv = d * (onehot - exp_approx::<FMA>((*gv - l).min(0.0)));
                }
                let va = &mut vacc[(k * span + ra) * ow..][..ow];
                for (a, &gv) in va.iter_mut().zip(gk.iter()) {
                    *a += gv * wa;
                }
                let vb = &mut vacc[(k * span + rb) * ow..][..ow];
                for (b, &gv) in vb.iter_mut().zip(gk.iter()) {
                    *b += gv * wb;
                }
            }
        }
        let mut acc = vec![0f32; c * span * w];
        for (src, dst) in vacc.chunks_exact(ow).zip(acc.chunks_exact_mut(w)) {
            let t = &self.tx;
            for ((((&s, &i0), &i1), &w0), &w1) in
                src.iter().zip(&t.i0).zip(&t.i1).zip(&t.w0).zip(&t.w1)
            {
                dst[i0] += s * w0;
                dst[i1] += s * w1;
            }
        }
        acc
    }

    /// Input rows per backward band: enough bands for the threads, each band's accumulator
    /// within [`BAND_BUDGET`].
    fn band_rows(&self) -> usize {
        let bands = target_tasks().div_ceil(self.n.max(1)).clamp(1, self.h);
        let by_tasks = self.h.div_ceil(bands);
        let by_memory = (BAND_BUDGET / (self.c * self.ow.max(self.w)).max(1)).saturating_sub(1);
        by_tasks.min(by_memory).max(1)
    }
}

/// Log-sum-exp over the classes of each of the `ow` columns of `v` (`C x ow`), in the order of
/// [`log_softmax_gather`]'s kernel (max, then the sum of `exp(v - max)` class by class).
#[inline(always)]
fn row_lse<const FMA: bool>(v: &[f32], ow: usize, lse: &mut [f32]) {
    let mut m = v[..ow].to_vec();
    for row in v.chunks_exact(ow).skip(1) {
        for (m, &x) in m.iter_mut().zip(row) {
            *m = m.max(x);
        }
    }
    let mut s = vec![0f32; ow];
    for row in v.chunks_exact(ow) {
        for ((s, &x), &m) in s.iter_mut().zip(row).zip(&m) {
            *s += exp_approx::<FMA>(x - m);
        }
    }
    for ((l, &m), &s) in lse.iter_mut().zip(&m).zip(&s) {
        *l = m + s.ln();
    }
}

impl CustomOp1 for ResizedLsm {
    fn name(&self) -> &'static str {
        "segkit-resized-log-softmax-gather"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_operand(s, l, "segkit resized_log_softmax_gather")?;
        let plane = self.oh * self.ow;
        let mut out = vec![0f32; self.n * plane];
        let mut lse = vec![0f32; self.n * plane];
        let blocks = target_tasks().div_ceil(self.n.max(1)).clamp(1, self.oh);
        let rows = self.oh.div_ceil(blocks);
        out.par_chunks_mut(plane)
            .zip(lse.par_chunks_mut(plane))
            .enumerate()
            .for_each(|(ni, (o, l))| {
                o.par_chunks_mut(rows * self.ow)
                    .zip(l.par_chunks_mut(rows * self.ow))
                    .enumerate()
                    .for_each(|(b, (o, l))| self.forward_rows(x, ni, b * rows, o, l));
            });
        *self.lse.lock().map_err(|_| {
            candle_core::Error::Msg("resized_log_softmax_gather: poisoned".into())
        })? = lse;
        Ok((CpuStorage::F32(out), Shape::from(self.n * plane)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let lse = self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("resized_log_softmax_gather: poisoned".into()))?;
        let (c, h, w) = (self.c, self.h, self.w);
        let rows = self.band_rows();
        let bands: Vec<(usize, usize)> = (0..self.n)
            .flat_map(|ni| (0..h).step_by(rows).map(move |b| (ni, b)))
            .collect();
        let mut dx = vec![0f32; self.n * c * h * w];
        with_cpu_slices([x, dy], "segkit resized_log_softmax_gather", |[xs, dys]| {
            let parts: Vec<Vec<f32>> = bands
                .par_iter()
                .map(|&(ni, base)| self.band_grad(xs, dys, &lse, ni, base, rows.min(h - base)))
                .collect();
            // Added in band order, so the sums do not depend on scheduling.
            for (&(ni, base), acc) in bands.iter().zip(&parts) {
                let span = rows.min(h - base) + 1;
                for k in 0..c {
                    for r in 0..span.min(h - base) {
                        let dst = &mut dx[((ni * c + k) * h + base + r) * w..][..w];
                        let src = &acc[(k * span + r) * w..][..w];
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d += s;
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
#[path = "resized_log_softmax_tests.rs"]
mod tests;
