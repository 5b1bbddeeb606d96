//! The weight gradient of a 3x3 stride-1 convolution by Winograd's transposed algorithm.
//!
//! The forward pass computes each 2 x 2 output tile as `Y = A^T [(G g G^T) . (B^T X B)] A`
//! (`winograd`). The weight gradient is the derivative of `sum dY . Y` in `g`, which by the
//! same bilinear form is
//!
//! `dW = G^T [ sum_tiles (A dY A^T) . (B^T X B) ] G`,
//!
//! summed over every tile of every image (Lavin & Gray 2016; the "transposed" F(3x3, 2x2) of
//! the weight-update pass). With the 16 positions `xi` of the 4 x 4 transformed tile that is 16
//! GEMMs `M_xi[O x C] += P_xi[O x T] * V_xi[T x C]` over the tiles `T` (`P = A dY A^T`, `V =
//! B^T X B`, the forward's input transform), then `G^T M G` per `(o, c)`: 16 multiply-adds per
//! tile instead of the direct form's 36 (2.25x fewer).
//!
//! Tiles are processed in chunks (bounded transformed buffers), the 16 GEMMs of a chunk in
//! parallel, the chunks in order, so the result does not depend on the thread count. The tile
//! grid is the forward's (`winograd::bases`: tiles of outputs `{b, b + d}` per axis, any
//! dilation and padding); output positions outside the map contribute zero.

use rayon::prelude::*;

use super::winograd::bases;
use super::Geometry;

/// Most floats of one chunk's transformed tiles (`16 (C + O) Tb`).
const CHUNK_FLOATS: usize = 1 << 24;

/// One tile: its image, the 16 input offsets of its 4 x 4 samples and the 4 output offsets of
/// its 2 x 2 outputs within the image's plane (`u32::MAX`: padding / outside the output).
struct Tile {
    n: usize,
    input: [u32; 16],
    output: [u32; 4],
}

fn tiles(g: &Geometry) -> Vec<Tile> {
    let (d, p) = (g.dilation as isize, g.padding as isize);
    let bh = bases(g.ho, g.dilation);
    let bw = bases(g.wo, g.dilation);
    let mut v = Vec::with_capacity(g.n * bh.len() * bw.len());
    for n in 0..g.n {
        for &hb in &bh {
            for &wb in &bw {
                let mut t = Tile {
                    n,
                    input: [u32::MAX; 16],
                    output: [u32::MAX; 4],
                };
                for a in 0..4 {
                    let h = hb as isize - p + d * a as isize;
                    for b in 0..4 {
                        let w = wb as isize - p + d * b as isize;
                        if h >= 0 && h < g.h as isize && w >= 0 && w < g.w as isize {
                            t.input[4 * a + b] = (h as usize * g.w + w as usize) as u32;
                        }
                    }
                }
                for a in 0..2 {
                    for b in 0..2 {
                        let (ho, wo) = (hb + g.dilation * a, wb + g.dilation * b);
                        if ho < g.ho && wo < g.wo {
                            t.output[2 * a + b] = (ho * g.wo + wo) as u32;
                        }
                    }
                }
                v.push(t);
            }
        }
    }
    v
}

/// `B^T X B` of one 4 x 4 tile (row-major in, `xi = 4 a + b` out), the forward's transform.
#[inline(always)]
fn input_transform(x: [f32; 16]) -> [f32; 16] {
    let bt = |d: [f32; 4]| [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]];
    let mut r = [[0f32; 4]; 4];
    for (u, col) in r.iter_mut().enumerate() {
        *col = bt([x[u], x[4 + u], x[8 + u], x[12 + u]]);
    }
    let mut out = [0f32; 16];
    for a in 0..4 {
        let row = bt([r[0][a], r[1][a], r[2][a], r[3][a]]);
        out[4 * a..4 * a + 4].copy_from_slice(&row);
    }
    out
}

/// `A dY A^T` of one 2 x 2 output-gradient tile (`A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`).
#[inline(always)]
fn output_grad_transform(y: [f32; 4]) -> [f32; 16] {
    let a = |y0: f32, y1: f32| [y0, y0 + y1, y0 - y1, -y1];
    let c0 = a(y[0], y[2]);
    let c1 = a(y[1], y[3]);
    let mut out = [0f32; 16];
    for i in 0..4 {
        out[4 * i..4 * i + 4].copy_from_slice(&a(c0[i], c1[i]));
    }
    out
}

/// `G^T M G` (`G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]`): the 3 x 3 taps.
#[inline(always)]
fn weight_output_transform(m: [f32; 16]) -> [f32; 9] {
    let gt = |v: [f32; 4]| {
        [
            v[0] + 0.5 * (v[1] + v[2]),
            0.5 * (v[1] - v[2]),
            0.5 * (v[1] + v[2]) + v[3],
        ]
    };
    let mut cols = [[0f32; 3]; 4];
    for (b, col) in cols.iter_mut().enumerate() {
        *col = gt([m[b], m[4 + b], m[8 + b], m[12 + b]]);
    }
    let mut out = [0f32; 9];
    for i in 0..3 {
        let row = gt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
        out[3 * i..3 * i + 3].copy_from_slice(&row);
    }
    out
}

