//! A GEMM tile whose broadcast operand is read through row pointers instead of a packed panel:
//! `C (+)= A B` for a tile of up to [`MR`] rows, each row of `A` anywhere in memory (shifted
//! pointers into padded planes for the direct weight gradient, rows of a row-major matrix for
//! [`crate::ops::linear`]), `B` packed into [`NR`]-column micro-panels. AVX-512F only.

use std::arch::x86_64::*;

use super::kernel::{MR, NR};

/// One `rows x (P NR)` tile of `C (+)= A B` (only the first `cols` columns when `P = 1`): row
/// `r` of `A` read from `a[r]` (`kc` elements), `B` as `P` packed micro-panels (`ps` apart,
/// element `(k, lane)` at `k NR + lane`). Stores the tile, or adds it to `C` when `acc`.
///
/// # Safety
/// The CPU has AVX-512F; each `a[r]` holds `kc` elements; each panel `kc * NR`; `c` is valid
/// for the tile, row stride `ldc`, and nobody else accesses it meanwhile.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(in crate::ops) unsafe fn rows_tile512<const P: usize>(
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
    unsafe { super::kernel::x86::store_rows512(&t[..rows], c, ldc, acc, cols) }
}
