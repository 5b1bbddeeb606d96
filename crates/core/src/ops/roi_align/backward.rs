//! The differentiable CPU path of [`roi_align`](super::roi_align): a candle custom op whose
//! forward is the planar CPU kernel and whose backward scatters each bin's gradient onto the
//! bilinear taps it read, as torchvision's `roi_align_backward_kernel_impl` (gradient
//! `dy / count` times each tap's weight; the RoIs get no gradient). Taken for CPU tensors that
//! record gradients ([`Tensor::track_op`]).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{merged_axis, roi_align_planar};
use super::{check_args, parse_rois, Roi};
use crate::ops::resize::alloc_output;
use crate::Result;

/// RoIAlign over fixed RoIs as a custom op on the feature map.
struct RoiAlignOp {
    rois: Vec<Roi>,
    dims: (usize, usize, usize, usize),
    output_size: (usize, usize),
}

impl RoiAlignOp {
    fn forward(&self, src: &[f32]) -> Vec<f32> {
        let (_, c, h, w) = self.dims;
        let bins = self.output_size.0 * self.output_size.1;
        let mut out = alloc_output(self.rois.len() * c * bins);
        if !out.is_empty() {
            roi_align_planar(src, (c, h, w), &self.rois, self.output_size, &mut out);
        }
        out
    }

    /// `dL/dinput` from `dL/doutput` (`K x C x PH x PW`), in parallel over channel planes.
    fn backward(&self, dy: &[f32]) -> Vec<f32> {
        let (n, c, h, w) = self.dims;
        let (ph, pw) = self.output_size;
        let bins = ph * pw;
        // Per RoI, the merged (row, weight) and (column, weight) taps of every bin.
        let taps: Vec<_> = self
            .rois
            .par_iter()
            .map(|r| (merged_axis(&r.y, ph, h), merged_axis(&r.x, pw, w)))
            .collect();
        let mut by_image: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, r) in self.rois.iter().enumerate() {
            by_image[r.batch].push(i);
        }
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, d)| {
            let (b, ch) = (plane / c, plane % c);
            for &k in &by_image[b] {
                let ((oy, ty), (ox, tx)) = &taps[k];
                let g = &dy[(k * c + ch) * bins..(k * c + ch + 1) * bins];
                let count = self.rois[k].count;
                for py in 0..ph {
                    for px in 0..pw {
                        let gb = g[py * pw + px] / count;
                        if gb == 0.0 {
                            continue;
                        }
                        for &(y, wy) in &ty[oy[py]..oy[py + 1]] {
                            let row = &mut d[y * w..(y + 1) * w];
                            for &(x, wx) in &tx[ox[px]..ox[px + 1]] {
                                row[x] += gb * wy * wx;
                            }
                        }
                    }
                }
            }
        });
        dx
    }
}

impl CustomOp1 for RoiAlignOp {
    fn name(&self) -> &'static str {
        "segkit-roi-align"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("segkit roi_align: non-contiguous input")
        };
        let src = &s.as_slice::<f32>()?[a..b];
        let (_, c, _, _) = self.dims;
        let (ph, pw) = self.output_size;
        Ok((
            CpuStorage::F32(self.forward(src)),
            Shape::from((self.rois.len(), c, ph, pw)),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dy = dy
            .detach()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let dx = self.backward(&dy);
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// [`roi_align`](super::roi_align) on the CPU as one differentiable op (gradient to `input`
/// only). Any dtype is computed in f32 and cast back (the casts record their own gradients).
pub(super) fn roi_align_train(
    input: &Tensor,
    rois: &Tensor,
    output_size: (usize, usize),
    spatial_scale: f32,
    sampling_ratio: i32,
    aligned: bool,
) -> Result<Tensor> {
    let dims = {
        let (n, c, h, w, _) = check_args(input, rois, output_size)?;
        (n, c, h, w)
    };
    let rois = parse_rois(
        rois,
        dims.0,
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned,
    )?;
    let dt = input.dtype();
    let x = input.to_dtype(DType::F32)?.contiguous()?;
    let op = RoiAlignOp {
        rois,
        dims,
        output_size,
    };
    Ok(x.apply_op1(op)?.to_dtype(dt)?)
}
