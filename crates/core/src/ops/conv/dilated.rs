//! Dilated 3x3 stride-1 convolutions whose outer taps mostly read the zero padding, as a sum
//! of per-tap GEMMs that skips them.
//!
//! ASPP's rates 24 and 36 on a 64 x 64 map are the case: an outer tap `(i, j)` reads the
//! input at `d (i - 1)`, `d (j - 1)` from each output, which lies in the padding for 36 (rate
//! 24) or 28 (rate 36) of the 64 rows and columns. Im2col and Winograd multiply those zeros
//! all the same: only 56% (rate 24) and 39% (rate 36) of a padded convolution's multiply-adds
//! touch the input.
//!
//! Here the output is cut along each axis where a tap's validity changes (at most 7 pieces per
//! axis), so that inside each rectangle every tap reads the input for all of its pixels or for
//! none. A task computes a block of output channels over a strip of one rectangle: for each tap
//! valid there, `C (+)= W_tap[O x C] * X_shift[C x pixels]`, the tap's weights packed once per
//! call as its own `O x C` matrix and the shifted input rows copied straight into the GEMM's
//! packed layout. The strip's outputs are summed in a thread-local buffer, finished with the
//! bias and activation, and copied to their rows of the NCHW output.

use rayon::prelude::*;

use super::act::{scale_bias_act, Simd};
use super::depthwise::valid_range;
use super::im2col::{put_row, with_scratch};
use super::kernel::{block_depth, gemm_block, packed_b_len, panel_stride, OutPtr, PackedA, MR, NR};
use super::{Activation, Geometry};

/// Most output pixels per task.
const NC_MAX: usize = 512;

/// Largest share of a padded convolution's multiply-adds (valid taps over all taps, summed
/// over the output) for which this path runs instead of Winograd.
const VALID_MAX: f64 = 0.6;

