//! A convolution over the channel concatenation of two maps, `conv2d(cat([a, b], 1), w)`,
//! differentiable without the concatenated map.
//!
//! Heads that fuse several maps (PSPNet's bottleneck over the backbone map and the pyramid,
//! 4096 channels at 64 x 128 for a Cityscapes crop) concatenate them and convolve: autograd
//! then keeps the concatenation (268 MB there) as the convolution's saved input until the
//! backward pass ends, and the backward pass builds its gradient before splitting it. This op
//! keeps `a` and `b` themselves (alive anyway): the forward pass concatenates them into a
//! buffer that lives only while the kernel runs, and the backward pass splits the work by input
//! channel, which is exact because every output of a convolution is a sum over input channels:
//! - `dL/da`, `dL/db`: the transposed convolution of `dy` with the rows of the transposed
//!   weight that belong to `a`'s (`b`'s) channels;
//! - `dL/dw[:, :Ca]`, `dL/dw[:, Ca:]`: the weight gradients of `a` and `b` alone, interleaved
//!   per output channel.
//!
//! Both run on the same kernels as [`super::conv2d`]'s backward pass.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::grad::{flipped_transpose, input_grad, weight_grad};
use super::{Activation, Geometry};
use crate::ops::{cpu_operands, with_cpu_slices};

/// `conv2d(cat([a, b], 1), w)` (groups 1, no bias or activation); `g.c` = `ca` + `b`'s
/// channels.
pub(super) struct Conv2dCatOp {
    pub(super) g: Geometry,
    pub(super) ca: usize,
}

impl Conv2dCatOp {
    /// The geometry of the convolution of `a` alone (`first`) or of `b` alone.
    fn part(&self, first: bool) -> Geometry {
        let c = if first { self.ca } else { self.g.c - self.ca };
        Geometry { c, ..self.g }
    }
}

/// `[a_n; b_n]` for every image `n`: the concatenation along channels.
fn concat(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let (la, lb) = (a.len() / n.max(1), b.len() / n.max(1));
    let mut x = vec![0f32; a.len() + b.len()];
    x.par_chunks_mut(la + lb)
        .zip(a.par_chunks(la.max(1)).zip(b.par_chunks(lb.max(1))))
        .for_each(|(dst, (sa, sb))| {
            dst[..la].copy_from_slice(sa);
            dst[la..].copy_from_slice(sb);
        });
    x
}

impl CustomOp3 for Conv2dCatOp {
    fn name(&self) -> &'static str {
        "segkit-conv2d-cat"
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
        let [a, b, w] = cpu_operands([(s1, l1), (s2, l2), (s3, l3)], "segkit conv2d_cat")?;
        let g = &self.g;
        let x = concat(a, b, g.n);
        let simd = super::act::Simd::detect();
        let out = super::run_kernel(&x, w, None, None, g, Activation::None, simd);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let (ga, gb) = (self.part(true), self.part(false));
        let dy = dy.detach().contiguous()?;
        let (da, db) = if a.track_op() || b.track_op() {
            let wt = with_cpu_slices([w], "segkit conv2d_cat backward", |[ws]| {
                Ok(flipped_transpose(ws, &g))
            })?;
            let wt = Tensor::from_vec(wt, (g.c, g.o, g.kh, g.kw), w.device())?;
            let grad = |t: &Tensor, gp: &Geometry, start: usize| -> candle_core::Result<_> {
                if !t.track_op() {
                    return Ok(None);
                }
                let wp = wt.narrow(0, start, gp.c)?;
                let d = input_grad(&dy, &wp, gp).map_err(candle_core::Error::wrap)?;
                Ok(Some(d))
            };
            (grad(a, &ga, 0)?, grad(b, &gb, self.ca)?)
        } else {
            (None, None)
        };
        let dw = if w.track_op() {
            let dw = with_cpu_slices([a, b, &dy], "segkit conv2d_cat backward", |[xa, xb, dys]| {
                let (wa, wb) = (weight_grad(xa, dys, &ga), weight_grad(xb, dys, &gb));
                let kk = g.kh * g.kw;
                let (ra, rb) = (ga.c * kk, gb.c * kk);
                let mut dw = vec![0f32; g.o * (ra + rb)];
                dw.par_chunks_mut(ra + rb)
                    .zip(wa.par_chunks(ra.max(1)).zip(wb.par_chunks(rb.max(1))))
                    .for_each(|(dst, (pa, pb))| {
                        dst[..ra].copy_from_slice(pa);
                        dst[ra..].copy_from_slice(pb);
                    });
                Ok(dw)
            })?;
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((da, db, dw))
    }
}
