//! AVX2 + FMA version of `kernel512.rs`'s register-tiled window attention (see `kernel.rs` for
//! what it computes).
//!
//! The same two small matrix products per window-head, with tiles sized for AVX2's 16 ymm
//! registers: scores `S = Q K^T + bias (+ mask)` six query rows by two key vectors (16
//! columns) at a time (12 accumulators, each key vector reused by six rows; a row's last
//! vector alone when their number is odd), the softmax in place on rows padded to a multiple of
//! 8, then `O = P V` six query rows by 16 output columns at a time (12 accumulators). The
//! padding key columns score `-inf` and get probability exactly 0; a `head_dim` that is not a
//! multiple of 8 computes its last vector on zero-padded values and stores only the real
//! columns (masked stores). Same exponential as the portable path (`exp_approx`), in 8 lanes,
//! four vectors at a time so that their dependency chains overlap; the row sums are reduced
//! after all the exponentials.
//!
//! Unlike the AVX-512 kernel, this one prefetches, while it computes one window-head, the
//! query / key / value parts (and, for a new window, the shift-mask rows) of the next one: on
//! a 128 x 128 map they come from memory, and waiting for them cost a tenth of the time.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::ops::Range;

use segkit_core::ops::fastmath::exp_avx2;

use super::kernel::{OutPtr, WindowAttention};

/// Most query rows of a score tile (two key vectors: 12 accumulators).
const SR: usize = 6;
/// Most query rows of an `O = P V` tile (two output vectors: 12 accumulators).
const OR: usize = 6;

/// Scratch buffers of one thread, sized for one window-head.
pub(super) struct Scratch {
    /// Key columns padded: `n`.. `np` (a multiple of 8).
    np: usize,
    /// Head dim padded to a multiple of 8.
    hdp: usize,
    /// `n x hd` queries (bias added).
    q: Vec<f32>,
    /// `hd x np` keys transposed (bias added); the padding columns repeat the last key.
    kt: Vec<f32>,
    /// `n x hdp` values (bias added), padding columns 0.
    v: Vec<f32>,
    /// `n x np` scores, then probabilities (unnormalised).
    s: Vec<f32>,
    /// Maximum score per query row.
    max: Vec<f32>,
    /// `n x 8` lane-wise partial sums of the probabilities per query row.
    sums: Vec<f32>,
    /// `1 / sum` per query row.
    inv: Vec<f32>,
}

impl Scratch {
    /// Buffers for windows of `n` positions and heads of `hd` channels.
    pub(super) fn new(n: usize, hd: usize) -> Self {
        let (np, hdp) = (n.div_ceil(8) * 8, hd.div_ceil(8) * 8);
        Self {
            np,
            hdp,
            q: vec![0.0; n * hd],
            kt: vec![0.0; hd * np],
            v: vec![0.0; n * hdp],
            s: vec![0.0; n * np],
            max: vec![0.0; n],
            sums: vec![0.0; 8 * n],
            inv: vec![0.0; n],
        }
    }

    /// Window positions.
    fn n(&self) -> usize {
        self.inv.len()
    }

    /// Head dim.
    fn hd(&self) -> usize {
        self.q.len() / self.inv.len()
    }
}

