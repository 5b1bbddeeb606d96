//! The differentiable CPU convolution: segkit's forward kernels wrapped in a candle
//! `CustomOp2` whose backward pass also runs on segkit's kernels.
//!
//! For `y = conv2d(x, w)` (stride `s`, padding `p`, dilation `d`, groups `G`):
//! - `dL/dx` is a transposed convolution, computed as an ordinary stride-1 convolution (so it
//!   takes the Winograd / im2col kernels) of `dy` zero-upsampled by `s` (plus PyTorch's
//!   `output_padding` rows and columns at the end, the remainder of the strided sweep), with
//!   the kernel flipped in both spatial axes and its in/out channels swapped per group,
//!   padding `d (k - 1) - p` (a negative value crops instead) and dilation `d`;
//! - `dL/dw[o, c, i, j] = sum_{n, y, x} dy[n, o, y, x] * x_pad[n, c, y s + i d, x s + j d]`,
//!   per image a GEMM `dy_n (O x Ho Wo) * im2col(x_n)^T`, built one bounded tile of output
//!   rows at a time. Images run in parallel, each into its own buffer, and the per-image
//!   gradients are summed in image order, so the result does not depend on the thread count
//!   or on scheduling (training resumes reproduce uninterrupted runs bit for bit).
//!
//! The bias and the activation are separate candle ops (with their own backward passes).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm_conv::im2col;
use super::{conv2d, Activation, Conv2dParams, Geometry};
use crate::ops::{cpu_operand, with_cpu_slices};

/// Target size of one im2col tile of the weight gradient, in f32 elements.
const COL_BUDGET: usize = 1 << 19;

/// `conv2d(x, w)` without bias or activation, differentiable in `x` and `w`.
pub(super) struct Conv2dOp {
    pub(super) g: Geometry,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "segkit-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_operand(s1, l1, "segkit conv2d")?;
        let w = cpu_operand(s2, l2, "segkit conv2d")?;
        let g = &self.g;
        let out = super::run_kernel(
            x,
            w,
            None,
            None,
            g,
            Activation::None,
            super::act::Simd::detect(),
        );
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        conv_backward(x, w, dy, &self.g)
    }
}

/// The gradients of `conv2d(x, w)` (geometry `g`) from the upstream gradient `dy`: `None` for
/// an operand that records no gradient.
pub(super) fn conv_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &Geometry,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    // A constant operand (the input image, a frozen weight) gets no gradient: candle never
    // reads it, so it is not computed.
    let (want_dx, want_dw) = (x.track_op(), w.track_op());
    let dy = dy.detach().contiguous()?;
    let dx = if want_dx {
        let wt = with_cpu_slices([w], "segkit conv2d backward", |[ws]| {
            Ok(flipped_transpose(ws, g))
        })?;
        let wt = Tensor::from_vec(wt, (g.c, g.o / g.groups, g.kh, g.kw), w.device())?;
        Some(input_grad(&dy, &wt, g).map_err(candle_core::Error::wrap)?)
    } else {
        None
    };
    let dw = if want_dw {
        let dw = with_cpu_slices([x, &dy], "segkit conv2d backward", |[xs, dys]| {
            Ok(weight_grad(xs, dys, g))
        })?;
        Some(Tensor::from_vec(dw, w.shape(), w.device())?)
    } else {
        None
    };
    Ok((dx, dw))
}

/// The transposed-convolution weight of `w` (`O x C/G x kh x kw`): taps flipped in both
/// spatial axes, in / out channels swapped within each group, `wt[gi*cg + c, o', i, j] =
/// w[gi*og + o', c, kh-1-i, kw-1-j]` (`C x O/G x kh x kw`), in one parallel pass.
pub(super) fn flipped_transpose(w: &[f32], g: &Geometry) -> Vec<f32> {
    let (cg, og, kk) = (g.c / g.groups, g.o / g.groups, g.kh * g.kw);
    let mut wt = vec![0f32; g.c * og * kk];
    wt.par_chunks_mut(og * kk)
        .enumerate()
        .for_each(|(row, dst)| {
            let (gi, c) = (row / cg, row % cg);
            for (o, taps) in dst.chunks_exact_mut(kk).enumerate() {
                let src = &w[((gi * og + o) * cg + c) * kk..][..kk];
                for (t, &v) in taps.iter_mut().zip(src.iter().rev()) {
                    *t = v;
                }
            }
        });
    wt
}

