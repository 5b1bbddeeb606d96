//! Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions, any padding and dilation.
//!
//! Each output tile is 2 x 2 outputs at rows `{b, b + d}` and columns `{b', b' + d}` (`d` the
//! dilation), computed from the 4 x 4 input samples at `b - p + d * t`, `b' - p + d * u`
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
//! `Y = A^T [(G g G^T) . (B^T x B)] A`. That turns the convolution into 16 GEMMs
//! `M_xi[O x T] = U_xi[O x C] * V_xi[C x T]`, one per position `xi` of the 4 x 4 transformed
//! tile, with 2.25x fewer multiplications than the direct form. The transforms only add,
//! subtract and halve, so the result stays within a few ulp of the direct sum.
//!
//! The weight transform writes the 16 `U` straight into the packed-GEMM layout; per task
//! (a block of tiles of one image) the input transform writes `V` straight into packed
//! micro-panels, the GEMMs accumulate `M` in a thread-local buffer, and the output transform
//! adds the bias, applies the activation and scatters the 2 x 2 results into the NCHW output.

use rayon::prelude::*;

use super::act::{bias_act, Simd};
use super::im2col::{gather, with_scratch};
use super::kernel::{block_depth, gemm_block, packed_b_len, panel_stride, OutPtr, PackedA, MR, NR};
use super::{Activation, Geometry};

/// Most tiles per task.
const NT_MAX: usize = 128;
/// Fewest tiles per task.
const NT_MIN: usize = 32;
/// Longest input row segment one micro-panel of tiles reads on the strided-copy path.
const SEG_MAX: usize = 512;
/// Most scratch (transformed inputs and GEMM outputs) per task, in floats.
const SCRATCH_MAX: usize = 2 << 20;

/// Most `O x C` for which the 16 transformed weight matrices (64 bytes per pair) are built:
/// PSPNet's 4096 -> 512 bottleneck (128 MiB while the conv runs). Up to 512 x 512 only, the
/// big head convs of PSPNet, DANet and FastFCN took the im2col path; with this limit their
/// forwards take 14-28% less time for 20-70 MB more forward memory (docs/PERFORMANCE.md).
const WEIGHT_PAIRS_MAX: usize = 4096 * 512;

/// Whether the Winograd path handles `g`, and is worth it: enough tiles to repay the weight
/// transform, and transformed weights of at most 128 MiB.
pub(super) fn applies(g: &Geometry) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.groups == 1
        && g.c >= 16
        && g.o >= 16
        && g.o * g.c <= WEIGHT_PAIRS_MAX
        && g.n * g.ho.div_ceil(2) * g.wo.div_ceil(2) >= 128
}

/// First outputs of the 2-output tiles along an axis of `len` outputs: every `b` with
/// `(b / d) % 2 == 0`, pairing `b` with `b + d`; ordered by phase `b % d` so that consecutive
/// tiles of one phase are `2 d` apart.
pub(super) fn bases(len: usize, d: usize) -> Vec<usize> {
    (0..d).flat_map(|r| (r..len).step_by(2 * d)).collect()
}

/// `G g G^T` for one 3x3 filter `g` (row-major), as 16 values in `xi = 4 * i + j` order.
#[inline(always)]
fn weight_transform(g: &[f32]) -> [f32; 16] {
    let mut t = [[0f32; 3]; 4];
    for col in 0..3 {
        let (a, b, c) = (g[col], g[3 + col], g[6 + col]);
        t[0][col] = a;
        t[1][col] = 0.5 * (a + b + c);
        t[2][col] = 0.5 * (a - b + c);
        t[3][col] = c;
    }
    let mut u = [0f32; 16];
    for (i, r) in t.iter().enumerate() {
        let (a, b, c) = (r[0], r[1], r[2]);
        u[4 * i] = a;
        u[4 * i + 1] = 0.5 * (a + b + c);
        u[4 * i + 2] = 0.5 * (a - b + c);
        u[4 * i + 3] = c;
    }
    u
}

/// Where each lane of one micro-panel of tiles reads its 4x4 inputs and writes its 2x2 outputs
/// (`u32::MAX`: outside the image / the output, or no tile in that lane).
struct PanelMap {
    input: [[u32; NR]; 16],
    output: [[u32; NR]; 4],
    /// `(h, w, s)` when lane `l` reads rows `h + d * t` and columns `w + s * l + d * u` (all
    /// lanes hold tiles of one tile row): then each row of lanes is a strided copy.
    uniform: Option<(isize, isize, usize)>,
}

