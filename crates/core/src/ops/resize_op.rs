//! The CPU bilinear resize as differentiable candle ops: [`Bilinear`] (one map, the training
//! path of [`super::resize_bilinear`]) and [`resize_bilinear_cat`] (several maps resized to one
//! size and concatenated along channels, written straight into the concatenation).
//!
//! Backward: the transpose of the forward pass, per plane: each output row's gradient spread
//! over the input columns with the same weights (`w0`, `w1` at `i0`, `i1`), then added to its
//! two input rows with their weights, output rows in order.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::resize::{
    alloc_output, bilinear_block, check_resize_args, linear_table, resize_bilinear, resize_planes,
    LinearTable,
};
use super::{cpu_operand, with_cpu_slices};
use crate::{Error, Result};

/// The CPU bilinear kernel as a differentiable candle op: the row / column tables and the
/// input's spatial size.
pub(super) struct Bilinear {
    pub(super) ty: LinearTable,
    pub(super) tx: LinearTable,
    pub(super) h: usize,
    pub(super) w: usize,
}

impl Bilinear {
    /// Resizes the contiguous planes of `src`.
    pub(super) fn forward(&self, src: &[f32]) -> Vec<f32> {
        let (oh, ow) = (self.ty.i0.len(), self.tx.i0.len());
        resize_planes(src, (self.h, self.w), (oh, ow), |plane, y0, block| {
            bilinear_block(plane, self.w, &self.ty, &self.tx, y0, block)
        })
    }

    /// The input gradient of one plane, the transpose of the forward pass: each output row's
    /// gradient spread over the input columns (`w0`, `w1` at `i0`, `i1`), then added to its two
    /// input rows with their weights; output rows in order.
    fn backward_plane(&self, dy: &[f32], dx: &mut [f32], row: &mut [f32]) {
        let (w, ow) = (self.w, self.tx.i0.len());
        for (y, g) in dy.chunks_exact(ow).enumerate() {
            row.iter_mut().for_each(|v| *v = 0.0);
            let tx = &self.tx;
            for ((((&gv, &i0), &i1), &w0), &w1) in
                g.iter().zip(&tx.i0).zip(&tx.i1).zip(&tx.w0).zip(&tx.w1)
            {
                row[i0] += w0 * gv;
                row[i1] += w1 * gv;
            }
            for (i, wy) in [
                (self.ty.i0[y], self.ty.w0[y]),
                (self.ty.i1[y], self.ty.w1[y]),
            ] {
                for (d, &v) in dx[i * w..(i + 1) * w].iter_mut().zip(row.iter()) {
                    *d += wy * v;
                }
            }
        }
    }
}

