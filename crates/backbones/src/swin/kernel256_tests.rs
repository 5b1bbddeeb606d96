//! Tests of the tiled AVX2 window-attention kernel (`kernel256.rs`).

use super::super::kernel::TestCase;
use super::*;

/// The tiled AVX2 kernel equals the portable one (same exponential, different summation
/// order) on padded, shifted maps of two images: kernel512's cases (windows of 49 and 144
/// positions, head dims 32, 20 and 48) plus windows of 25 and 16 positions (the latter
/// without padding key columns) and head dims 12 and 40 (a masked last vector; an odd
/// number of vectors), nothing written past the output. The row-at-a-time AVX2 kernel, no
/// longer dispatched to, is checked too.
#[test]
fn matches_the_portable_kernel() {
    if !super::super::kernel::has_avx2_fma() {
        eprintln!("skipped: no AVX2 + FMA on this CPU");
        return;
    }
    let mut worst = 0f32;
    for case in [
        (17, 23, 7, 3, 96, 3),
        (14, 14, 7, 0, 40, 2),
        (26, 13, 12, 6, 64, 2),
        (5, 9, 7, 0, 48, 1),
        (9, 11, 5, 2, 36, 3),
        (10, 12, 4, 2, 80, 2),
    ] {
        let t = TestCase::new(case);
        let (k, len) = (t.attention(), t.dims.0 * t.dims.1 * t.dims.2);
        let want = t.portable();
        // Eight guard floats after the output: a store past a row's `hd` columns reaches
        // them from the last token's last head.
        let mut got = vec![f32::NAN; len + 8];
        // SAFETY: AVX2 + FMA detected above.
        unsafe { k.windows_avx2_tiled(t.jobs(), &OutPtr(got.as_mut_ptr())) };
        assert!(got.split_off(len).iter().all(|x| x.is_nan()), "{case:?}");
        let mut rowwise = vec![f32::NAN; len];
        // SAFETY: AVX2 + FMA detected above.
        unsafe { k.windows_avx2(t.jobs(), &OutPtr(rowwise.as_mut_ptr())) };
        for (name, out) in [("tiled", &got), ("row-at-a-time", &rowwise)] {
            for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "{name}, {case:?} [{i}]: {g} vs {e}"
                );
            }
        }
        let diff = got.iter().zip(&want).map(|(g, e)| (g - e).abs());
        worst = diff.fold(worst, f32::max);
    }
    eprintln!("tiled vs portable: max abs difference {worst:e}");
}
