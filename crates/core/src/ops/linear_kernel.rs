//! `Y = X W^T` for a row-major `X` (`rows x din`) and `W` (`dout x din`), with the bias, an
//! exact GELU and a residual add applied to each output tile while it is still in L1.
//!
//! On AVX-512F the GEMM reads `X` in place: a tile's six rows of `X` are six row pointers (the
//! broadcast operand of [`rows_tile512`]); only `W^T` is packed, into [`NR`]-column
//! micro-panels (one copy of the small operand per call). Tasks own blocks of rows times blocks
//! of panels and loop over depth blocks of at most [`KC`], panel pairs (kept in L1) and row
//! tiles (streamed from L2), in that order; a tile gets the epilogue right after its last depth
//! block is stored. Elsewhere the caller runs the `gemm` crate and [`epilogue_rows`] after it.

use rayon::prelude::*;

use super::conv::kernel::{OutPtr, MR, NR};
use super::conv::rows_tile::rows_tile512;
use super::conv::Activation;
#[cfg(target_arch = "x86_64")]
use super::fastmath::gelu_erf_avx512;
use super::fastmath::{gelu_erf, has_avx2_fma};

/// Greatest depth of one block of `din`: four panels of it (32 KiB) stay in L1.
const KC: usize = 128;
/// Deepest product [`gemm_nt`] takes. Measured on Swin-T's layers (2 threads, AVX-512 Xeon,
/// `timing_against_gemm_crate`): with a bias + GELU or a residual epilogue and a depth of 96
/// or 192 it runs at 1.1x-1.4x the speed of the `gemm` crate plus a pass; from a depth of 384 on,
/// where the `gemm` crate's packed 64 x 6 kernel reaches 85-100% of FP32 peak, it is slower.
const FUSED_MAX_DEPTH: usize = 256;
/// Most rows per task, a multiple of [`MR`].
const MC: usize = 144;
/// Largest `W^T` packed on the calling thread.
const SERIAL_PACK: usize = 1 << 16;

/// What each output element gets after the product, in this order: `+ bias[col]`, the
/// activation, `residual[row, col] + .`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added per output column (`dout` elements).
    pub(crate) bias: Option<&'a [f32]>,
    /// `None`, ReLU or the exact GELU (never a sigmoid: [`super::linear_act`] runs it after).
    pub(crate) act: Activation,
    /// Added last (`rows x dout`, row-major).
    pub(crate) residual: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    fn is_identity(&self) -> bool {
        self.bias.is_none() && self.act == Activation::None && self.residual.is_none()
    }
}

/// `X W^T` with `epi` applied, on AVX-512F, where it beats the `gemm` crate followed by
/// [`epilogue_rows`]: a non-trivial epilogue and a depth of at most [`FUSED_MAX_DEPTH`].
/// `None` otherwise (the caller takes the `gemm` crate).
pub(crate) fn gemm_nt(
    x: &[f32],
    w: &[f32],
    (rows, din, dout): (usize, usize, usize),
    epi: Epilogue<'_>,
) -> Option<Vec<f32>> {
    if epi.is_identity() || din > FUSED_MAX_DEPTH {
        return None;
    }
    gemm_nt_any(x, w, (rows, din, dout), epi)
}

/// [`gemm_nt`] without the rule on shapes (any depth, any epilogue); `None` without AVX-512F
/// or with an empty dimension.
fn gemm_nt_any(
    x: &[f32],
    w: &[f32],
    (rows, din, dout): (usize, usize, usize),
    epi: Epilogue<'_>,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if din > 0 && rows > 0 && dout > 0 && std::is_x86_feature_detected!("avx512f") {
        return Some(gemm_nt_avx512(x, w, rows, din, dout, epi));
    }
    let _ = (x, w, rows, din, dout, epi);
    None
}

