//! The packed GEMM block of [`super::kernel`] with `A` (the weights, `m x k` row-major) read in
//! place through row pointers instead of packed into `MR`-row panels: no per-call copy of the
//! weights. AVX-512F; each tile broadcasts its six rows' elements from six pointers into `A`
//! (sequential streams, one per row) while `B` is the same packed micro-panels; on CPUs with
//! AVX2 + FMA and no AVX-512F, [`gemm_block_rows_avx2`] does the same with [`tile_avx2`]. The
//! direct weight gradient (`wgrad_direct`) runs its tiles through [`tile`] or [`tile_avx2`].

use std::arch::x86_64::*;

use super::kernel::x86::{for_each_tile512, store_rows512};
use super::kernel::{MC, MR, NR};

/// `A` in place: rows of `k` contiguous elements.
#[derive(Clone, Copy)]
pub(super) struct RowsA<'a> {
    /// Row-major `m x k`.
    pub(super) data: &'a [f32],
    /// Depth.
    pub(super) k: usize,
}

/// `C[o0..o1, 0..np] (+)= A[o0..o1, k0..k0+kc] * B`, as [`super::kernel::gemm_block`] with `A`
/// read in place. Accumulates into `C` unless `k0 == 0`.
///
/// # Safety
/// The CPU has AVX-512F; `b` holds the `kc x np` block as micro-panels `ps` apart (each at
/// least `kc * NR`); `c` is valid for reads and writes of rows `0..o1 - o0` of `np` elements,
/// `ldc` apart, and nobody else accesses them meanwhile; `k0 + kc <= a.k`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_block_rows(
    a: RowsA<'_>,
    o0: usize,
    o1: usize,
    (k0, kc): (usize, usize),
    b: &[f32],
    ps: usize,
    np: usize,
    c: *mut f32,
    ldc: usize,
) {
    let acc = k0 != 0;
    for_each_tile512(o0, o1, np, |r0, rows, jr, pair, cols| {
        let ap: [*const f32; MR] =
            std::array::from_fn(|r| a.data[(r0 + r.min(rows - 1)) * a.k + k0..][..kc].as_ptr());
        // SAFETY: the six rows hold kc elements each (sliced above); the panels hold kc x NR
        // elements, `ps` apart (caller); the tile lies inside C's rows 0..o1 - o0 and columns
        // 0..np (caller).
        unsafe {
            let ct = c.add((r0 - o0) * ldc + jr * NR);
            let bp = b[jr * ps..].as_ptr();
            if pair {
                tile::<2>(kc, ap, bp, ps, ct, ldc, acc, rows, NR);
            } else {
                tile::<1>(kc, ap, bp, ps, ct, ldc, acc, rows, cols);
            }
        }
    });
}

/// [`gemm_block_rows`] on AVX2 + FMA: the loops of [`super::kernel::gemm_block`] (blocks of
/// [`MC`] rows, then micro-panels, then tiles of [`MR`] rows) with each tile's rows of `A` read
/// in place by [`tile_avx2`]. Accumulates into `C` unless `k0 == 0`.
///
/// # Safety
/// The CPU has AVX2 and FMA; otherwise as [`gemm_block_rows`].
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_block_rows_avx2(
    a: RowsA<'_>,
    o0: usize,
    o1: usize,
    (k0, kc): (usize, usize),
    b: &[f32],
    ps: usize,
    np: usize,
    c: *mut f32,
    ldc: usize,
) {
    let acc = k0 != 0;
    for ic in (o0..o1).step_by(MC) {
        let ic1 = (ic + MC).min(o1);
        for jr in 0..np.div_ceil(NR) {
            let bp = b[jr * ps..][..kc * NR].as_ptr();
            let cols = NR.min(np - jr * NR);
            for r0 in (ic..ic1).step_by(MR) {
                let rows = MR.min(ic1 - r0);
                // Rows past the last repeat it: computed, never stored.
                let ap: [*const f32; MR] = std::array::from_fn(|r| {
                    a.data[(r0 + r.min(rows - 1)) * a.k + k0..][..kc].as_ptr()
                });
                // SAFETY: the six rows hold kc elements each and the panel kc x NR (sliced
                // above); the tile lies inside C's rows 0..o1 - o0 and columns 0..np (caller);
                // AVX2 + FMA (caller).
                unsafe {
                    tile_avx2(
                        kc,
                        ap,
                        bp,
                        c.add((r0 - o0) * ldc + jr * NR),
                        ldc,
                        acc,
                        rows,
                        cols,
                    )
                };
            }
        }
    }
}