/// The pieces of an output axis of `len` outputs (input `size`, padding `pad`, rate `d`) in
/// which each of the 3 taps is valid for every output or for none: `(start, end, mask)`, bit
/// `i` of `mask` set when tap `i` reads the input there.
fn pieces(size: usize, len: usize, pad: usize, d: usize) -> Vec<(usize, usize, u8)> {
    let ranges: [(usize, usize); 3] =
        std::array::from_fn(|i| valid_range((i * d) as isize - pad as isize, 1, size, len));
    let mut cuts = vec![0, len];
    for &(lo, hi) in &ranges {
        cuts.extend([lo, hi]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|p| {
            let mask = ranges
                .iter()
                .enumerate()
                .filter(|(_, r)| r.0 <= p[0] && p[1] <= r.1)
                .fold(0u8, |m, (i, _)| m | (1 << i));
            (p[0], p[1], mask)
        })
        .collect()
}

/// Valid `(tap, output pixel)` pairs over all of them, for `g`'s 3x3 kernel.
fn valid_fraction(g: &Geometry) -> f64 {
    let axis = |size: usize, len: usize| {
        let valid: usize = pieces(size, len, g.padding, g.dilation)
            .iter()
            .map(|&(a, b, m)| (b - a) * m.count_ones() as usize)
            .sum();
        valid as f64 / (3 * len).max(1) as f64
    };
    axis(g.h, g.ho) * axis(g.w, g.wo)
}

/// Whether this path handles `g` and is worth it: a 3x3 stride-1 dilated convolution without
/// groups, on AVX2 + FMA, whose valid taps make at most [`VALID_MAX`] of the padded work.
pub(super) fn applies(g: &Geometry, simd: Simd) -> bool {
    simd.avx2()
        && g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.groups == 1
        && g.dilation > 1
        && g.c >= 16
        && g.o >= 16
        && valid_fraction(g) <= VALID_MAX
}

/// The 9 taps' `O x C` weight matrices, packed for the GEMM; row `o` multiplied by `scale[o]`
/// when given (each product rounded once from f64).
pub(super) fn pack_weights(w: &[f32], scale: Option<&[f64]>, g: &Geometry) -> [PackedA; 9] {
    let c = g.c;
    PackedA::new_multi_rows::<9>(g.o, c, |r, c0, out| {
        let f = scale.map(|s| s[r]);
        for (jj, o) in out.iter_mut().enumerate() {
            let src = &w[(r * c + c0 + jj) * 9..][..9];
            for (v, &x) in o.iter_mut().zip(src) {
                *v = f.map_or(x, |f| (x as f64 * f) as f32);
            }
        }
    })
}

/// One task's strip: image `n`, output rows `y0..y1` and columns `x0..x1`, and the taps
/// `(i, j)` valid over all of it.
struct Strip {
    n: usize,
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
    rows: u8,
    cols: u8,
}

/// The strips of at most [`NC_MAX`] pixels (whole rows of a rectangle where possible).
fn strips(g: &Geometry) -> Vec<Strip> {
    let ys = pieces(g.h, g.ho, g.padding, g.dilation);
    let xs = pieces(g.w, g.wo, g.padding, g.dilation);
    let mut out = Vec::new();
    for n in 0..g.n {
        for &(ya, yb, rows) in &ys {
            for &(xa, xb, cols) in &xs {
                let width = xb - xa;
                let count = ((yb - ya) * width).div_ceil(NC_MAX).max(1);
                let height = (yb - ya).div_ceil(count);
                for y0 in (ya..yb).step_by(height.max(1)) {
                    out.push(Strip {
                        n,
                        y0,
                        y1: (y0 + height).min(yb),
                        x0: xa,
                        x1: xb,
                        rows,
                        cols,
                    });
                }
            }
        }
    }
    out
}

/// Packs channels `c0..c0 + kc` of tap `(i, j)` over `s`'s pixels into `buf`, as micro-panels
/// of `kc x NR`, `ps` apart (lanes past the strip's pixels zeroed).
fn pack_b(
    x: &[f32],
    g: &Geometry,
    s: &Strip,
    (i, j): (usize, usize),
    (c0, kc): (usize, usize),
    buf: &mut [f32],
    ps: usize,
) {
    let (hw, width) = (g.h * g.w, s.x1 - s.x0);
    let np = (s.y1 - s.y0) * width;
    if !np.is_multiple_of(NR) {
        let last = np / NR;
        buf[last * ps..last * ps + kc * NR].fill(0.0);
    }
    // Valid over the strip by construction: y + i d - pad and x + j d - pad lie in the input.
    let xi = s.x0 + j * g.dilation - g.padding;
    for kk in 0..kc {
        let plane = &x[(s.n * g.c + c0 + kk) * hw..][..hw];
        for y in s.y0..s.y1 {
            let yi = y + i * g.dilation - g.padding;
            put_row(
                buf,
                ps,
                kk,
                (y - s.y0) * width,
                &plane[yi * g.w + xi..][..width],
            );
        }
    }
}

/// Convolution of contiguous NCHW `x` with the taps `packed` by [`pack_weights`], for a `g`
/// that [`applies`].
pub(super) fn conv_taps(
    x: &[f32],
    packed: &[PackedA; 9],
    bias: Option<&[f32]>,
    g: &Geometry,
    act: Activation,
    simd: Simd,
) -> Vec<f32> {
    let p_out = g.ho * g.wo;
    let threads = rayon::current_num_threads().max(1);
    let strips = strips(g);
    let panels = g.o.div_ceil(MR);
    let o_split = (2 * threads).div_ceil(strips.len()).clamp(1, panels);
    let o_blk = panels.div_ceil(o_split) * MR;
    let o_split = g.o.div_ceil(o_blk);
    let kb = block_depth(g.c);

    // Uninitialised: every element is stored by exactly one task.
    let len = g.n * g.o * p_out;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let optr = OutPtr(out.as_mut_ptr());
    (0..strips.len() * o_split).into_par_iter().for_each(|t| {
        let (s, ob) = (&strips[t / o_split], t % o_split);
        let (o0, o1) = (ob * o_blk, ((ob + 1) * o_blk).min(g.o));
        let width = s.x1 - s.x0;
        let np = (s.y1 - s.y0) * width;
        let b_len = packed_b_len(kb, np);
        with_scratch(b_len + (o1 - o0) * np, |scratch| {
            let (buf, acc) = scratch.split_at_mut(b_len);
            let mut first = true;
            for i in (0..3).filter(|i| s.rows & (1 << i) != 0) {
                for j in (0..3).filter(|j| s.cols & (1 << j) != 0) {
                    for c0 in (0..g.c).step_by(kb) {
                        let kc = kb.min(g.c - c0);
                        let ps = panel_stride(kc);
                        pack_b(x, g, s, (i, j), (c0, kc), buf, ps);
                        // SAFETY: `acc` holds rows 0..o1 - o0 of `np` elements, this task's
                        // own; o0 is a multiple of MR.
                        unsafe {
                            gemm_block(
                                &packed[3 * i + j],
                                o0,
                                o1,
                                (c0, !first),
                                buf,
                                ps,
                                np,
                                acc.as_mut_ptr(),
                                np,
                                simd,
                            )
                        };
                        first = false;
                    }
                }
            }
            if first {
                // No tap reads the input here (a kernel wider than input plus padding).
                acc.fill(0.0);
            }
            for (o, row) in (o0..o1).zip(acc.chunks_exact_mut(np)) {
                scale_bias_act(row, 1.0, bias.map_or(0.0, |b| b[o]), act);
                for (y, part) in (s.y0..s.y1).zip(row.chunks_exact(width)) {
                    let at = (s.n * g.o + o) * p_out + y * g.wo + s.x0;
                    // SAFETY: output row `o`, pixels of this strip: written by this task only
                    // (tasks differ in strip or channel block), inside the output.
                    unsafe {
                        std::ptr::copy_nonoverlapping(part.as_ptr(), optr.get().add(at), width)
                    };
                }
            }
        });
    });
    // SAFETY: the strips cover every output pixel of every image once, and the channel blocks
    // every channel: each element was stored above.
    unsafe { out.set_len(len) };
    out
}
