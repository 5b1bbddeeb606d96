//! The weight gradient of a stride-1 convolution as an implicit GEMM over zero-padded planes,
//! with no im2col matrix and no packed copy of the input.
//!
//! With the input padded to `Hp x Wp` (`Hp = H + 2p`, `Wp = W + 2p`) and the output gradient
//! laid out on the same row pitch (`dY` row `y` at `y * Wp`, zero in columns `x >= Wo`), the
//! receptive field of tap `(c, i, j)` over every output pixel is one contiguous run of the padded
//! plane `c`, starting at `i d Wp + j d`:
//!
//! `dW[o, c, i, j] = sum_n sum_q dYp[n, o, q] * Xp[n, c, q + i d Wp + j d]`, `q < Ho Wp`.
//!
//! So the GEMM `dW^T (taps x O) = X (taps x Q) dYp^T (Q x O)` reads its broadcast operand (six
//! taps per tile) straight from six shifted pointers into the padded input, and only `dYp^T`
//! is packed (into `NR`-channel micro-panels, the kernel's vector operand; the output gradient is
//! the small operand). Tasks own blocks of taps and run over every image and pixel block in a
//! fixed order, so the sum is deterministic and needs no per-image buffers. AVX-512F (tiles of
//! two panels, 6 x 32) or AVX2 + FMA (one panel, 6 x 16); the caller keeps the im2col path on
//! other CPUs.

use rayon::prelude::*;

use super::act::Simd;
use super::kernel::{OutPtr, MR, NR};
use super::rows_a::{tile, tile_avx2};
use super::Geometry;

/// Depth (padded pixels) of one block: its `NR`-channel panels of `dYp^T` stay in L1 / L2.
const QC: usize = 256;
/// Most taps (rows of `dW^T`) per task, a multiple of [`MR`].
const TAPS_PER_TASK: usize = 16 * MR;
/// Largest buffer copied on one thread.
const SERIAL_MAX: usize = 1 << 17;
/// Fewest padded output pixels (over the batch) worth the padded copies; below, the im2col
/// path is faster.
const MIN_PIXELS: usize = 1024;

/// Most output channels for the AVX2 kernel. Its tiles hold one 16-channel panel (the AVX-512
/// kernel's two), so every tap row streams past each panel, and from 256 output channels the
/// im2col GEMMs of the `gemm` crate win. Best of 5, three runs of
/// `timing_of_the_weight_gradient` (2 threads, AMD EPYC Zen 3), im2col -> direct, ms:
/// 16 -> 16 at 128 x 128 (batch 8) 8.6-10.9 -> 5.8-6.6, 32 -> 32 at 64 x 64 (batch 8)
/// 6.1-7.7 -> 4.4-5.1, 64 -> 64 at 16 x 16 (batch 8) 1.4-2.0 -> 1.1-1.3, 128 -> 128 at
/// 16 x 16 (batch 8) 6.7-7.2 -> 5.4-5.8 (dilation 4: 6.4-7.0 -> 5.4-5.6, but 6.6-7.0 ->
/// 7.3-8.2 in four later runs: its padded planes are 1.5x the output's width, which
/// [`avx2_padding_fits`] now leaves to im2col), 64 -> 64 at
/// 128 x 128 (batch 2) 17.8-18.1 -> 15.7-16.1, 128 -> 128 at 64 x 64 16.0-20.5 -> 14.7-17.0;
/// but 256 -> 256 at 64 x 64 (dilation 2) 59-63 -> 68-72. (The limit was 32 when this
/// kernel landed, from one run where 64 -> 64 at 128 x 128 read 17.6 -> 20.7; re-measured
/// as above on 2026-12-07.)
pub(super) const AVX2_MAX_CHANNELS: usize = 128;

/// Whether the AVX2 kernel's padded rows are narrow enough: it computes `ho x (w + 2p)`
/// positions per tap where the output has `ho x wo`, so its work grows with the padded width
/// and im2col's does not. At most 5/4 of the output's width. Measured (best of 5, two runs of
/// `timing_of_the_weight_gradient`, 2026-12-07): 128 -> 128 at 16 x 16, batch 8, padding 1
/// (18 / 16 wide) im2col 5.8-6.4 -> direct 5.2-5.3 ms; the same with dilation and padding 4
/// (24 / 16 wide) 6.4-6.5 -> 7.0-7.3 ms, the direct kernel's time in the ratio of the widths.
/// The AVX-512 kernel keeps its own tiles and has no such bound (not re-measured).
pub(super) fn avx2_padding_fits(g: &Geometry) -> bool {
    4 * (g.w + 2 * g.padding) <= 5 * g.wo
}