/// `dL/dx`: the transposed convolution of `dy` with `wt` ([`flipped_transpose`]), run as a
/// stride-1 convolution.
pub(super) fn input_grad(dy: &Tensor, wt: &Tensor, g: &Geometry) -> crate::Result<Tensor> {
    let span_h = g.dilation * (g.kh - 1);
    let span_w = g.dilation * (g.kw - 1);
    // Rows the strided forward sweep never reached (PyTorch's output_padding).
    let rem_h = (g.h + 2 * g.padding - span_h - 1) % g.stride;
    let rem_w = (g.w + 2 * g.padding - span_w - 1) % g.stride;
    let up = if g.stride == 1 {
        dy.clone()
    } else {
        zero_upsample(dy, g, rem_h, rem_w)?
    };
    // Padding d(k-1) - p; the convolution takes one symmetric padding, so pad by the larger
    // of the two axes' needs and crop what is too much (also when d(k-1) < p).
    let qh = span_h as isize - g.padding as isize;
    let qw = span_w as isize - g.padding as isize;
    let q = qh.max(qw).max(0) as usize;
    let p = Conv2dParams {
        stride: 1,
        padding: q,
        dilation: g.dilation,
        groups: g.groups,
    };
    let dx = conv2d(&up, wt, None, p, Activation::None)?;
    let (_, _, hh, ww) = dx.dims4()?;
    let top = (q as isize - qh) as usize;
    let left = (q as isize - qw) as usize;
    let dx = if top == 0 && left == 0 && hh == g.h && ww == g.w {
        dx
    } else {
        dx.narrow(2, top, g.h)?.narrow(3, left, g.w)?.contiguous()?
    };
    Ok(dx)
}

/// `dy` with `s - 1` zeros between its rows and columns and `rem` zeros after the last.
fn zero_upsample(dy: &Tensor, g: &Geometry, rem_h: usize, rem_w: usize) -> crate::Result<Tensor> {
    let s = g.stride;
    let hu = (g.ho - 1) * s + 1 + rem_h;
    let wu = (g.wo - 1) * s + 1 + rem_w;
    let src = dy.flatten_all()?.to_vec1::<f32>()?;
    let planes = g.n * g.o;
    let mut out = vec![0f32; planes * hu * wu];
    out.par_chunks_mut(hu * wu)
        .zip(src.par_chunks(g.ho * g.wo))
        .for_each(|(dst, plane)| {
            for (y, row) in plane.chunks_exact(g.wo).enumerate() {
                let drow = &mut dst[y * s * wu..][..wu];
                for (x, &v) in row.iter().enumerate() {
                    drow[x * s] = v;
                }
            }
        });
    Ok(Tensor::from_vec(out, (g.n, g.o, hu, wu), dy.device())?)
}

/// `dL/dw` (`O x C/G x kh x kw`, row-major) from contiguous `x` and `dy`: Winograd's
/// transposed algorithm where the forward takes Winograd and the input is deep
/// (`winograd_grad`), the implicit GEMM over padded planes for other stride-1 kernels larger
/// than 1x1 on AVX2 + FMA (`wgrad_direct`), else [`weight_grad_im2col`].
pub(super) fn weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    if super::winograd_grad::applies(g) {
        return super::winograd_grad::weight_grad_winograd(x, dy, g);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let simd = super::act::Simd::detect();
        if super::wgrad_direct::applies(g, simd) {
            return super::wgrad_direct::weight_grad_direct(x, dy, g, simd);
        }
    }
    weight_grad_im2col(x, dy, g)
}

/// `dL/dw` as per-image im2col GEMMs, summed in image order.
pub(super) fn weight_grad_im2col(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (cg, og) = (g.c / g.groups, g.o / g.groups);
    let k = cg * g.kh * g.kw;
    let (hw, p_out) = (g.h * g.w, g.ho * g.wo);
    let wlen = g.o * k;
    // A 1x1, stride-1, unpadded convolution's im2col matrix is its input: no copy, one GEMM
    // per image.
    let pointwise = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.padding == 0;
    let rows = if pointwise {
        g.ho.max(1)
    } else {
        (COL_BUDGET / (k * g.wo).max(1)).clamp(1, g.ho.max(1))
    };
    let per_image: Vec<Vec<f32>> = (0..g.n)
        .into_par_iter()
        .map(|n| {
            let mut dw = vec![0f32; wlen];
            let mut col = vec![0f32; if pointwise { 0 } else { k * rows * g.wo }];
            for gi in 0..g.groups {
                let xg = &x[(n * g.c + gi * cg) * hw..][..cg * hw];
                let dyg = &dy[(n * g.o + gi * og) * p_out..][..og * p_out];
                let dwg = &mut dw[gi * og * k..][..og * k];
                for r0 in (0..g.ho).step_by(rows) {
                    let r1 = (r0 + rows).min(g.ho);
                    let pt = (r1 - r0) * g.wo;
                    // rhs = col^T (pt x k): element (l, kk) at col[kk * pt + l], or for a
                    // pointwise conv at xg[kk * hw + r0 * wo + l].
                    let (rhs, rhs_cs) = if pointwise {
                        (&xg[r0 * g.wo..], hw)
                    } else {
                        im2col(xg, &mut col[..k * pt], r0, r1, g);
                        (&col[..], pt)
                    };
                    // SAFETY: dwg is og x k row-major; lhs is the og x pt block of dyg starting
                    // at column r0 * wo (rows p_out apart); rhs is pt x k with element (l, kk)
                    // at rhs[kk * rhs_cs + l]; every index lies inside its slice.
                    unsafe {
                        gemm::gemm(
                            og,
                            k,
                            pt,
                            dwg.as_mut_ptr(),
                            1,
                            k as isize,
                            true,
                            dyg[r0 * g.wo..].as_ptr(),
                            1,
                            p_out as isize,
                            rhs.as_ptr(),
                            rhs_cs as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; wlen];
    for part in &per_image {
        for (a, b) in dw.iter_mut().zip(part) {
            *a += *b;
        }
    }
    dw
}