/// The 16 transformed values of every tile of `chunk`, per channel of `src` (`N x channels x
/// plane`): `out[ch * 16 tb + xi * tb + t] = transform(samples of tile t at taps(tile))`,
/// samples outside the plane (`u32::MAX`) being 0. Parallel over channels.
#[allow(clippy::too_many_arguments)]
fn transform_tiles<const K: usize>(
    out: &mut [f32],
    tb: usize,
    chunk: &[Tile],
    src: &[f32],
    channels: usize,
    plane: usize,
    taps: impl Fn(&Tile) -> &[u32; K] + Sync,
    transform: impl Fn([f32; K]) -> [f32; 16] + Sync,
) {
    out.par_chunks_mut(16 * tb)
        .enumerate()
        .for_each(|(ch, dst)| {
            for (t, tile) in chunk.iter().enumerate() {
                let sc = &src[(tile.n * channels + ch) * plane..][..plane];
                let idx = taps(tile);
                let s: [f32; K] = std::array::from_fn(|i| {
                    let k = idx[i] as usize;
                    if k < plane {
                        sc[k]
                    } else {
                        0.0
                    }
                });
                for (xi, val) in transform(s).into_iter().enumerate() {
                    dst[xi * tb + t] = val;
                }
            }
        });
}

/// Whether [`weight_grad_winograd`] handles `g`: the forward's Winograd geometry (3x3,
/// stride 1, one group) and at least [`MIN_CHANNELS`] input channels.
pub(super) fn applies(g: &Geometry) -> bool {
    super::winograd::applies(g) && g.c >= MIN_CHANNELS
}

/// Fewest input channels for the Winograd weight gradient. The transforms (scalar gathers,
/// `(C + O) T` of them) cost as much as the GEMMs save below this. Measured per layer in a
/// PSPNet-R50-D8 step (2 x 512 x 512; im2col GEMMs -> Winograd): 4096 -> 512 channels
/// 1017 -> 477 ms, 1024 -> 256 136 -> 74 ms; but 512 -> 512 125-130 -> 134-142 ms,
/// 256 -> 256 29-37 -> 51-58 ms, 64 -> 64 11 -> 34-37 ms.
const MIN_CHANNELS: usize = 1024;

/// `dL/dw` (`O x C x 3 x 3`, row-major) from contiguous `x` (`N x C x H x W`) and `dy`
/// (`N x O x Ho x Wo`).
pub(super) fn weight_grad_winograd(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (c, o) = (g.c, g.o);
    let (hw, plane) = (g.h * g.w, g.ho * g.wo);
    let all = tiles(g);
    let tb = (CHUNK_FLOATS / (16 * (c + o))).clamp(16, 1024);
    // M_xi (O x C) for the 16 positions, accumulated chunk by chunk.
    let mut m = vec![0f32; 16 * o * c];
    let mut v = vec![0f32; c * 16 * tb];
    let mut p = vec![0f32; o * 16 * tb];
    for chunk in all.chunks(tb) {
        let nt = chunk.len();
        // V[c][xi][t] and P[o][xi][t] (stride tb between positions).
        transform_tiles(&mut v, tb, chunk, x, c, hw, |t| &t.input, input_transform);
        transform_tiles(
            &mut p,
            tb,
            chunk,
            dy,
            o,
            plane,
            |t| &t.output,
            output_grad_transform,
        );
        m.par_chunks_mut(o * c).enumerate().for_each(|(xi, mx)| {
            // SAFETY: mx is o x c row-major; lhs is P_xi (o x nt): element (oi, t) at
            // oi * 16 tb + xi tb + t; rhs is V_xi^T (nt x c): element (t, ci) at
            // ci * 16 tb + xi tb + t; every index lies inside its buffer.
            unsafe {
                gemm::gemm(
                    o,
                    c,
                    nt,
                    mx.as_mut_ptr(),
                    1,
                    c as isize,
                    true,
                    p[xi * tb..].as_ptr(),
                    1,
                    (16 * tb) as isize,
                    v[xi * tb..].as_ptr(),
                    (16 * tb) as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    }
    let mut dw = vec![0f32; o * c * 9];
    let pairs = o * c;
    dw.par_chunks_mut(9 * c).enumerate().for_each(|(oi, row)| {
        for (ci, taps) in row.chunks_exact_mut(9).enumerate() {
            let k = oi * c + ci;
            let mv: [f32; 16] = std::array::from_fn(|xi| m[xi * pairs + k]);
            taps.copy_from_slice(&weight_output_transform(mv));
        }
    });
    dw
}