/// Whether [`weight_grad_direct`] handles `g` on a CPU with `simd`: a kernel larger than 1x1
/// (1x1 convolutions are plain GEMMs, which the im2col path runs as fast), stride 1, one group,
/// enough pixels, and AVX-512F, or AVX2 + FMA with at most [`AVX2_MAX_CHANNELS`] output
/// channels and padded rows within [`avx2_padding_fits`].
pub(super) fn applies(g: &Geometry, simd: Simd) -> bool {
    (simd.avx512() || (simd.avx2() && g.o <= AVX2_MAX_CHANNELS && avx2_padding_fits(g)))
        && g.kh * g.kw > 1
        && g.stride == 1
        && g.groups == 1
        && g.o > 0
        && g.c > 0
        && g.n * g.ho * (g.w + 2 * g.padding) >= MIN_PIXELS
}

/// `dL/dw` (`O x C x kh x kw`, row-major) of a stride-1, one-group convolution from contiguous
/// `x` and `dy` (see the module docs).
///
/// # Panics
/// Never for a geometry [`applies`] accepts for `simd` (checked by the caller).
pub(super) fn weight_grad_direct(x: &[f32], dy: &[f32], g: &Geometry, simd: Simd) -> Vec<f32> {
    let avx512 = simd.avx512();
    let (hp, wp) = (g.h + 2 * g.padding, g.w + 2 * g.padding);
    let taps = g.kh * g.kw;
    let k = g.c * taps;
    let q = g.ho * wp;
    // The farthest a tap's run reaches past its plane: (kw - 1) d - 1 elements; the padded
    // buffer carries that many zeros after the last plane.
    let tail = (g.kw - 1) * g.dilation;
    // A plane pitch that is no multiple of 4 KiB, so that the six tap rows of a tile (often in
    // six planes) do not share L1 sets.
    let plane = hp * wp
        + if (hp * wp).is_multiple_of(1024) {
            NR
        } else {
            0
        };
    let xp = padded_input(x, g, plane, tail);
    let panels = g.o.div_ceil(NR);
    // One row more than a panel holds: the two panels of a pair never share L1 sets.
    let ps = (q + 1) * NR;
    let bt = packed_dy(dy, g, wp, ps);
    let offsets: Vec<usize> = (0..k)
        .map(|t| {
            let (c, ij) = (t / taps, t % taps);
            let (i, j) = (ij / g.kw, ij % g.kw);
            c * plane + i * g.dilation * wp + j * g.dilation
        })
        .collect();
    // Tasks: blocks of taps (a multiple of MR) times blocks of channel panels, small enough
    // that every thread gets a few, each writing its own rectangle of dW^T.
    let threads = rayon::current_num_threads().max(1);
    let mut tb = TAPS_PER_TASK;
    while tb > MR && k.div_ceil(tb) * panels.div_ceil(2) < 4 * threads {
        tb -= MR;
    }
    let pb = if k.div_ceil(tb) >= 4 * threads {
        panels
    } else {
        2.min(panels)
    };
    let (tblocks, pblocks) = (k.div_ceil(tb), panels.div_ceil(pb));
    let mut dwt: Vec<f32> = Vec::with_capacity(k * g.o);
    let cptr = OutPtr(dwt.as_mut_ptr());
    (0..tblocks * pblocks).into_par_iter().for_each(|task| {
        let (t0, j0) = ((task / pblocks) * tb, (task % pblocks) * pb);
        let (nt, j1) = (tb.min(k - t0), (j0 + pb).min(panels));
        for n in 0..g.n {
            let xn = &xp[n * g.c * plane..];
            let bn = &bt[n * panels * ps..][..panels * ps];
            for q0 in (0..q).step_by(QC) {
                let qc = QC.min(q - q0);
                let acc = n > 0 || q0 > 0;
                // BLIS order: each pair of dYp^T panels (qc x 2 NR) stays in L1 while every
                // tap tile of the block streams past it from L2.
                let mut jr = j0;
                while jr < j1 {
                    let pair = avx512 && jr + 1 < j1 && g.o >= (jr + 2) * NR;
                    let cols = NR.min(g.o - jr * NR);
                    let b = bn[jr * ps + q0 * NR..].as_ptr();
                    for r0 in (0..nt).step_by(MR) {
                        let rows = MR.min(nt - r0);
                        let a: [*const f32; MR] = std::array::from_fn(|r| {
                            let t = t0 + r0 + r.min(rows - 1);
                            xn[offsets[t] + q0..][..qc].as_ptr()
                        });
                        // SAFETY: the six rows hold qc elements each (sliced above); the
                        // panels hold q * NR elements, from q0 on at least qc * NR (two panels
                        // `ps` apart for a pair); the C tile (rows t0 + r0.. of dW^T, columns
                        // jr * NR.., row stride O) lies in this task's rectangle, which no
                        // other task touches. `applies` checked AVX2 + FMA, and `tile` runs
                        // only with AVX-512F.
                        unsafe {
                            let c = cptr.get().add((t0 + r0) * g.o + jr * NR);
                            if !avx512 {
                                tile_avx2(qc, a, b, c, g.o, acc, rows, cols);
                            } else if pair {
                                tile::<2>(qc, a, b, ps, c, g.o, acc, rows, NR);
                            } else {
                                tile::<1>(qc, a, b, ps, c, g.o, acc, rows, cols);
                            }
                        }
                    }
                    jr += if pair { 2 } else { 1 };
                }
            }
        }
    });
    // SAFETY: the tasks' rectangles cover dW^T, and each stored all of its elements on its
    // first pixel block.
    unsafe { dwt.set_len(k * g.o) };
    let mut dw = vec![0f32; g.o * k];
    par_planes(&mut dw, k, |o, row| {
        for (t, v) in row.iter_mut().enumerate() {
            *v = dwt[t * g.o + o];
        }
    });
    dw
}