/// `W^T` packed: panel `jr` at `jr * ps`, element `(k, lane)` at `k NR + lane` = `W[jr NR +
/// lane, k]` (zero past `dout`).
#[cfg(target_arch = "x86_64")]
fn packed_wt(w: &[f32], din: usize, dout: usize, ps: usize) -> Vec<f32> {
    let panels = dout.div_ceil(NR);
    let mut wt = vec![0f32; panels * ps];
    let pack = |jr: usize, panel: &mut [f32]| {
        let lanes = NR.min(dout - jr * NR);
        for l in 0..lanes {
            let row = &w[(jr * NR + l) * din..][..din];
            for (k, &v) in row.iter().enumerate() {
                panel[k * NR + l] = v;
            }
        }
    };
    if wt.len() > SERIAL_PACK {
        wt.par_chunks_mut(ps)
            .enumerate()
            .for_each(|(jr, p)| pack(jr, p));
    } else {
        wt.chunks_mut(ps)
            .enumerate()
            .for_each(|(jr, p)| pack(jr, p));
    }
    wt
}

#[cfg(target_arch = "x86_64")]
fn gemm_nt_avx512(
    x: &[f32],
    w: &[f32],
    rows: usize,
    din: usize,
    dout: usize,
    epi: Epilogue<'_>,
) -> Vec<f32> {
    let panels = dout.div_ceil(NR);
    // One row more than a panel holds: the two panels of a pair never share L1 sets.
    let ps = (din + 1) * NR;
    let wt = packed_wt(w, din, dout, ps);
    let kc = din.div_ceil(din.div_ceil(KC));
    let threads = rayon::current_num_threads().max(1);
    let mut rb = MC;
    while rb > MR && rows.div_ceil(rb) * panels.div_ceil(2) < 4 * threads {
        rb -= MR;
    }
    let pb = if rows.div_ceil(rb) >= 4 * threads {
        panels
    } else {
        2.min(panels)
    };
    let (rblocks, pblocks) = (rows.div_ceil(rb), panels.div_ceil(pb));
    let mut out: Vec<f32> = Vec::with_capacity(rows * dout);
    let cptr = OutPtr(out.as_mut_ptr());
    (0..rblocks * pblocks).into_par_iter().for_each(|task| {
        let (i0, j0) = ((task / pblocks) * rb, (task % pblocks) * pb);
        let (nr, j1) = (rb.min(rows - i0), (j0 + pb).min(panels));
        for k0 in (0..din).step_by(kc) {
            let kc = kc.min(din - k0);
            let last = k0 + kc == din;
            let mut jr = j0;
            while jr < j1 {
                let quad = jr + 3 < j1 && dout >= (jr + 4) * NR;
                let pair = jr + 1 < j1 && dout >= (jr + 2) * NR;
                let cols = if quad {
                    4 * NR
                } else if pair {
                    2 * NR
                } else {
                    NR.min(dout - jr * NR)
                };
                let b = wt[jr * ps + k0 * NR..].as_ptr();
                for r0 in (0..nr).step_by(MR) {
                    let tile_rows = MR.min(nr - r0);
                    let a: [*const f32; MR] = std::array::from_fn(|r| {
                        let i = i0 + r0 + r.min(tile_rows - 1);
                        x[i * din + k0..][..kc].as_ptr()
                    });
                    // SAFETY: AVX-512F was detected; the six rows hold kc elements each (sliced
                    // above); the panels hold din * NR elements, from k0 on at least kc * NR
                    // (two panels `ps` apart for a pair); the C tile (rows i0 + r0.., columns
                    // jr * NR.., row stride dout) lies in this task's rectangle, which no other
                    // task touches, and was stored on the first depth block before any read.
                    unsafe {
                        let c = cptr.get().add((i0 + r0) * dout + jr * NR);
                        if quad {
                            rows_tile512::<4>(kc, a, b, ps, c, dout, k0 > 0, tile_rows, NR);
                        } else if pair {
                            rows_tile512::<2>(kc, a, b, ps, c, dout, k0 > 0, tile_rows, NR);
                        } else {
                            rows_tile512::<1>(kc, a, b, ps, c, dout, k0 > 0, tile_rows, cols);
                        }
                        if last && !epi.is_identity() {
                            for r in 0..tile_rows {
                                let row = i0 + r0 + r;
                                let dst = std::slice::from_raw_parts_mut(c.add(r * dout), cols);
                                let at = row * dout + jr * NR;
                                let e = Epilogue {
                                    bias: epi.bias.map(|b| &b[jr * NR..][..cols]),
                                    residual: epi.residual.map(|s| &s[at..][..cols]),
                                    act: epi.act,
                                };
                                epilogue_avx512(dst, e);
                            }
                        }
                    }
                }
                jr += if quad {
                    4
                } else if pair {
                    2
                } else {
                    1
                };
            }
        }
    });
    // SAFETY: the tasks' rectangles cover rows x dout, and each stored all of its elements on
    // its first depth block.
    unsafe { out.set_len(rows * dout) };
    out
}

