//! AVX-512F version of the fused window attention (see `kernel.rs` for what it computes).
//!
//! Where `kernel.rs` works one query row at a time (a 49-long score vector, six and a bit
//! vectors per pass), this one computes a window-head's attention as two register-tiled small
//! matrix products: scores `S = Q K^T + bias (+ mask)` four query rows by up to 64 key columns
//! at a time (16 zmm accumulators, each key vector reused by four rows), the softmax in place
//! on rows padded to a multiple of 16, then `O = P V` six query rows by up to 32 output
//! columns at a time (12 accumulators). The padding key columns score `-inf` and get
//! probability exactly 0; a `head_dim` that is not a multiple of 16 uses masked stores. Same
//! exponential as the portable path (`exp_approx`), in 16 lanes.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::kernel::{OutPtr, WindowAttention};

/// Scratch buffers of one thread, sized for one window-head.
pub(super) struct Scratch {
    /// Key columns padded: `n`.. `np` (a multiple of 16).
    np: usize,
    /// Head dim padded to a multiple of 16.
    hdp: usize,
    /// `n x hd` queries (bias added).
    q: Vec<f32>,
    /// `hd x np` keys transposed (bias added), padding columns 0.
    kt: Vec<f32>,
    /// `n x hdp` values (bias added), padding columns 0.
    v: Vec<f32>,
    /// `n x np` scores, then probabilities (unnormalised).
    s: Vec<f32>,
    /// `1 / sum` per query row.
    inv: Vec<f32>,
}

impl Scratch {
    pub(super) fn new(n: usize, hd: usize) -> Self {
        let (np, hdp) = (n.div_ceil(16) * 16, hd.div_ceil(16) * 16);
        Self {
            np,
            hdp,
            q: vec![0.0; n * hd],
            kt: vec![0.0; hd * np],
            v: vec![0.0; n * hdp],
            s: vec![0.0; n * np],
            inv: vec![0.0; n],
        }
    }
}

impl WindowAttention<'_> {
    /// Windows `jobs` (indices into `batch x nW`) with AVX-512F.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `dst` as in `windows`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn windows_avx512(&self, jobs: std::ops::Range<usize>, dst: &OutPtr) {
        let (l, c, n, heads) = (self.tokens, self.dim, self.window_area, self.heads);
        let hd = c / heads;
        let nw = self.index.len() / n;
        let mut sc = Scratch::new(n, hd);
        let (np, hdp) = (sc.np, sc.hdp);
        let zeros = vec![0f32; 3 * c];
        let mut rows: Vec<&[f32]> = Vec::with_capacity(n);
        for job in jobs {
            let (b, w) = (job / nw, job % nw);
            let (idx, mask) = self.window_rows(b, w, &zeros, &mut rows);
            for h in 0..heads {
                let (qh, kh, vh) = (h * hd, c + h * hd, 2 * c + h * hd);
                let bq = &self.qkv_bias[qh..qh + hd];
                let bk = &self.qkv_bias[kh..kh + hd];
                let bv = &self.qkv_bias[vh..vh + hd];
                for (j, row) in rows.iter().enumerate() {
                    for (d, (&x, &bias)) in row[kh..kh + hd].iter().zip(bk).enumerate() {
                        sc.kt[d * np + j] = x + bias;
                    }
                    let vr = sc.v[j * hdp..j * hdp + hd].iter_mut();
                    for ((o, &x), &bias) in vr.zip(&row[vh..vh + hd]).zip(bv) {
                        *o = x + bias;
                    }
                    let qr = sc.q[j * hd..(j + 1) * hd].iter_mut();
                    for ((o, &x), &bias) in qr.zip(&row[qh..qh + hd]).zip(bq) {
                        *o = x + bias;
                    }
                }
                // Scores start from the position bias (+ shift mask); padding columns -inf.
                let bias_h = &self.bias[h * n * n..(h + 1) * n * n];
                for i in 0..n {
                    let s = &mut sc.s[i * np..(i + 1) * np];
                    s[..n].copy_from_slice(&bias_h[i * n..(i + 1) * n]);
                    if let Some(m) = mask {
                        s[..n]
                            .iter_mut()
                            .zip(&m[i * n..(i + 1) * n])
                            .for_each(|(a, b)| *a += b);
                    }
                    s[n..].fill(f32::NEG_INFINITY);
                }
                // SAFETY: AVX-512F (this function's precondition); the buffers are sized by
                // `Scratch::new(n, hd)`, rows of `np` (a multiple of 16).
                unsafe {
                    scores(&mut sc.s, &sc.q, &sc.kt, n, hd, np);
                    for i in 0..n {
                        sc.inv[i] = 1.0 / softmax_row(&mut sc.s[i * np..(i + 1) * np]);
                    }
                }
                let mut i0 = 0;
                while i0 < n {
                    let r = (n - i0).min(6);
                    let mut out = [[0f32; 32]; 6];
                    let mut c0 = 0;
                    while c0 < hdp {
                        let width = (hdp - c0).min(32);
                        // SAFETY: AVX-512F; rows `i0..i0 + r` < n, columns < hdp.
                        unsafe { weighted_tile(&sc, n, i0, r, c0, width, &mut out) };
                        for (ri, o) in out.iter().enumerate().take(r) {
                            let t = idx[i0 + ri] as usize;
                            if t >= l {
                                continue; // a padding token's output is cropped away
                            }
                            let inv = sc.inv[i0 + ri];
                            let cols = width.min(hd - c0);
                            // SAFETY: `t < l` is a real token; every real token appears in
                            // exactly one window position, so this part of its row (`cols`
                            // elements inside the buffer's capacity) is written by this thread
                            // only, once, and the buffer outlives the threads.
                            let row = unsafe { dst.0.add((b * l + t) * c + h * hd + c0) };
                            for (j, &x) in o.iter().take(cols).enumerate() {
                                // SAFETY: j < cols (as above); a plain write.
                                unsafe { row.add(j).write(x * inv) };
                            }
                        }
                        c0 += width;
                    }
                    i0 += r;
                }
            }
        }
    }
}