fn panel_maps(g: &Geometry, bh: &[usize], bw: &[usize], t0: usize, nt: usize) -> Vec<PanelMap> {
    let (d, p) = (g.dilation as isize, g.padding as isize);
    (0..nt.div_ceil(NR))
        .map(|jr| {
            let mut m = PanelMap {
                input: [[u32::MAX; NR]; 16],
                output: [[u32::MAX; NR]; 4],
                uniform: None,
            };
            for lane in 0..NR.min(nt - jr * NR) {
                let t = t0 + jr * NR + lane;
                let (hb, wb) = (bh[t / bw.len()], bw[t % bw.len()]);
                for tt in 0..4 {
                    let h = hb as isize - p + d * tt as isize;
                    for u in 0..4 {
                        let w = wb as isize - p + d * u as isize;
                        if h >= 0 && h < g.h as isize && w >= 0 && w < g.w as isize {
                            m.input[4 * tt + u][lane] = (h as usize * g.w + w as usize) as u32;
                        }
                    }
                }
                for a in 0..2 {
                    let ho = hb + g.dilation * a;
                    for b in 0..2 {
                        let wo = wb + g.dilation * b;
                        if ho < g.ho && wo < g.wo {
                            m.output[2 * a + b][lane] = (ho * g.wo + wo) as u32;
                        }
                    }
                }
            }
            let first = t0 + jr * NR;
            if nt - jr * NR >= NR && first / bw.len() == (first + NR - 1) / bw.len() {
                let (hb, tj) = (bh[first / bw.len()], first % bw.len());
                let s = bw[tj + 1] - bw[tj];
                if (0..NR).all(|l| bw[tj + l] == bw[tj] + s * l)
                    && SEG_MAX > s * (NR - 1) + 3 * g.dilation
                {
                    m.uniform = Some((hb as isize - p, bw[tj] as isize - p, s));
                }
            }
            m
        })
        .collect()
}