impl WindowAttention<'_> {
    /// Windows `jobs` (indices into `batch x nW`) with AVX2 + FMA, register-tiled.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `dst` as in `windows`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn windows_avx2_tiled(&self, jobs: Range<usize>, dst: &OutPtr) {
        let (l, c, n, heads) = (self.tokens, self.dim, self.window_area, self.heads);
        let hd = c / heads;
        let nw = self.index.len() / n;
        let mut sc = Scratch::new(n, hd);
        let zeros = vec![0f32; 3 * c];
        let mut rows: Vec<&[f32]> = Vec::with_capacity(n);
        let end = jobs.end;
        for job in jobs {
            let (b, w) = (job / nw, job % nw);
            let (idx, mask) = self.window_rows(b, w, &zeros, &mut rows);
            for h in 0..heads {
                let next = if h + 1 < heads {
                    Some((job, h + 1))
                } else {
                    (job + 1 < end).then_some((job + 1, 0))
                };
                sc.gather(&rows, self.qkv_bias, [h * hd, c + h * hd, 2 * c + h * hd]);
                let bias = &self.bias[h * n * n..(h + 1) * n * n];
                // SAFETY: AVX2 + FMA (this function's precondition); `bias` and `mask` hold
                // `n x n` floats.
                unsafe { sc.scores(bias, mask) };
                sc.softmax();
                for i0 in (0..n).step_by(OR) {
                    let rs = i0..(i0 + OR).min(n);
                    // Each row's destination: this head's part of its token's output row, or
                    // null for a padding token (its output is cropped away).
                    let mut out = [std::ptr::null_mut(); OR];
                    for (o, &t) in out.iter_mut().zip(&idx[rs.clone()]) {
                        let t = t as usize;
                        if t < l {
                            // SAFETY: `t < l` is a real token, so the offset is inside the
                            // `B x L x C` buffer's capacity.
                            *o = unsafe { dst.0.add((b * l + t) * c + h * hd) };
                        }
                    }
                    if let Some((job1, h1)) = next {
                        self.prefetch(job1, h1, rs.clone());
                    }
                    // SAFETY: AVX2 + FMA; `rs` holds at most `OR` rows < n. Every real token
                    // appears in exactly one window position, so its row part (`hd` elements)
                    // is written by this thread only, once, and the buffer outlives the
                    // threads.
                    unsafe { sc.weighted(rs.start, rs.len(), &out) };
                }
            }
        }
    }

    /// Prefetches what window-head `(job, h)` reads of its window positions `js`: the rows'
    /// query, key and value parts, and for `h = 0` the rows of the shift mask.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn prefetch(&self, job: usize, h: usize, js: Range<usize>) {
        let (l, c, n) = (self.tokens, self.dim, self.window_area);
        let hd = c / self.heads;
        let nw = self.index.len() / n;
        let (b, w) = (job / nw, job % nw);
        let lines = |x: &[f32]| {
            for k in (0..x.len()).step_by(16).chain([x.len() - 1]) {
                // SAFETY: `k < x.len()`; a prefetch has no effect on the program's state.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().add(k).cast()) };
            }
        };
        for j in js {
            let t = self.index[w * n + j] as usize;
            if t < l {
                let row = &self.qkv[(b * l + t) * 3 * c..(b * l + t + 1) * 3 * c];
                for part in [h * hd, c + h * hd, 2 * c + h * hd] {
                    lines(&row[part..part + hd]);
                }
            }
            if let (0, Some(m)) = (h, self.mask) {
                lines(&m[(w * n + j) * n..(w * n + j + 1) * n]);
            }
        }
    }
}

/// Calls `Self::$f::<R, $p>$args` for the runtime `$r`, `R` from the list, 1 for anything
/// else.
macro_rules! by_rows {
    ($f:ident, $r:expr, [$($R:literal)*], $p:literal, $args:tt) => {
        match $r {
            $($R => Self::$f::<$R, $p> $args,)*
            _ => Self::$f::<1, $p> $args,
        }
    };
}

/// All ones in lanes `0..k`, zero in the others.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn first_lanes(k: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(k as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// The 8 x 8 transpose: lane `j` of output `d` is lane `d` of input `j`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