impl CustomOp1 for Bilinear {
    fn name(&self) -> &'static str {
        "segkit-resize-bilinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::cpu_operand(s, l, "segkit resize_bilinear")?;
        let mut dims = l.dims().to_vec();
        (dims[2], dims[3]) = (self.ty.i0.len(), self.tx.i0.len());
        Ok((CpuStorage::F32(self.forward(x)), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (hw, ohw) = (self.h * self.w, self.ty.i0.len() * self.tx.i0.len());
        let dx = super::with_cpu_slices([dy], "segkit resize_bilinear backward", |[dy]| {
            let mut dx = alloc_output(x.elem_count());
            dx.par_chunks_mut(hw).zip(dy.par_chunks(ohw)).for_each_init(
                || vec![0f32; self.w],
                |row, (d, g)| self.backward_plane(g, d, row),
            );
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Bilinear resize of each of `xs` (`N x C_i x H_i x W_i`, the same `N`) to `size` and their
/// concatenation along channels (`N x sum C_i x oh x ow`), equal to `Tensor::cat` of
/// [`resize_bilinear`]'s results.
///
/// On CPU (f32) the maps are resized straight into the concatenation; when gradients are
/// recorded that is one differentiable op whose saved input is the maps themselves (autograd
/// keeps neither the resized maps nor a second copy in the concatenation). Other devices and
/// dtypes resize and concatenate.
///
/// Errors if `xs` is empty, a map is not rank 4, the batch sizes differ, or a size is zero.
pub fn resize_bilinear_cat(
    xs: &[Tensor],
    size: (usize, usize),
    align_corners: bool,
) -> Result<Tensor> {
    let Some(first) = xs.first() else {
        return Err(Error::InvalidArgument(
            "resize_bilinear_cat: no maps to concatenate".into(),
        ));
    };
    let mut segs = Vec::with_capacity(xs.len());
    for x in xs {
        let (n, c, h, w) = check_resize_args(x, size, "resize_bilinear_cat")?;
        if n != first.dim(0)? {
            return Err(Error::shape(
                "resize_bilinear_cat map",
                first.dims(),
                x.dims(),
            ));
        }
        let op = Bilinear {
            ty: linear_table(h, size.0, align_corners),
            tx: linear_table(w, size.1, align_corners),
            h,
            w,
        };
        segs.push((c, op));
    }
    let cpu_f32 = xs
        .iter()
        .all(|x| x.device().is_cpu() && x.dtype() == DType::F32);
    let n = first.dim(0)?;
    if !cpu_f32 || n == 0 || segs.iter().any(|s| s.0 == 0) {
        let ys = xs
            .iter()
            .map(|x| resize_bilinear(x, size, align_corners))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Tensor::cat(&ys, 1)?);
    }
    // One packed input: image n's maps, flattened, one after the other.
    let flat = xs
        .iter()
        .map(|x| x.contiguous()?.reshape((n, ())))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let packed = Tensor::cat(&flat, 1)?;
    Ok(packed.apply_op1(ResizeCat { segs, size })?)
}

/// [`resize_bilinear_cat`] over a packed `N x sum (C_i H_i W_i)` input.
struct ResizeCat {
    /// Channels and resize of each map.
    segs: Vec<(usize, Bilinear)>,
    size: (usize, usize),
}

impl ResizeCat {
    /// For every output plane in order (image, then channel): its map's resize and the offset
    /// of its input plane in the packed input.
    fn planes(&self, n: usize) -> Vec<(&Bilinear, usize)> {
        let per_image: usize = self.segs.iter().map(|(c, b)| c * b.h * b.w).sum();
        let mut v = Vec::new();
        for i in 0..n {
            let mut off = i * per_image;
            for (c, b) in &self.segs {
                for _ in 0..*c {
                    v.push((b, off));
                    off += b.h * b.w;
                }
            }
        }
        v
    }
}

impl CustomOp1 for ResizeCat {
    fn name(&self) -> &'static str {
        "segkit-resize-bilinear-cat"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_operand(s, l, "segkit resize_bilinear_cat")?;
        let n = l.dims()[0];
        let (oh, ow) = self.size;
        let planes = self.planes(n);
        let mut out = alloc_output(planes.len() * oh * ow);
        out.par_chunks_mut(oh * ow)
            .zip(planes.par_iter())
            .for_each(|(dst, &(b, off))| {
                bilinear_block(&x[off..off + b.h * b.w], b.w, &b.ty, &b.tx, 0, dst)
            });
        let c: usize = self.segs.iter().map(|s| s.0).sum();
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let n = x.dim(0)?;
        let ohw = self.size.0 * self.size.1;
        let planes = self.planes(n);
        let dx = with_cpu_slices([dy], "segkit resize_bilinear_cat backward", |[dy]| {
            let mut dx = alloc_output(x.elem_count());
            // The packed input's planes in output-plane order, each borrowed mutably once.
            let mut rest: &mut [f32] = &mut dx;
            let mut parts = Vec::with_capacity(planes.len());
            for &(b, _) in &planes {
                let (p, r) = std::mem::take(&mut rest).split_at_mut(b.h * b.w);
                parts.push((b, p));
                rest = r;
            }
            parts.into_par_iter().zip(dy.par_chunks(ohw)).for_each_init(
                Vec::new,
                |row, ((b, d), g)| {
                    row.resize(b.w, 0.0);
                    b.backward_plane(g, d, row)
                },
            );
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
