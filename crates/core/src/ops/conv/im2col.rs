//! Convolution as a packed GEMM whose `B` packing *is* the im2col.
//!
//! Per image and group, `out[O x Ho*Wo] = W[O x C*kh*kw] * col[C*kh*kw x Ho*Wo]`. The weights
//! are packed once per call; `col` is never materialised: each task packs the `kc x nc` block of
//! it that it needs straight from the NCHW input into a thread-local buffer (row copies for
//! stride 1, a short gather otherwise), runs the microkernels on it, and finally applies bias
//! and activation to its output block while it is still in cache. Tasks are
//! `(image, group, block of output pixels, block of output channels)`, run with rayon.

use std::cell::Cell;

use rayon::prelude::*;

use super::act::{scale_bias_act, Simd};
use super::depthwise::valid_range;
use super::kernel::{block_depth, gemm_block, packed_b_len, panel_stride, OutPtr, PackedA, MR, NR};
#[cfg(target_arch = "x86_64")]
use super::rows_a::{gemm_block_rows, gemm_block_rows_avx2, RowsA};
use super::{Activation, Geometry};

/// Most output pixels per task.
const NC_MAX: usize = 256;
/// Fewest output pixels per task (a multiple of [`NR`]), unless the map is smaller.
const NC_MIN: usize = 64;

thread_local! {
    /// Each thread's packed-`B` buffer, kept between calls. Taken out while in use so that a
    /// re-entrant call (rayon work stealing) simply allocates its own.
    static BBUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with a thread-local scratch buffer of at least `len` floats.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = BBUF.take();
    if buf.len() < len {
        buf = vec![0f32; len];
    }
    let r = f(&mut buf[..len]);
    BBUF.set(buf);
    r
}

/// The part of output row `ho` inside a task's pixel block: columns `wa..wb`, at offset `q` of
/// the block.
#[derive(Clone, Copy)]
struct RowSpan {
    ho: usize,
    wa: usize,
    wb: usize,
    q: usize,
}

/// The output rows that pixels `p0..p0 + np` cover.
fn row_spans(g: &Geometry, p0: usize, np: usize) -> Vec<RowSpan> {
    let mut spans = Vec::with_capacity(np / g.wo + 2);
    let mut p = p0;
    while p < p0 + np {
        let (ho, wa) = (p / g.wo, p % g.wo);
        let wb = g.wo.min(wa + p0 + np - p);
        spans.push(RowSpan {
            ho,
            wa,
            wb,
            q: p - p0,
        });
        p += wb - wa;
    }
    spans
}

/// `dst[t] = src[2 * t]` for `t < 8`, with AVX2 (two loads, a shuffle and a permute).
///
/// # Safety
/// The CPU has AVX2; `src` holds at least 16 elements and `dst` at least 8.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn even8_avx2(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() >= 16 && dst.len() >= 8);
    // SAFETY: lengths as documented.
    unsafe {
        let lo = _mm256_loadu_ps(src.as_ptr());
        let hi = _mm256_loadu_ps(src.as_ptr().add(8));
        // Per 128-bit lane: lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6, then reorder the 64-bit pairs.
        let ev = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
        let ev = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(ev)));
        _mm256_storeu_ps(dst.as_mut_ptr(), ev);
    }
}

/// Writes `dst[t] = src[t * s]` for `t < n`. Stride 2 runs in blocks of 8 outputs, and may
/// write up to 7 elements of `dst` past `n` when `dst` and `src` are long enough (the caller
/// overwrites them). `AVX2`: the caller runs with AVX2 enabled.
#[inline(always)]
pub(super) fn gather<const AVX2: bool>(dst: &mut [f32], n: usize, src: &[f32], s: usize) {
    match s {
        1 => dst[..n].copy_from_slice(&src[..n]),
        2 => {
            let nb = n.div_ceil(8);
            let full = if dst.len() >= 8 * nb && src.len() >= 16 * nb {
                nb
            } else {
                (n / 8).min(src.len() / 16)
            };
            for b in 0..full {
                let (db, sb) = (&mut dst[8 * b..8 * b + 8], &src[16 * b..16 * b + 16]);
                #[cfg(target_arch = "x86_64")]
                if AVX2 {
                    // SAFETY: AVX2 (caller); 16 source and 8 destination elements.
                    unsafe { even8_avx2(db, sb) };
                    continue;
                }
                for t in 0..8 {
                    db[t] = sb[2 * t];
                }
            }
            for t in full * 8..n {
                dst[t] = src[2 * t];
            }
        }
        _ => {
            for (t, v) in dst[..n].iter_mut().enumerate() {
                *v = src[t * s];
            }
        }
    }
}