/// The images' input planes zero-padded to `Hp x Wp`, one every `plane` elements, followed by
/// `tail` zeros.
fn padded_input(x: &[f32], g: &Geometry, plane: usize, tail: usize) -> Vec<f32> {
    let wp = g.w + 2 * g.padding;
    let mut xp = vec![0f32; g.n * g.c * plane + tail];
    par_planes(&mut xp[..g.n * g.c * plane], plane, |i, dst| {
        let src = &x[i * g.h * g.w..][..g.h * g.w];
        for (y, row) in src.chunks_exact(g.w).enumerate() {
            dst[(y + g.padding) * wp + g.padding..][..g.w].copy_from_slice(row);
        }
    });
    xp
}

/// `dYp^T` per image, packed: panel `jr` of image `n` at `(n * panels + jr) * ps`, element
/// `(q, lane)` at `q * NR + lane` with `q = y Wp + x` (zero for columns `x >= Wo` and channels
/// past `O`).
fn packed_dy(dy: &[f32], g: &Geometry, wp: usize, ps: usize) -> Vec<f32> {
    let panels = g.o.div_ceil(NR);
    let mut bt = vec![0f32; g.n * panels * ps];
    par_planes(&mut bt, ps, |idx, panel| {
        let (n, jr) = (idx / panels, idx % panels);
        let lanes = NR.min(g.o - jr * NR);
        let planes = &dy[(n * g.o + jr * NR) * g.ho * g.wo..][..lanes * g.ho * g.wo];
        for y in 0..g.ho {
            let rows: [&[f32]; NR] = std::array::from_fn(|l| {
                let l = l.min(lanes - 1);
                &planes[(l * g.ho + y) * g.wo..][..g.wo]
            });
            for (xx, dst) in panel[y * wp * NR..][..g.wo * NR]
                .chunks_exact_mut(NR)
                .enumerate()
            {
                for (l, d) in dst.iter_mut().enumerate().take(lanes) {
                    *d = rows[l][xx];
                }
            }
        }
    });
    bt
}

/// `f(i, chunk)` for each `len`-element chunk of `buf`: on the pool when `buf` is large, on the
/// calling thread otherwise (waking the pool costs more than copying a small buffer).
fn par_planes(buf: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if buf.len() >= SERIAL_MAX {
        buf.par_chunks_mut(len.max(1))
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        buf.chunks_mut(len.max(1))
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}