/// [`epilogue_run`] on 16-lane vectors (a masked last one), with [`gelu_erf_avx512`].
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_avx512(dst: &mut [f32], e: Epilogue<'_>) {
    use std::arch::x86_64::*;
    let n = dst.len();
    for i in (0..n).step_by(16) {
        let m: __mmask16 = if n - i >= 16 {
            0xffff
        } else {
            ((1u32 << (n - i)) - 1) as __mmask16
        };
        // SAFETY: the masked lanes i..min(i + 16, n) lie inside `dst` and inside `e`'s slices,
        // which are as long as `dst`.
        unsafe {
            let mut v = _mm512_maskz_loadu_ps(m, dst.as_ptr().add(i));
            if let Some(b) = e.bias {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b.as_ptr().add(i)));
            }
            match e.act {
                Activation::Relu => v = _mm512_max_ps(v, _mm512_setzero_ps()),
                Activation::Gelu => v = gelu_erf_avx512(v),
                Activation::None | Activation::Sigmoid => {}
            }
            if let Some(s) = e.residual {
                v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, s.as_ptr().add(i)), v);
            }
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), m, v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn epilogue_avx2(dst: &mut [f32], e: Epilogue<'_>) {
    epilogue_run::<true>(dst, e)
}

/// `dst` (one run of an output row) gets `e`; `e`'s slices are aligned with `dst`.
#[inline(always)]
fn epilogue_run<const FMA: bool>(dst: &mut [f32], e: Epilogue<'_>) {
    if let Some(b) = e.bias {
        dst.iter_mut().zip(b).for_each(|(d, &b)| *d += b);
    }
    match e.act {
        Activation::Relu => dst.iter_mut().for_each(|d| *d = d.max(0.0)),
        Activation::Gelu => dst.iter_mut().for_each(|d| *d = gelu_erf::<FMA>(*d)),
        Activation::None | Activation::Sigmoid => {}
    }
    if let Some(s) = e.residual {
        dst.iter_mut().zip(s).for_each(|(d, &s)| *d += s);
    }
}