/// Asks the CPU to start loading `v` into cache (the input rows a task needs next arrive as
/// many short streams, which the hardware prefetcher picks up too late).
#[inline(always)]
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        // SAFETY: prefetching is a hint that never faults; the address is inside `v`.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr().cast::<i8>(),
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Copies `src` into block columns `q..q + src.len()` of packed row `kk`, split at
/// micro-panel boundaries.
#[inline(always)]
pub(super) fn put_row(buf: &mut [f32], ps: usize, kk: usize, q: usize, src: &[f32]) {
    let mut src = src;
    let mut q = q;
    if !q.is_multiple_of(NR) {
        let n = (NR - q % NR).min(src.len());
        buf[(q / NR) * ps + kk * NR + q % NR..][..n].copy_from_slice(&src[..n]);
        (q, src) = (q + n, &src[n..]);
    }
    let mut chunks = src.chunks_exact(NR);
    for piece in &mut chunks {
        buf[(q / NR) * ps + kk * NR..][..NR].copy_from_slice(piece);
        q += NR;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        buf[(q / NR) * ps + kk * NR..][..rest.len()].copy_from_slice(rest);
    }
}

/// Writes block columns `q..q + n` of packed row `kk`: `src[t * s]` for column `q + t`, or
/// zeros (`src = None`). Whole micro-panel pieces take a fixed-size copy or gather.
#[inline(always)]
fn put_run<const AVX2: bool>(
    buf: &mut [f32],
    ps: usize,
    kk: usize,
    q: usize,
    n: usize,
    src: Option<&[f32]>,
    s: usize,
) {
    let (mut q, end, mut t) = (q, q + n, 0);
    while q < end {
        let lane = q % NR;
        #[cfg(target_arch = "x86_64")]
        if AVX2 && lane == 0 && (s == 1 || s == 2) && end - q >= NR {
            if let Some(src) = src {
                // Whole micro-panel pieces: one tight loop of vector copies / gathers.
                let full = (end - q) / NR;
                let (src, dst) = (&src[t * s..], &mut buf[(q / NR) * ps + kk * NR..]);
                let done = full
                    .min(src.len() / (NR * s))
                    .min((dst.len() + ps - NR) / ps);
                // SAFETY: AVX2 (caller); `done` pieces read NR * s source elements and write
                // NR destination elements each, `ps` apart, all inside the slices (checked by
                // the `min`s above).
                unsafe { x86::pieces(dst.as_mut_ptr(), ps, src.as_ptr(), s, done) };
                q += done * NR;
                t += done * NR;
                if done == full {
                    continue;
                }
            }
        }
        let m = (NR - lane).min(end - q);
        let dst = &mut buf[(q / NR) * ps + kk * NR + lane..][..m];
        match src {
            None => dst.fill(0.0),
            Some(src) => gather::<AVX2>(dst, m, &src[t * s..], s),
        }
        q += m;
        t += m;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::NR;

    /// `count` micro-panel rows: `dst[i * ps + l] = src[(i * NR + l) * s]` for `l < NR`, with
    /// `s` 1 or 2.
    ///
    /// # Safety
    /// The CPU has AVX2; `src` is valid for `count * NR * s` reads and `dst` for writes of
    /// `NR` elements at each of `count` offsets `ps` apart.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pieces(dst: *mut f32, ps: usize, src: *const f32, s: usize, count: usize) {
        // SAFETY: as documented.
        unsafe {
            if s == 1 {
                for i in 0..count {
                    let (sp, dp) = (src.add(i * NR), dst.add(i * ps));
                    _mm256_storeu_ps(dp, _mm256_loadu_ps(sp));
                    _mm256_storeu_ps(dp.add(8), _mm256_loadu_ps(sp.add(8)));
                }
            } else {
                for i in 0..count {
                    let (sp, dp) = (src.add(i * 2 * NR), dst.add(i * ps));
                    for h in 0..2 {
                        let lo = _mm256_loadu_ps(sp.add(16 * h));
                        let hi = _mm256_loadu_ps(sp.add(16 * h + 8));
                        let ev = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
                        let ev = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(ev));
                        _mm256_storeu_ps(dp.add(8 * h), _mm256_castpd_ps(ev));
                    }
                }
            }
        }
    }
}

