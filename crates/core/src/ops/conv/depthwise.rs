//! Direct kernel for depthwise convolutions (`groups == C`, any channel multiplier).
//!
//! One rayon task per output plane. Stride 1 (the dilated depthwise convs of segmentation
//! heads) copies the plane into a zero-padded buffer and accumulates blocks of 32 outputs over
//! all taps in registers; other strides accumulate each output row in L1 as a sum of shifted,
//! strided input rows scaled by one tap each.

use rayon::prelude::*;

use super::act::{bias_act, Simd};
use super::im2col::with_scratch;
use super::kernel::OutPtr;
use super::{Activation, Geometry};

/// First output column `wo` with `wo * s + off >= 0`, and one past the last with
/// `wo * s + off < w`, clamped to `[0, wo_len]`.
#[inline]
pub(super) fn valid_range(off: isize, s: usize, w: usize, wo_len: usize) -> (usize, usize) {
    let s = s as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let hi = if (w as isize) <= off {
        0
    } else {
        (w as isize - off + s - 1) / s
    };
    let lo = (lo as usize).min(wo_len);
    let hi = (hi as usize).min(wo_len);
    (lo, hi.max(lo))
}

/// Accumulates one output plane `out` (`ho x wo`, pre-filled with the bias) from one input
/// plane `x` (`h x w`) and its `kh x kw` taps `w`, for any stride.
#[inline(always)]
fn plane<const FMA: bool>(x: &[f32], taps: &[f32], out: &mut [f32], g: &Geometry) {
    let (s, p, d) = (g.stride, g.padding as isize, g.dilation);
    for (ho, row) in out.chunks_exact_mut(g.wo).enumerate() {
        for i in 0..g.kh {
            let hi = (ho * s + i * d) as isize - p;
            if hi < 0 || hi >= g.h as isize {
                continue;
            }
            let in_row = &x[hi as usize * g.w..][..g.w];
            for j in 0..g.kw {
                let t = taps[i * g.kw + j];
                let off = (j * d) as isize - p;
                let (lo, hi) = valid_range(off, s, g.w, g.wo);
                if lo >= hi {
                    continue;
                }
                let dst = &mut row[lo..hi];
                let start = (lo * s) as isize + off;
                if s == 1 {
                    let src = &in_row[start as usize..][..dst.len()];
                    for (o, &v) in dst.iter_mut().zip(src) {
                        *o = if FMA { t.mul_add(v, *o) } else { t * v + *o };
                    }
                } else {
                    let src = &in_row[start as usize..];
                    for (k, o) in dst.iter_mut().enumerate() {
                        let v = src[k * s];
                        *o = if FMA { t.mul_add(v, *o) } else { t * v + *o };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(x: &[f32], taps: &[f32], out: &mut [f32], g: &Geometry) {
    plane::<true>(x, taps, out, g)
}

/// Output columns per register block of the stride-1 kernel.
const WB: usize = 32;

/// Stride-1 plane from a zero-padded copy `pad` (`hp x wp`, input at row/column `padding`):
/// each block of [`WB`] outputs is accumulated over all taps in registers and stored once.
#[inline(always)]
fn plane_s1<const FMA: bool>(
    pad: &[f32],
    wp: usize,
    taps: &[f32],
    b: f32,
    out: &mut [f32],
    g: &Geometry,
) {
    let d = g.dilation;
    for (ho, row) in out.chunks_exact_mut(g.wo).enumerate() {
        for c0 in (0..g.wo).step_by(WB) {
            let mut acc = [b; WB];
            for i in 0..g.kh {
                let prow = &pad[(ho + i * d) * wp + c0..];
                for j in 0..g.kw {
                    let t = taps[i * g.kw + j];
                    for (a, &v) in acc.iter_mut().zip(&prow[j * d..j * d + WB]) {
                        *a = if FMA { t.mul_add(v, *a) } else { t * v + *a };
                    }
                }
            }
            let n = WB.min(g.wo - c0);
            row[c0..c0 + n].copy_from_slice(&acc[..n]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_s1_avx2(
    pad: &[f32],
    wp: usize,
    taps: &[f32],
    b: f32,
    out: &mut [f32],
    g: &Geometry,
) {
    plane_s1::<true>(pad, wp, taps, b, out, g)
}

/// Depthwise conv over contiguous NCHW `x` and `O x 1 x kh x kw` `w`, with `O = C * mult`.
pub(super) fn depthwise(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
    act: Activation,
    simd: Simd,
) -> Vec<f32> {
    let (hw, plane_out, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let mult = g.o / g.c;
    let len = g.n * g.o * plane_out;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let optr = OutPtr(out.as_mut_ptr());
    let avx2 = simd.avx2();
    // Stride 1 reads a zero-padded copy of the plane, wide enough for whole register blocks.
    let (hp, wp) = (
        g.h + 2 * g.padding,
        (g.w + 2 * g.padding).max(g.wo.div_ceil(WB) * WB + (g.kw - 1) * g.dilation),
    );
    (0..g.n * g.o)
        .into_par_iter()
        .with_max_len(1)
        .for_each(|no| {
            let (n, o) = (no / g.o, no % g.o);
            let c = o / mult;
            let src = &x[(n * g.c + c) * hw..][..hw];
            let tw = &w[o * taps..][..taps];
            let b = bias.map_or(0.0, |b| b[o]);
            // SAFETY: plane `no` of the output is written by this task only; zeroing it first
            // (in cache, just before the kernel overwrites it) makes the slice initialised.
            let dst = unsafe {
                let p = optr.get().add(no * plane_out);
                std::ptr::write_bytes(p, 0, plane_out);
                std::slice::from_raw_parts_mut(p, plane_out)
            };
            if g.stride == 1 {
                with_scratch(hp * wp, |pad| {
                    pad.fill(0.0);
                    for (r, row) in src.chunks_exact(g.w).enumerate() {
                        pad[(r + g.padding) * wp + g.padding..][..g.w].copy_from_slice(row);
                    }
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: the CPU supports AVX2 and FMA (`Simd::detect`).
                        unsafe { plane_s1_avx2(pad, wp, tw, b, dst, g) };
                        return;
                    }
                    plane_s1::<false>(pad, wp, tw, b, dst, g);
                });
            } else {
                dst.fill(b);
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the CPU supports AVX2 and FMA (`Simd::detect`).
                    unsafe { plane_avx2(src, tw, dst, g) };
                } else {
                    plane::<false>(src, tw, dst, g);
                }
                #[cfg(not(target_arch = "x86_64"))]
                plane::<false>(src, tw, dst, g);
            }
            bias_act(dst, 0.0, act);
        });
    // SAFETY: every plane was fully written by its task.
    unsafe { out.set_len(len) };
    out
}
