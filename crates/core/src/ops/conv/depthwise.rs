//! Direct kernel for depthwise convolutions (`groups == C`, any channel multiplier).
//!
//! One rayon task per output plane; each output row is accumulated in L1 as a sum of
//! `kh * kw` shifted (and, for stride 1, contiguous) input rows scaled by one tap each.

use rayon::prelude::*;

use super::act::{bias_act, has_avx2_fma};
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
/// plane `x` (`h x w`) and its `kh x kw` taps `w`.
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

/// Depthwise conv over contiguous NCHW `x` and `O x 1 x kh x kw` `w`, with `O = C * mult`.
pub(super) fn depthwise(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
    act: Activation,
) -> Vec<f32> {
    let (hw, plane_out, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let mult = g.o / g.c;
    let mut out = vec![0f32; g.n * g.o * plane_out];
    let avx2 = has_avx2_fma();
    out.par_chunks_mut(plane_out)
        .enumerate()
        .with_max_len(1)
        .for_each(|(no, dst)| {
            let (n, o) = (no / g.o, no % g.o);
            let c = o / mult;
            let src = &x[(n * g.c + c) * hw..][..hw];
            let tw = &w[o * taps..][..taps];
            let b = bias.map_or(0.0, |b| b[o]);
            if b != 0.0 {
                dst.fill(b);
            }
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU supports AVX2 and FMA (checked by `has_avx2_fma`).
                unsafe { plane_avx2(src, tw, dst, g) };
                bias_act(dst, 0.0, act);
                return;
            }
            let _ = avx2;
            plane::<false>(src, tw, dst, g);
            bias_act(dst, 0.0, act);
        });
    out
}