/// `s[i][j] += sum_d q[i][d] kt[d][j]` for all `n` rows and `np` columns: tiles of 4 rows x up
/// to 4 vectors of 16 columns.
#[target_feature(enable = "avx512f")]
unsafe fn scores(s: &mut [f32], q: &[f32], kt: &[f32], n: usize, hd: usize, np: usize) {
    let vecs = np / 16;
    let mut i0 = 0;
    while i0 < n {
        let r = (n - i0).min(4);
        let mut v0 = 0;
        while v0 < vecs {
            let p = (vecs - v0).min(4);
            // SAFETY: rows `i0..i0 + r` < n, columns `16 v0 .. 16 (v0 + p)` <= np; the slices
            // are `n x np`, `n x hd` and `hd x np`.
            unsafe {
                match (r, p) {
                    (4, 4) => score_tile::<4, 4>(s, q, kt, i0, v0, hd, np),
                    (4, 3) => score_tile::<4, 3>(s, q, kt, i0, v0, hd, np),
                    (4, 2) => score_tile::<4, 2>(s, q, kt, i0, v0, hd, np),
                    (4, _) => score_tile::<4, 1>(s, q, kt, i0, v0, hd, np),
                    (3, 4) => score_tile::<3, 4>(s, q, kt, i0, v0, hd, np),
                    (3, 3) => score_tile::<3, 3>(s, q, kt, i0, v0, hd, np),
                    (3, 2) => score_tile::<3, 2>(s, q, kt, i0, v0, hd, np),
                    (3, _) => score_tile::<3, 1>(s, q, kt, i0, v0, hd, np),
                    (2, 4) => score_tile::<2, 4>(s, q, kt, i0, v0, hd, np),
                    (2, 3) => score_tile::<2, 3>(s, q, kt, i0, v0, hd, np),
                    (2, 2) => score_tile::<2, 2>(s, q, kt, i0, v0, hd, np),
                    (2, _) => score_tile::<2, 1>(s, q, kt, i0, v0, hd, np),
                    (_, 4) => score_tile::<1, 4>(s, q, kt, i0, v0, hd, np),
                    (_, 3) => score_tile::<1, 3>(s, q, kt, i0, v0, hd, np),
                    (_, 2) => score_tile::<1, 2>(s, q, kt, i0, v0, hd, np),
                    (_, _) => score_tile::<1, 1>(s, q, kt, i0, v0, hd, np),
                }
            }
            v0 += p;
        }
        i0 += r;
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn score_tile<const R: usize, const P: usize>(
    s: &mut [f32],
    q: &[f32],
    kt: &[f32],
    i0: usize,
    v0: usize,
    hd: usize,
    np: usize,
) {
    let (sp, qp, kp) = (s.as_mut_ptr(), q.as_ptr(), kt.as_ptr());
    // SAFETY (whole body): see `scores`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            for (p, a) in row.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(sp.add((i0 + r) * np + (v0 + p) * 16));
            }
        }
        for d in 0..hd {
            let mut k = [_mm512_setzero_ps(); P];
            for (p, kv) in k.iter_mut().enumerate() {
                *kv = _mm512_loadu_ps(kp.add(d * np + (v0 + p) * 16));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(*qp.add((i0 + r) * hd + d));
                for (a, &kv) in row.iter_mut().zip(&k) {
                    *a = _mm512_fmadd_ps(qv, kv, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (p, a) in row.iter().enumerate() {
                _mm512_storeu_ps(sp.add((i0 + r) * np + (v0 + p) * 16), *a);
            }
        }
    }
}

/// `s[j] = exp(s[j] - max s)` over a row padded to a multiple of 16 (padding `-inf` -> exactly
/// 0); returns the sum.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row(s: &mut [f32]) -> f32 {
    let p = s.as_mut_ptr();
    // SAFETY: `s.len()` is a multiple of 16.
    unsafe {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for k in (0..s.len()).step_by(16) {
            m = _mm512_max_ps(m, _mm512_loadu_ps(p.add(k)));
        }
        let m = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        for k in (0..s.len()).step_by(16) {
            let x = _mm512_loadu_ps(p.add(k));
            let e = exp512(_mm512_sub_ps(x, m));
            // -inf (padding, or a fully masked entry) is exactly 0, as in the reference.
            let live = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(x, _mm512_set1_ps(f32::NEG_INFINITY));
            let e = _mm512_maskz_mov_ps(live, e);
            _mm512_storeu_ps(p.add(k), e);
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_reduce_add_ps(sum)
    }
}

/// `out[r][..width] = sum_j p[i0 + r][j] v[j][c0..c0 + width]` for `r < rows` (`rows <= 6`,
/// `width` 16 or 32).
#[target_feature(enable = "avx512f")]
unsafe fn weighted_tile(
    sc: &Scratch,
    n: usize,
    i0: usize,
    rows: usize,
    c0: usize,
    width: usize,
    out: &mut [[f32; 32]; 6],
) {
    // SAFETY: rows `i0..i0 + rows` < n, columns `c0..c0 + width` <= hdp.
    unsafe {
        match (rows, width) {
            (6, 32) => pv_tile::<6, 2>(sc, n, i0, c0, out),
            (5, 32) => pv_tile::<5, 2>(sc, n, i0, c0, out),
            (4, 32) => pv_tile::<4, 2>(sc, n, i0, c0, out),
            (3, 32) => pv_tile::<3, 2>(sc, n, i0, c0, out),
            (2, 32) => pv_tile::<2, 2>(sc, n, i0, c0, out),
            (_, 32) => pv_tile::<1, 2>(sc, n, i0, c0, out),
            (6, _) => pv_tile::<6, 1>(sc, n, i0, c0, out),
            (5, _) => pv_tile::<5, 1>(sc, n, i0, c0, out),
            (4, _) => pv_tile::<4, 1>(sc, n, i0, c0, out),
            (3, _) => pv_tile::<3, 1>(sc, n, i0, c0, out),
            (2, _) => pv_tile::<2, 1>(sc, n, i0, c0, out),
            (_, _) => pv_tile::<1, 1>(sc, n, i0, c0, out),
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pv_tile<const R: usize, const Q: usize>(
    sc: &Scratch,
    n: usize,
    i0: usize,
    c0: usize,
    out: &mut [[f32; 32]; 6],
) {
    let (pp, vp, np, hdp) = (sc.s.as_ptr(), sc.v.as_ptr(), sc.np, sc.hdp);
    // SAFETY (whole body): see `weighted_tile`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); Q]; R];
        for j in 0..n {
            let mut v = [_mm512_setzero_ps(); Q];
            for (qi, vv) in v.iter_mut().enumerate() {
                *vv = _mm512_loadu_ps(vp.add(j * hdp + c0 + qi * 16));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(*pp.add((i0 + r) * np + j));
                for (a, &vv) in row.iter_mut().zip(&v) {
                    *a = _mm512_fmadd_ps(pv, vv, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (qi, a) in row.iter().enumerate() {
                _mm512_storeu_ps(out[r].as_mut_ptr().add(qi * 16), *a);
            }
        }
    }
}

/// `exp(x)` in 16 lanes, the same steps as `kernel::exp_approx` (range reduction and the
/// degree-6 Cephes polynomial; flushes to `exp(-87)` below -87).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp512(x: __m512) -> __m512 {
    let round = _mm512_set1_ps(12_582_912.0); // 1.5 * 2^23
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let kf = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), round);
    let k = _mm512_sub_epi32(
        _mm512_castps_si512(kf),
        _mm512_set1_epi32(12_582_912f32.to_bits() as i32),
    );
    let kf = _mm512_sub_ps(kf, round);
    let r = _mm512_fmadd_ps(kf, _mm512_set1_ps(-0.693_359_4), x);
    let r = _mm512_fmadd_ps(kf, _mm512_set1_ps(2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
    let e = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        k,
        _mm512_set1_epi32(127),
    )));
    _mm512_mul_ps(e, scale)
}

#[cfg(test)]
mod tests {
    use super::super::kernel::TestCase;
    use super::*;

    /// The AVX-512 kernel equals the portable one (same exponential, different summation
    /// order) on padded, shifted maps, with head dims that are and are not multiples of 16
    /// and windows of 49 and 144 positions.
    #[test]
    fn matches_the_portable_kernel() {
        if !segkit_core::ops::cpu_has_avx512f() {
            eprintln!("skipped: no AVX-512F on this CPU");
            return;
        }
        for case in [
            (17, 23, 7, 3, 96, 3),
            (14, 14, 7, 0, 40, 2),
            (26, 13, 12, 6, 64, 2),
            (5, 9, 7, 0, 48, 1),
        ] {
            let t = TestCase::new(case);
            let want = t.portable();
            let mut got = vec![f32::NAN; want.len()];
            // SAFETY: AVX-512F detected above.
            unsafe {
                t.attention()
                    .windows_avx512(t.jobs(), &OutPtr(got.as_mut_ptr()))
            };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{case:?} [{i}]: {g} vs {w}"
                );
            }
        }
    }
}