impl Scratch {
    /// Copies one head's queries, keys (transposed) and values of the window's `rows` into
    /// the scratch, `bias` (the `3C` qkv bias) added; `at` holds the offsets of the head's
    /// query, key and value parts in a row and in `bias`. The padding key columns `n..np`
    /// repeat the last key (any finite value will do: their scores stay `-inf`).
    #[target_feature(enable = "avx2,fma")]
    fn gather(&mut self, rows: &[&[f32]], bias: &[f32], at: [usize; 3]) {
        let (n, np, hdp, hd) = (self.n(), self.np, self.hdp, self.hd());
        let hd8 = hd / 8 * 8;
        let [qh, kh, vh] = at.map(|a| a..a + hd);
        let (bq, bk, bv) = (&bias[qh.clone()], &bias[kh.clone()], &bias[vh.clone()]);
        for (j, row) in rows.iter().enumerate() {
            let (rq, rv) = (&row[qh.clone()], &row[vh.clone()]);
            let q = &mut self.q[j * hd..(j + 1) * hd];
            let v = &mut self.v[j * hdp..j * hdp + hd];
            // SAFETY: `d + 8 <= hd8 <= hd`, the length of every slice here.
            unsafe {
                for d in (0..hd8).step_by(8) {
                    let x = _mm256_loadu_ps(rq.as_ptr().add(d));
                    let x = _mm256_add_ps(x, _mm256_loadu_ps(bq.as_ptr().add(d)));
                    _mm256_storeu_ps(q.as_mut_ptr().add(d), x);
                    let x = _mm256_loadu_ps(rv.as_ptr().add(d));
                    let x = _mm256_add_ps(x, _mm256_loadu_ps(bv.as_ptr().add(d)));
                    _mm256_storeu_ps(v.as_mut_ptr().add(d), x);
                }
            }
            for d in hd8..hd {
                q[d] = rq[d] + bq[d];
                v[d] = rv[d] + bv[d];
            }
        }
        // Keys in 8 x 8 blocks.
        for j0 in (0..np).step_by(8) {
            let mut k: [&[f32]; 8] = [&[]; 8];
            for (jj, k) in k.iter_mut().enumerate() {
                *k = &rows[(j0 + jj).min(n - 1)][kh.clone()];
            }
            let kt = &mut self.kt[j0..];
            // SAFETY: `d0 + 8 <= hd8 <= hd`, the length of `bk` and of each `k[jj]`; the
            // stores write columns `j0..j0 + 8 <= np` of rows `d0..d0 + 8 <= hd` of the
            // `hd x np` keys.
            unsafe {
                for d0 in (0..hd8).step_by(8) {
                    let b = _mm256_loadu_ps(bk.as_ptr().add(d0));
                    let mut x = [b; 8];
                    for (x, r) in x.iter_mut().zip(&k) {
                        *x = _mm256_add_ps(_mm256_loadu_ps(r.as_ptr().add(d0)), b);
                    }
                    for (dd, &x) in transpose8(x).iter().enumerate() {
                        _mm256_storeu_ps(kt.as_mut_ptr().add((d0 + dd) * np), x);
                    }
                }
            }
            for d in hd8..hd {
                for (jj, r) in k.iter().enumerate() {
                    kt[d * np + jj] = r[d] + bk[d];
                }
            }
        }
    }