/// Input transform of channels `k0..k0 + kc` for every panel of a task: `B^T x B` per tile,
/// written as `v[xi * vlen + jr * ps + kk * NR + lane]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn input_transform_impl<const AVX2: bool>(
    xn: &[f32],
    (hw, w, dil): (usize, usize, usize),
    maps: &[PanelMap],
    k0: usize,
    kc: usize,
    v: &mut [f32],
    vlen: usize,
    ps: usize,
) {
    let mut seg = [0f32; SEG_MAX];
    for kk in 0..kc {
        let xc = &xn[(k0 + kk) * hw..][..hw];
        for (jr, m) in maps.iter().enumerate() {
            let mut dv = [[0f32; NR]; 16];
            if let Some((h0, w0, s)) = m.uniform {
                // The lanes of row t read xc[h0 + d t][w0 + d u + s l]: a strided copy, from a
                // zero-padded copy of the row segment where it crosses the image border.
                let span = s * (NR - 1) + 3 * dil + 1;
                let inside = w0 >= 0 && w0 as usize + span <= w;
                for t in 0..4 {
                    let h = h0 + (dil * t) as isize;
                    if h < 0 || h as usize >= hw / w {
                        continue;
                    }
                    let row = &xc[h as usize * w..][..w];
                    let src: &[f32] = if inside {
                        &xc[h as usize * w + w0 as usize..]
                    } else {
                        seg[..span].fill(0.0);
                        let a = w0.max(0) as usize;
                        let b = ((w0 + span as isize).max(0) as usize).min(w);
                        if a < b {
                            seg[(a as isize - w0) as usize..][..b - a].copy_from_slice(&row[a..b]);
                        }
                        &seg[..]
                    };
                    for u in 0..4 {
                        gather::<AVX2>(&mut dv[4 * t + u], NR, &src[dil * u..], s);
                    }
                }
            } else {
                for (dst, idx) in dv.iter_mut().zip(&m.input) {
                    for (x, &i) in dst.iter_mut().zip(idx) {
                        *x = if (i as usize) < hw {
                            xc[i as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
            // Rows: r_t = B^T d along t, for each column u.
            let mut r = [[0f32; NR]; 16];
            for u in 0..4 {
                for l in 0..NR {
                    let (d0, d1, d2, d3) = (dv[u][l], dv[4 + u][l], dv[8 + u][l], dv[12 + u][l]);
                    r[u][l] = d0 - d2;
                    r[4 + u][l] = d1 + d2;
                    r[8 + u][l] = d2 - d1;
                    r[12 + u][l] = d1 - d3;
                }
            }
            // Columns, then store each xi's 16 lanes.
            let base = jr * ps + kk * NR;
            for i in 0..4 {
                let mut out = [[0f32; NR]; 4];
                for l in 0..NR {
                    let (a, b, c, e) = (
                        r[4 * i][l],
                        r[4 * i + 1][l],
                        r[4 * i + 2][l],
                        r[4 * i + 3][l],
                    );
                    out[0][l] = a - c;
                    out[1][l] = b + c;
                    out[2][l] = c - b;
                    out[3][l] = b - e;
                }
                for (j, o) in out.iter().enumerate() {
                    let xi = 4 * i + j;
                    v[xi * vlen + base..][..NR].copy_from_slice(o);
                }
            }
        }
    }
}

/// Output transform of rows `o0..o1` of `M` for every panel: `A^T m A` per tile, plus bias and
/// activation, scattered into the image's output planes `out` (`O x Ho*Wo`).
///
/// # Safety
/// `out` must be valid for writes of planes `o0..o1` of `Ho * Wo` elements, written by no one
/// else meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform_impl(
    mbuf: &[f32],
    mlen: usize,
    ldm: usize,
    maps: &[PanelMap],
    o0: usize,
    o1: usize,
    bias: Option<&[f32]>,
    act: Activation,
    out: *mut f32,
    plane: usize,
) {
    for o in o0..o1 {
        let b = bias.map_or(0.0, |b| b[o]);
        for (jr, m) in maps.iter().enumerate() {
            let mut mv = [[0f32; NR]; 16];
            for (xi, dst) in mv.iter_mut().enumerate() {
                dst.copy_from_slice(&mbuf[xi * mlen + (o - o0) * ldm + jr * NR..][..NR]);
            }
            let mut s = [[0f32; NR]; 8];
            for j in 0..4 {
                for l in 0..NR {
                    let (a, bb, c, e) = (mv[j][l], mv[4 + j][l], mv[8 + j][l], mv[12 + j][l]);
                    s[j][l] = a + bb + c;
                    s[4 + j][l] = bb - c - e;
                }
            }
            let mut y = [0f32; 4 * NR];
            for row in 0..2 {
                for l in 0..NR {
                    let (a, bb, c, e) = (
                        s[4 * row][l],
                        s[4 * row + 1][l],
                        s[4 * row + 2][l],
                        s[4 * row + 3][l],
                    );
                    y[(2 * row) * NR + l] = a + bb + c;
                    y[(2 * row + 1) * NR + l] = bb - c - e;
                }
            }
            bias_act(&mut y, b, act);
            for (pos, idx) in m.output.iter().enumerate() {
                for (l, &i) in idx.iter().enumerate() {
                    if (i as usize) < plane {
                        // SAFETY: i < Ho * Wo, inside plane o (caller).
                        unsafe { *out.add(o * plane + i as usize) = y[pos * NR + l] };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform_avx2(
    xn: &[f32],
    dims: (usize, usize, usize),
    maps: &[PanelMap],
    k0: usize,
    kc: usize,
    v: &mut [f32],
    vlen: usize,
    ps: usize,
) {
    input_transform_impl::<true>(xn, dims, maps, k0, kc, v, vlen, ps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform_avx2(
    mbuf: &[f32],
    mlen: usize,
    ldm: usize,
    maps: &[PanelMap],
    o0: usize,
    o1: usize,
    bias: Option<&[f32]>,
    act: Activation,
    out: *mut f32,
    plane: usize,
) {
    // SAFETY: forwarded.
    unsafe { output_transform_impl(mbuf, mlen, ldm, maps, o0, o1, bias, act, out, plane) }
}

/// The 16 transformed weight matrices `U_xi = (G g G^T)_xi` of contiguous `O x C x 3 x 3` `w`,
/// packed for the GEMM, the weights of output channel `o` multiplied by `scale[o]` when given.
pub(super) fn pack_weights(w: &[f32], scale: Option<&[f64]>, g: &Geometry) -> [PackedA; 16] {
    let (c, o) = (g.c, g.o);
    PackedA::new_multi_rows::<16>(o, c, |oi, ci0, out| {
        let taps = w[(oi * c + ci0) * 9..][..out.len() * 9].chunks_exact(9);
        match scale {
            // The taps as a folded copy would hold them, then the transform.
            Some(s) => {
                let s = s[oi];
                for (u, t) in out.iter_mut().zip(taps) {
                    let t: [f32; 9] = std::array::from_fn(|i| (t[i] as f64 * s) as f32);
                    *u = weight_transform(&t);
                }
            }
            None => {
                for (u, t) in out.iter_mut().zip(taps) {
                    *u = weight_transform(t);
                }
            }
        }
    })
}

/// Winograd convolution of contiguous NCHW `x` with the weights `u` packed by
/// [`pack_weights`].
pub(super) fn conv_winograd(
    x: &[f32],
    u: &[PackedA; 16],
    bias: Option<&[f32]>,
    g: &Geometry,
    act: Activation,
    simd: Simd,
) -> Vec<f32> {
    let (c, o) = (g.c, g.o);
    let (hw, plane) = (g.h * g.w, g.ho * g.wo);
    let bh = bases(g.ho, g.dilation);
    let bw = bases(g.wo, g.dilation);
    let tiles = bh.len() * bw.len();

    let threads = rayon::current_num_threads().max(1);
    // Each task streams all of U (16 O x C matrices) once, so big layers want many tiles per
    // task; the transformed inputs and outputs of those tiles (16 (C + O) floats each) must
    // still fit a few MiB, and every thread needs a few tasks.
    let mut nt = (o * c / 2048).clamp(NT_MIN, NT_MAX).next_power_of_two();
    while nt > NT_MIN && 16 * (c + o) * nt > SCRATCH_MAX {
        nt /= 2;
    }
    while nt > NR && g.n * tiles.div_ceil(nt) < 8 * threads {
        nt /= 2;
    }
    let nt = nt.min(tiles.div_ceil(NR) * NR);
    let chunks = tiles.div_ceil(nt);
    let panels = o.div_ceil(MR);
    let o_split = (2 * threads).div_ceil(g.n * chunks).clamp(1, panels);
    let o_blk = panels.div_ceil(o_split) * MR;
    let o_split = o.div_ceil(o_blk);

    let len = g.n * o * plane;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let optr = OutPtr(out.as_mut_ptr());
    let avx2 = simd.avx2();
    let ldm = nt.div_ceil(NR) * NR;
    let kb = block_depth(c);
    let vlen = packed_b_len(kb, nt);
    let mlen = o_blk * ldm;
    let dims = (hw, g.w, g.dilation);
    (0..g.n * chunks * o_split)
        .into_par_iter()
        .for_each(|task| {
            let (n, rest) = (task / (chunks * o_split), task % (chunks * o_split));
            let (chunk, ob) = (rest / o_split, rest % o_split);
            let t0 = chunk * nt;
            let ntc = nt.min(tiles - t0);
            let (o0, o1) = (ob * o_blk, ((ob + 1) * o_blk).min(o));
            let maps = panel_maps(g, &bh, &bw, t0, ntc);
            let xn = &x[n * c * hw..][..c * hw];
            with_scratch(16 * (vlen + mlen), |buf| {
                let (v, mbuf) = buf.split_at_mut(16 * vlen);
                for k0 in (0..c).step_by(kb) {
                    let kc = kb.min(c - k0);
                    let ps = panel_stride(kc);
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: the CPU has AVX2 and FMA.
                        unsafe { input_transform_avx2(xn, dims, &maps, k0, kc, v, vlen, ps) };
                    } else {
                        input_transform_impl::<false>(xn, dims, &maps, k0, kc, v, vlen, ps);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    input_transform_impl::<false>(xn, dims, &maps, k0, kc, v, vlen, ps);
                    for (xi, ux) in u.iter().enumerate() {
                        let mp = mbuf[xi * mlen..].as_mut_ptr();
                        // SAFETY: M_xi holds o1 - o0 rows of ldm >= ntc columns, private to this
                        // task; o0 is a multiple of MR.
                        unsafe {
                            gemm_block(
                                ux,
                                o0,
                                o1,
                                (k0, k0 != 0),
                                &v[xi * vlen..],
                                ps,
                                ntc,
                                mp,
                                ldm,
                                simd,
                            )
                        };
                    }
                }
                // SAFETY: this task alone writes planes o0..o1 of image n at the pixels of its
                // tiles (tasks differ in image, tile block or channel block).
                unsafe {
                    let outn = optr.get().add(n * o * plane);
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        output_transform_avx2(
                            mbuf, mlen, ldm, &maps, o0, o1, bias, act, outn, plane,
                        );
                        return;
                    }
                    output_transform_impl(mbuf, mlen, ldm, &maps, o0, o1, bias, act, outn, plane);
                }
            });
        });
    // SAFETY: every output pixel is in exactly one tile, every channel in one block, and each
    // task stored all of its tiles' pixels for its channels.
    unsafe { out.set_len(len) };
    out
}