/// Applies `e` to the whole `rows x dout` output `y` (after a GEMM that had no epilogue), in
/// parallel over blocks of rows.
pub(crate) fn epilogue_rows(y: &mut [f32], dout: usize, e: Epilogue<'_>) {
    if e.is_identity() || dout == 0 {
        return;
    }
    let simd = has_avx2_fma();
    let block = (4096 / dout).max(1);
    y.par_chunks_mut(block * dout)
        .enumerate()
        .for_each(|(blk, chunk)| {
            for (r, dst) in chunk.chunks_exact_mut(dout).enumerate() {
                let at = (blk * block + r) * dout;
                let e = Epilogue {
                    residual: e.residual.map(|s| &s[at..][..dout]),
                    ..e
                };
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: AVX2 and FMA were detected on this CPU.
                    unsafe { epilogue_avx2(dst, e) };
                    continue;
                }
                let _ = simd;
                epilogue_run::<false>(dst, e);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], (rows, din, dout): (usize, usize, usize)) -> Vec<f64> {
        let mut y = vec![0f64; rows * dout];
        for i in 0..rows {
            for o in 0..dout {
                y[i * dout + o] = (0..din)
                    .map(|k| x[i * din + k] as f64 * w[o * din + k] as f64)
                    .sum();
            }
        }
        y
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
                (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Every element against an f64 GEMM with the epilogue, over shapes with ragged row tiles,
    /// single and partial panels, several depth blocks and (via `gemm_nt`'s task split) both
    /// row-block and panel-block tasks; and the same epilogue run over whole rows.
    #[test]
    fn matches_f64_reference() {
        for &(rows, din, dout) in &[
            (1, 1, 1),
            (7, 19, 37),
            (13, 96, 48),
            (200, 300, 17),
            (61, 520, 70),
            (300, 64, 96),
        ] {
            let (x, w) = (data(rows * din, 1), data(dout * din, 2));
            let bias = data(dout, 3);
            let res = data(rows * dout, 4);
            let want = reference(&x, &w, (rows, din, dout));
            for (with_bias, act, with_res) in [
                (false, Activation::None, false),
                (true, Activation::None, false),
                (true, Activation::Gelu, false),
                (true, Activation::Relu, false),
                (true, Activation::None, true),
                (false, Activation::Gelu, true),
                (false, Activation::Relu, true),
            ] {
                let epi = Epilogue {
                    bias: with_bias.then_some(&bias[..]),
                    act,
                    residual: with_res.then_some(&res[..]),
                };
                let expect: Vec<f64> = want
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let v = v + if with_bias {
                            bias[i % dout] as f64
                        } else {
                            0.0
                        };
                        let v = match act {
                            Activation::Gelu => gelu_f64(v),
                            Activation::Relu => v.max(0.0),
                            _ => v,
                        };
                        v + if with_res { res[i] as f64 } else { 0.0 }
                    })
                    .collect();
                let scale = (din as f64).sqrt() * 0.3;
                let mut via_pass: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                epilogue_rows(&mut via_pass, dout, epi);
                let mut outs = vec![("epilogue_rows", via_pass)];
                if let Some(y) = gemm_nt_any(&x, &w, (rows, din, dout), epi) {
                    outs.push(("gemm_nt", y));
                }
                for (name, got) in outs {
                    assert_eq!(got.len(), rows * dout);
                    for (i, (&g, &e)) in got.iter().zip(&expect).enumerate() {
                        assert!(
                            (g as f64 - e).abs() <= 2e-6 * scale.max(e.abs()),
                            "{name} {rows}x{din}x{dout} {with_bias}/{act:?}/{with_res} at {i}: \
                             {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    fn gelu_f64(x: f64) -> f64 {
        // erf by its Taylor series (|x| small here): enough terms for 1e-12.
        let z = x / std::f64::consts::SQRT_2;
        let (mut sum, mut term, mut k) = (0f64, z, 0f64);
        while term.abs() > 1e-16 || k < 3.0 {
            sum += term / (2.0 * k + 1.0);
            k += 1.0;
            term *= -z * z / k;
        }
        0.5 * x * (1.0 + sum * 2.0 / std::f64::consts::PI.sqrt())
    }

    /// Timing of the fused kernel against the `gemm` crate plus [`epilogue_rows`] on Swin-T's
    /// linear layers at 512 x 512, the basis of [`FUSED_MAX_DEPTH`] (run with `cargo test
    /// --release -p segkit-core timing_against_gemm_crate -- --ignored --nocapture`).
    #[test]
    #[ignore = "timing, not a check"]
    fn timing_against_gemm_crate() {
        for (rows, din, dout) in [
            (16384, 96, 384),
            (16384, 96, 96),
            (16384, 384, 96),
            (4096, 192, 768),
            (4096, 768, 192),
            (1024, 384, 1536),
            (256, 768, 3072),
        ] {
            let (x, w) = (data(rows * din, 1), data(dout * din, 2));
            let (bias, res) = (data(dout, 3), data(rows * dout, 4));
            let flop = 2.0 * (rows * din * dout) as f64;
            let gflops = |f: &dyn Fn() -> Vec<f32>| {
                let mut best = f64::MAX;
                for _ in 0..9 {
                    let t = std::time::Instant::now();
                    std::hint::black_box(f());
                    best = best.min(t.elapsed().as_secs_f64());
                }
                flop / best / 1e9
            };
            for (name, act, residual) in [
                ("bias", Activation::None, None),
                ("bias+gelu", Activation::Gelu, None),
                ("bias+residual", Activation::None, Some(&res[..])),
            ] {
                let epi = Epilogue {
                    bias: Some(&bias),
                    act,
                    residual,
                };
                let fused = gflops(&|| gemm_nt_any(&x, &w, (rows, din, dout), epi).unwrap());
                let crate_pass = gflops(&|| {
                    let mut y = crate::ops::linear::gemm_rows(&x, &w, Some(&bias), rows, din, dout);
                    epilogue_rows(&mut y, dout, Epilogue { bias: None, ..epi });
                    y
                });
                println!(
                    "{rows}x{din}x{dout} {name}: fused {fused:.0} GFLOP/s, gemm + pass \
                     {crate_pass:.0} GFLOP/s"
                );
            }
        }
    }
}