    /// `s = bias (+ mask) + Q K^T` (`bias`, `mask`: `n x n`), the padding columns `-inf`:
    /// tiles of up to `SR` rows x two key vectors (the last one alone if their number is odd).
    ///
    /// # Safety
    /// AVX2 + FMA; `bias` and `mask` hold `n x n` floats.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores(&mut self, bias: &[f32], mask: Option<&[f32]>) {
        let (n, vecs) = (self.n(), self.np / 8);
        for i0 in (0..n).step_by(SR) {
            let r = (n - i0).min(SR);
            for v0 in (0..vecs).step_by(2) {
                // SAFETY: rows `i0..i0 + r` < n, key vectors `v0..v0 + 2` (or only `v0`, the
                // last) < vecs.
                unsafe {
                    if v0 + 1 < vecs {
                        by_rows!(score_tile, r, [6 5 4 3 2], 2, (self, bias, mask, i0, v0))
                    } else {
                        by_rows!(score_tile, r, [6 5 4 3 2], 1, (self, bias, mask, i0, v0))
                    }
                }
            }
        }
    }

    /// One `R x 8P` tile of `scores`, rows from `i0`, columns from `8 v0`.
    ///
    /// # Safety
    /// As `scores`; rows `i0..i0 + R` < n, columns `8 v0 .. 8 (v0 + P)` <= np.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_tile<const R: usize, const P: usize>(
        &mut self,
        bias: &[f32],
        mask: Option<&[f32]>,
        i0: usize,
        v0: usize,
    ) {
        let (n, np, hd) = (self.n(), self.np, self.hd());
        let (sp, qp, kp) = (self.s.as_mut_ptr(), self.q.as_ptr(), self.kt.as_ptr());
        // SAFETY (whole body): the offsets stay inside the `n x n` bias and mask, the `n x np`
        // scores, the `n x hd` queries and the `hd x np` keys (this function's precondition);
        // the masked loads read only columns < n.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); P]; R];
            for (r, row) in acc.iter_mut().enumerate() {
                let at = (i0 + r) * n;
                for (p, a) in row.iter_mut().enumerate() {
                    let col = (v0 + p) * 8;
                    *a = if col + 8 <= n {
                        let x = _mm256_loadu_ps(bias.as_ptr().add(at + col));
                        match mask {
                            Some(m) => _mm256_add_ps(x, _mm256_loadu_ps(m.as_ptr().add(at + col))),
                            None => x,
                        }
                    } else {
                        // The last vector: columns `n..` are padding, `-inf`.
                        let live = first_lanes(n - col);
                        let x = _mm256_maskload_ps(bias.as_ptr().add(at + col), live);
                        let x = match mask {
                            Some(m) => {
                                _mm256_add_ps(x, _mm256_maskload_ps(m.as_ptr().add(at + col), live))
                            }
                            None => x,
                        };
                        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
                        _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(live))
                    };
                }
            }
            for d in 0..hd {
                let mut k = [_mm256_setzero_ps(); P];
                for (p, kv) in k.iter_mut().enumerate() {
                    *kv = _mm256_loadu_ps(kp.add(d * np + (v0 + p) * 8));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let qv = _mm256_broadcast_ss(&*qp.add((i0 + r) * hd + d));
                    for (a, &kv) in row.iter_mut().zip(&k) {
                        *a = _mm256_fmadd_ps(qv, kv, *a);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (p, a) in row.iter().enumerate() {
                    _mm256_storeu_ps(sp.add((i0 + r) * np + (v0 + p) * 8), *a);
                }
            }
        }
    }

    /// Each score row `s[i][j] = exp(s[i][j] - max_j s[i][j])` (padding `-inf` -> exactly 0),
    /// `inv[i] = 1 / sum_j s[i][j]`. In three passes (the maxima, the exponentials, the
    /// sums), so that the exponentials of one row wait for no reduction.
    #[target_feature(enable = "avx2,fma")]
    fn softmax(&mut self) {
        let np = self.np;
        for (m, row) in self.max.iter_mut().zip(self.s.chunks_exact(np)) {
            let mut v = load8(row);
            for k in (8..np).step_by(8) {
                v = _mm256_max_ps(v, load8(&row[k..]));
            }
            *m = hmax(v);
        }
        let rows = self.s.chunks_exact_mut(np).zip(&self.max);
        for ((row, &m), sum) in rows.zip(self.sums.chunks_exact_mut(8)) {
            let m = _mm256_set1_ps(m);
            let mut acc = _mm256_setzero_ps();
            let mut blocks = row.chunks_exact_mut(32);
            for b in &mut blocks {
                exp_block::<4>(b, m, &mut acc);
            }
            match blocks.into_remainder() {
                b if b.len() == 24 => exp_block::<3>(b, m, &mut acc),
                b if b.len() == 16 => exp_block::<2>(b, m, &mut acc),
                b if b.len() == 8 => exp_block::<1>(b, m, &mut acc),
                _ => {}
            }
            store8(sum, acc);
        }
        for (inv, sum) in self.inv.iter_mut().zip(self.sums.chunks_exact(8)) {
            *inv = 1.0 / hsum(load8(sum));
        }
    }

    /// `out[r][..hd] = inv[i0 + r] sum_j p[i0 + r][j] v[j]` for `r < rows` (`rows <= OR`):
    /// tiles of two output vectors, then the last one for an odd number; a null `out[r]` is
    /// skipped.
    ///
    /// # Safety
    /// AVX2 + FMA; rows `i0..i0 + rows` < n; each non-null `out[r]` is valid for writes of
    /// `hd` floats.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted(&self, i0: usize, rows: usize, out: &[*mut f32; OR]) {
        let vecs = self.hdp / 8;
        for c0 in (0..8 * (vecs - vecs % 2)).step_by(16) {
            // SAFETY: this function's precondition; columns `c0..c0 + 16` <= hdp.
            unsafe { by_rows!(pv_tile, rows, [6 5 4 3 2], 2, (self, i0, c0, out)) }
        }
        if vecs % 2 == 1 {
            let c0 = self.hdp - 8;
            // SAFETY: this function's precondition; columns `c0..c0 + 8` <= hdp.
            unsafe { by_rows!(pv_tile, rows, [6 5 4 3 2], 1, (self, i0, c0, out)) }
        }
    }

    /// One `R x 8Q` tile of `weighted`, output columns from `c0`.
    ///
    /// # Safety
    /// As `weighted`, with `rows = R`; columns `c0..c0 + 8Q` <= hdp.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pv_tile<const R: usize, const Q: usize>(
        &self,
        i0: usize,
        c0: usize,
        out: &[*mut f32; OR],
    ) {
        let (n, np, hdp, hd) = (self.n(), self.np, self.hdp, self.hd());
        let (pp, vp) = (self.s.as_ptr(), self.v.as_ptr());
        // SAFETY (whole body): the offsets stay inside the `n x np` probabilities and the
        // `n x hdp` values; the stores write columns `c0 + 8 qi ..` < hd of a non-null row
        // (the last vector masked to the columns < hd).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); Q]; R];
            for j in 0..n {
                let mut v = [_mm256_setzero_ps(); Q];
                for (qi, vv) in v.iter_mut().enumerate() {
                    *vv = _mm256_loadu_ps(vp.add(j * hdp + c0 + qi * 8));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let pv = _mm256_broadcast_ss(&*pp.add((i0 + r) * np + j));
                    for (a, &vv) in row.iter_mut().zip(&v) {
                        *a = _mm256_fmadd_ps(pv, vv, *a);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                let dst = out[r];
                if dst.is_null() {
                    continue;
                }
                let inv = _mm256_set1_ps(self.inv[i0 + r]);
                for (qi, a) in row.iter().enumerate() {
                    let col = c0 + qi * 8;
                    let x = _mm256_mul_ps(*a, inv);
                    if col + 8 <= hd {
                        _mm256_storeu_ps(dst.add(col), x);
                    } else {
                        _mm256_maskstore_ps(dst.add(col), first_lanes(hd - col), x);
                    }
                }
            }
        }
    }
}