/// One `rows x (P NR)` tile (only the first `cols` columns when `P = 1`): row `r` of `A` read
/// from `a[r]` (`kc` elements), `B` as `P` packed micro-panels `ps` apart. The direct weight
/// gradient (`wgrad_direct`) runs its tiles through it too.
///
/// # Safety
/// The CPU has AVX-512F; each `a[r]` holds `kc` elements; each panel `kc * NR`; `c` is valid
/// for the tile, row stride `ldc`.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile<const P: usize>(
    kc: usize,
    a: [*const f32; MR],
    b: *const f32,
    ps: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    rows: usize,
    cols: usize,
) {
    let mut t = [[_mm512_setzero_ps(); P]; MR];
    for kk in 0..kc {
        // SAFETY: kk < kc: inside each row of A and each panel of B (caller).
        unsafe {
            let bv: [__m512; P] = std::array::from_fn(|p| _mm512_loadu_ps(b.add(p * ps + kk * NR)));
            for (r, tr) in t.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a[r].add(kk));
                for (s, &bp) in tr.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_ps(av, bp, *s);
                }
            }
        }
    }
    // SAFETY: forwarded (the tile's rows lie inside C).
    unsafe { store_rows512(&t[..rows], c, ldc, acc, cols) }
}

/// [`tile`] on AVX2 + FMA: one `rows x cols` tile of a single micro-panel (`cols <= NR`), its
/// 16 columns in two 8-lane registers per row (12 accumulators, as the conv microkernel).
///
/// # Safety
/// The CPU has AVX2 and FMA; each `a[r]` holds `kc` elements; the panel `kc * NR`; `c` is valid
/// for the `rows x cols` tile, row stride `ldc`.
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_avx2(
    kc: usize,
    a: [*const f32; MR],
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    rows: usize,
    cols: usize,
) {
    let mut t0 = [_mm256_setzero_ps(); MR];
    let mut t1 = [_mm256_setzero_ps(); MR];
    for kk in 0..kc {
        // SAFETY: kk < kc: inside each row of A and the panel of B (caller).
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(kk * NR));
            let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
            for r in 0..MR {
                let av = _mm256_broadcast_ss(&*a[r].add(kk));
                t0[r] = _mm256_fmadd_ps(av, b0, t0[r]);
                t1[r] = _mm256_fmadd_ps(av, b1, t1[r]);
            }
        }
    }
    let mut buf = [0f32; NR];
    for r in 0..rows {
        // SAFETY: `buf` holds NR elements; the row's first `cols` elements lie inside C
        // (caller).
        unsafe {
            let p = c.add(r * ldc);
            if cols == NR {
                let (mut v0, mut v1) = (t0[r], t1[r]);
                if acc {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8)));
                }
                _mm256_storeu_ps(p, v0);
                _mm256_storeu_ps(p.add(8), v1);
            } else {
                _mm256_storeu_ps(buf.as_mut_ptr(), t0[r]);
                _mm256_storeu_ps(buf.as_mut_ptr().add(8), t1[r]);
                for (j, &v) in buf.iter().enumerate().take(cols) {
                    let q = p.add(j);
                    *q = if acc { *q + v } else { v };
                }
            }
        }
    }
}
