//! Convolution as GEMM straight on NCHW memory with the `gemm` crate: the path for CPUs
//! without AVX2 + FMA (other architectures included), where `gemm` has tuned kernels.
//!
//! Per image and group, `out[O x Ho*Wo] = W[O x C*kh*kw] * col[C*kh*kw x Ho*Wo]` with the
//! `gemm` crate, written directly into the NCHW output (no transposes). `col` is the input
//! itself for 1x1 stride-1 unpadded convs, else an im2col buffer built one tile of output rows
//! at a time (bounded size, reused through a thread-local). Bias and activation are applied to
//! each output tile right after its GEMM, while it is still in cache.

use std::cell::Cell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::act::epilogue;
use super::depthwise::valid_range;
use super::im2col::gather;
use super::{Activation, Geometry};

/// Target size of one im2col tile, in f32 elements.
const COL_BUDGET: usize = 1 << 20;
/// Target output columns (`rows * Wo`) of one tile of a 1x1 conv that needs an epilogue.
const DIRECT_TILE: usize = 4096;
/// Minimum elements per rayon task when building an im2col tile.
const IM2COL_TASK: usize = 1 << 14;

thread_local! {
    /// The calling thread's im2col buffer, kept between calls. Taken out while in use so that a
    /// re-entrant call (rayon work stealing) simply allocates its own.
    static COL: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

pub(super) fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// Fills `col` (`Cg*kh*kw` rows of `(r1 - r0) * Wo`) with the receptive fields of output rows
/// `r0..r1`, reading the group's input channels `xg` (`Cg x H x W`).
pub(super) fn im2col(xg: &[f32], col: &mut [f32], r0: usize, r1: usize, g: &Geometry) {
    let pt = (r1 - r0) * g.wo;
    let hw = g.h * g.w;
    let (s, p, d) = (g.stride, g.padding as isize, g.dilation);
    let taps = g.kh * g.kw;
    let fill_row = |(kr, dst): (usize, &mut [f32])| {
        let (c, ij) = (kr / taps, kr % taps);
        let (i, j) = (ij / g.kw, ij % g.kw);
        let xc = &xg[c * hw..][..hw];
        let off = (j * d) as isize - p;
        let (lo, hi) = valid_range(off, s, g.w, g.wo);
        for (t, drow) in dst.chunks_exact_mut(g.wo).enumerate() {
            let h_in = ((r0 + t) * s + i * d) as isize - p;
            if h_in < 0 || h_in >= g.h as isize || lo >= hi {
                drow.fill(0.0);
                continue;
            }
            let in_row = &xc[h_in as usize * g.w..][..g.w];
            drow[..lo].fill(0.0);
            drow[hi..].fill(0.0);
            let start = ((lo * s) as isize + off) as usize;
            gather::<false>(&mut drow[lo..hi], hi - lo, &in_row[start..], s);
        }
    };
    col.par_chunks_mut(pt)
        .enumerate()
        .with_min_len(IM2COL_TASK.div_ceil(pt))
        .for_each(fill_row);
}

/// Convolution of contiguous NCHW `x` with contiguous `O x C/groups x kh x kw` `w`.
pub(super) fn conv_gemm(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
    act: Activation,
) -> Vec<f32> {
    let (cg, og) = (g.c / g.groups, g.o / g.groups);
    let k = cg * g.kh * g.kw;
    let (hw, p_out) = (g.h * g.w, g.ho * g.wo);
    let mut out = vec![0f32; g.n * g.o * p_out];
    let direct = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.padding == 0;
    let rows = if direct {
        if act == Activation::None && bias.is_none() {
            g.ho
        } else {
            DIRECT_TILE.div_ceil(g.wo)
        }
    } else {
        COL_BUDGET / (k * g.wo)
    }
    .clamp(1, g.ho);
    let mut col = if direct { Vec::new() } else { COL.take() };
    let need = k * rows * g.wo;
    if !direct && col.len() < need {
        col = Vec::new();
        col.resize(need, 0.0);
    }
    let par = parallelism();
    for n in 0..g.n {
        for gi in 0..g.groups {
            let xg = &x[(n * g.c + gi * cg) * hw..][..cg * hw];
            let wg = &w[gi * og * k..][..og * k];
            let dst = &mut out[(n * g.o + gi * og) * p_out..][..og * p_out];
            let bg = bias.map(|b| &b[gi * og..][..og]);
            for r0 in (0..g.ho).step_by(rows) {
                let r1 = (r0 + rows).min(g.ho);
                let pt = (r1 - r0) * g.wo;
                let (rhs, rhs_rs) = if direct {
                    (xg[r0 * g.wo..].as_ptr(), hw)
                } else {
                    im2col(xg, &mut col[..k * pt], r0, r1, g);
                    (col.as_ptr(), pt)
                };
                // SAFETY: dst holds og rows of p_out with the tile's pt columns starting at
                // r0 * wo; lhs is og x k row-major; rhs has k rows of at least pt elements,
                // rhs_rs apart, all inside `xg` or `col` (checked by the slicing above).
                unsafe {
                    gemm::gemm(
                        og,
                        pt,
                        k,
                        dst[r0 * g.wo..].as_mut_ptr(),
                        1,
                        p_out as isize,
                        false,
                        wg.as_ptr(),
                        1,
                        k as isize,
                        rhs,
                        1,
                        rhs_rs as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
                epilogue(dst, p_out, r0 * g.wo, pt, bg, act);
            }
        }
    }
    if !direct {
        COL.set(col);
    }
    out
}