/// Packs rows `k0..k0 + kc` of the group's im2col matrix, for the output pixels that `spans`
/// cover (`np` in all), into `buf` as micro-panels of `kc x NR`, `ps` apart (lanes past `np`
/// zeroed). One pass per im2col row, reading each input row sequentially and writing straight
/// into the panels (a copy for stride 1, a fixed-stride gather otherwise, zeros for padding).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack_b_impl<const AVX2: bool>(
    xg: &[f32],
    g: &Geometry,
    spans: &[RowSpan],
    k0: usize,
    kc: usize,
    np: usize,
    buf: &mut [f32],
    ps: usize,
) {
    let hw = g.h * g.w;
    let taps = g.kh * g.kw;
    let (s, d) = (g.stride, g.dilation);
    let pad = g.padding as isize;
    if !np.is_multiple_of(NR) {
        let last = np / NR;
        buf[last * ps..last * ps + kc * NR].fill(0.0);
    }
    if taps == 1 && s == 1 && g.padding == 0 {
        // 1x1, stride 1, no padding: block column q of row kk is x[k0 + kk][p0 + q].
        let p0 = spans[0].ho * g.wo + spans[0].wa;
        for kk in 0..kc {
            if k0 + kk + 8 < xg.len() / hw {
                prefetch(&xg[(k0 + kk + 8) * hw + p0..][..np]);
            }
            put_row(buf, ps, kk, 0, &xg[(k0 + kk) * hw + p0..][..np]);
        }
        return;
    }
    // Per kernel column j: the input column offset and the valid output columns.
    let mut cols = [(0isize, 0usize, 0usize); 16];
    let cols: &[(isize, usize, usize)] = if g.kw <= cols.len() {
        for (j, cj) in cols.iter_mut().enumerate().take(g.kw) {
            let off = (j * d) as isize - pad;
            let (lo, hi) = valid_range(off, s, g.w, g.wo);
            *cj = (off, lo, hi);
        }
        &cols[..g.kw]
    } else {
        &[]
    };
    let (mut c, mut i, mut j) = (k0 / taps, (k0 % taps) / g.kw, k0 % g.kw);
    let channels = xg.len() / hw;
    for kk in 0..kc {
        let xc = &xg[c * hw..][..hw];
        if j == 0 {
            // Prefetch the input rows of the kernel row after next.
            let (c2, i2) = ((c * g.kh + i + 2) / g.kh, (i + 2) % g.kh);
            if c2 < channels {
                let xc2 = &xg[c2 * hw..][..hw];
                let span_w = (g.kw - 1) * d + 1;
                for sp in spans {
                    let h2 = (sp.ho * s + i2 * d) as isize - pad;
                    if h2 >= 0 && h2 < g.h as isize {
                        let w0 = ((sp.wa * s) as isize - pad).max(0) as usize;
                        let w1 = ((sp.wb - 1) * s + span_w)
                            .saturating_sub(g.padding)
                            .min(g.w);
                        if w0 < w1 {
                            prefetch(&xc2[h2 as usize * g.w + w0..h2 as usize * g.w + w1]);
                        }
                    }
                }
            }
        }
        let (off, lo, hi) = match cols.get(j) {
            Some(&cj) => cj,
            None => {
                let off = (j * d) as isize - pad;
                let (lo, hi) = valid_range(off, s, g.w, g.wo);
                (off, lo, hi)
            }
        };
        for sp in spans {
            let h_in = (sp.ho * s + i * d) as isize - pad;
            let (a, b) = (lo.clamp(sp.wa, sp.wb), hi.clamp(sp.wa, sp.wb));
            if h_in < 0 || h_in >= g.h as isize || a >= b {
                put_run::<AVX2>(buf, ps, kk, sp.q, sp.wb - sp.wa, None, s);
                continue;
            }
            // Output column wo reads xc[h_in * W + wo * s + off]: zeros, a strided copy of
            // the input row (running on into the plane, which the gather may over-read),
            // zeros.
            let qa = sp.q + (a - sp.wa);
            put_run::<AVX2>(buf, ps, kk, sp.q, a - sp.wa, None, s);
            let start = h_in as usize * g.w + ((a * s) as isize + off) as usize;
            put_run::<AVX2>(buf, ps, kk, qa, b - a, Some(&xc[start..]), s);
            put_run::<AVX2>(buf, ps, kk, qa + (b - a), sp.wb - b, None, s);
        }
        j += 1;
        if j == g.kw {
            j = 0;
            i += 1;
            if i == g.kh {
                i = 0;
                c += 1;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_b_avx2(
    xg: &[f32],
    g: &Geometry,
    spans: &[RowSpan],
    k0: usize,
    kc: usize,
    np: usize,
    buf: &mut [f32],
    ps: usize,
) {
    pack_b_impl::<true>(xg, g, spans, k0, kc, np, buf, ps)
}

/// [`pack_b_impl`], compiled for AVX2 where the CPU has it.
#[allow(clippy::too_many_arguments)]
fn pack_b(
    xg: &[f32],
    g: &Geometry,
    spans: &[RowSpan],
    k0: usize,
    kc: usize,
    np: usize,
    buf: &mut [f32],
    ps: usize,
    simd: Simd,
) {
    #[cfg(target_arch = "x86_64")]
    if simd.avx2() {
        // SAFETY: the CPU has AVX2 and FMA (`Simd::detect`).
        return unsafe { pack_b_avx2(xg, g, spans, k0, kc, np, buf, ps) };
    }
    let _ = simd;
    pack_b_impl::<false>(xg, g, spans, k0, kc, np, buf, ps)
}

/// The weights as [`conv_im2col`] reads them.
pub(super) enum ImWeights<'a> {
    /// Packed per group into `MR`-row panels, each output channel's weights multiplied by its
    /// scale while packing.
    Packed(Vec<PackedA>),
    /// Read in place (AVX-512F, or AVX2 + FMA): `O x C/groups x kh x kw`, with each output channel's scale
    /// applied to its outputs before the bias.
    #[cfg(target_arch = "x86_64")]
    Rows {
        /// Contiguous `O x C/groups x kh x kw`.
        w: &'a [f32],
        /// Per output channel.
        scale: Option<&'a [f64]>,
    },
}

/// Most output pixels (over the batch) for which [`pack_weights`] leaves the weights in place.
/// Packing costs a copy of the weights per call against a GEMM of `2 x pixels` flops per
/// weight; the packed kernel is a little faster per flop (one contiguous stream of `A`). Measured
/// with `conv_bench` (2 threads, minimum of 11-15 calls, old and new binaries alternating):
/// - AVX-512 Xeon: 1x1 convolutions at 256 and 1024 pixels run 4-29% faster in place, at 4096
///   pixels 3-10% slower.
/// - AVX2 AMD EPYC (Zen 3): at 256 pixels 1x1 2048 -> 512 4.25-5.45 -> 2.99-4.03 ms, 512 ->
///   2048 3.81-5.24 -> 3.08-3.63 ms, 3x3 512 -> 512 10.8-11.6 -> 7.4-10.3 ms; at 1024 pixels
///   1x1 1024 -> 256 3.66-4.34 -> 3.30-3.88 ms; at 2048 pixels level (1x1 1024 -> 256 and
///   256 -> 1024 at 32 x 64, 6.4-7.1 ms either way).
const ROWS_MAX_PIXELS: usize = 2048;

/// Contiguous `O x C/groups x kh x kw` `w` for [`conv_im2col`], the outputs of channel `o`
/// multiplied by `scale[o]` when given: read in place on AVX-512F or AVX2 + FMA for small
/// outputs (up to [`ROWS_MAX_PIXELS`]), packed per group otherwise.
pub(super) fn pack_weights<'a>(
    w: &'a [f32],
    scale: Option<&'a [f64]>,
    g: &Geometry,
    simd: Simd,
) -> ImWeights<'a> {
    #[cfg(target_arch = "x86_64")]
    {
        if simd.avx2() && g.n * g.ho * g.wo <= ROWS_MAX_PIXELS {
            return ImWeights::Rows { w, scale };
        }
    }
    let _ = simd;
    let (cg, og) = (g.c / g.groups, g.o / g.groups);
    let k = cg * g.kh * g.kw;
    ImWeights::Packed(
        (0..g.groups)
            .map(|gi| PackedA::new_scaled(&w[gi * og * k..], og, k, scale.map(|s| &s[gi * og..])))
            .collect(),
    )
}

/// Convolution of contiguous NCHW `x` with the weights `packed` by [`pack_weights`].
pub(super) fn conv_im2col(
    x: &[f32],
    weights: &ImWeights<'_>,
    bias: Option<&[f32]>,
    g: &Geometry,
    act: Activation,
    simd: Simd,
) -> Vec<f32> {
    let (cg, og) = (g.c / g.groups, g.o / g.groups);
    let k = cg * g.kh * g.kw;
    let (hw, p_out) = (g.h * g.w, g.ho * g.wo);
    let threads = rayon::current_num_threads().max(1);

    // Enough tasks to balance the threads (a busy machine delays some), each as large as
    // possible.
    let images = g.n * g.groups;
    let mut nc = NC_MAX;
    while nc > NC_MIN && images * p_out.div_ceil(nc) < 16 * threads {
        nc /= 2;
    }
    let nc = nc.min(p_out.div_ceil(NR) * NR);
    let chunks = p_out.div_ceil(nc);
    let panels = og.div_ceil(MR);
    let o_split = (2 * threads).div_ceil(images * chunks).clamp(1, panels);
    let o_blk = panels.div_ceil(o_split) * MR;
    let o_split = og.div_ceil(o_blk);

    // Uninitialised: every element is stored by the first k block of exactly one task.
    let len = g.n * g.o * p_out;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let optr = OutPtr(out.as_mut_ptr());
    let tasks = images * chunks * o_split;
    (0..tasks).into_par_iter().for_each(|t| {
        let (img, rest) = (t / (chunks * o_split), t % (chunks * o_split));
        let (chunk, ob) = (rest / o_split, rest % o_split);
        let (n, gi) = (img / g.groups, img % g.groups);
        let (p0, o0) = (chunk * nc, ob * o_blk);
        let np = nc.min(p_out - p0);
        let o1 = (o0 + o_blk).min(og);
        let xg = &x[(n * g.c + gi * cg) * hw..][..cg * hw];
        let row0 = n * g.o + gi * og + o0;
        // SAFETY: this task alone writes rows row0..row0 + o1 - o0 of the output, columns
        // p0..p0 + np (tasks differ in image, group, channel block or pixel block).
        let c = unsafe { optr.get().add(row0 * p_out + p0) };
        let spans = row_spans(g, p0, np);
        let kb = block_depth(k);
        with_scratch(packed_b_len(kb, np), |buf| {
            for k0 in (0..k).step_by(kb) {
                let kc = kb.min(k - k0);
                let ps = panel_stride(kc);
                pack_b(xg, g, &spans, k0, kc, np, buf, ps, simd);
                match weights {
                    // SAFETY: see above; o0 is a multiple of MR.
                    ImWeights::Packed(packed) => unsafe {
                        gemm_block(
                            &packed[gi],
                            o0,
                            o1,
                            (k0, k0 != 0),
                            buf,
                            ps,
                            np,
                            c,
                            p_out,
                            simd,
                        )
                    },
                    #[cfg(target_arch = "x86_64")]
                    ImWeights::Rows { w, .. } => {
                        let a = RowsA {
                            data: &w[gi * og * k..][..og * k],
                            k,
                        };
                        // SAFETY: `Rows` is built only with AVX-512F or AVX2 + FMA (`simd`, as
                        // detected); as above.
                        unsafe {
                            if simd.avx512() {
                                gemm_block_rows(a, o0, o1, (k0, kc), buf, ps, np, c, p_out)
                            } else {
                                gemm_block_rows_avx2(a, o0, o1, (k0, kc), buf, ps, np, c, p_out)
                            }
                        }
                    }
                }
            }
        });
        #[cfg(target_arch = "x86_64")]
        let scale = match weights {
            ImWeights::Rows { scale, .. } => *scale,
            ImWeights::Packed(_) => None,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let scale: Option<&[f64]> = None;
        if act != Activation::None || bias.is_some() || scale.is_some() {
            for o in o0..o1 {
                // SAFETY: row o of this task's block, written only by this task.
                let row = unsafe { std::slice::from_raw_parts_mut(c.add((o - o0) * p_out), np) };
                let s = scale.map_or(1.0, |s| s[gi * og + o] as f32);
                scale_bias_act(row, s, bias.map_or(0.0, |b| b[gi * og + o]), act);
            }
        }
    });
    // SAFETY: the tasks above partition the output and each stored all of its block.
    unsafe { out.set_len(len) };
    out
}