/// `x[..8]` as a vector.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn load8(x: &[f32]) -> __m256 {
    let x = &x[..8];
    // SAFETY: 8 floats.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// `x[..8] = v`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn store8(x: &mut [f32], v: __m256) {
    let x = &mut x[..8];
    // SAFETY: 8 floats.
    unsafe { _mm256_storeu_ps(x.as_mut_ptr(), v) }
}

/// `p[k] = exp(p[k] - m)` over `8 N` floats (`-inf` -> exactly 0), added lane-wise to `sum`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp_block<const N: usize>(p: &mut [f32], m: __m256, sum: &mut __m256) {
    let p = &mut p[..8 * N];
    let mut x = [m; N];
    for (k, x) in x.iter_mut().enumerate() {
        *x = load8(&p[8 * k..]);
    }
    let mut e = x;
    for e in e.iter_mut() {
        *e = _mm256_sub_ps(*e, m);
    }
    // SAFETY: this function runs only where AVX2 and FMA were detected (its callers' check).
    e = unsafe { exp_avx2(e) };
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    for (k, (&x, &e)) in x.iter().zip(&e).enumerate() {
        // -inf (padding, or a fully masked entry) is exactly 0, as in the reference.
        let e = _mm256_and_ps(_mm256_cmp_ps::<_CMP_NEQ_OQ>(x, ninf), e);
        store8(&mut p[8 * k..], e);
        *sum = _mm256_add_ps(*sum, e);
    }
}

/// The largest of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hmax(x: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
    _mm_cvtss_f32(m)
}

/// The sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(x: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
#[path = "kernel256_tests.rs"]
mod tests;
