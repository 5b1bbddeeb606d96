//! Vectorisable scalar math for CPU kernels: written so that LLVM turns a loop over them into
//! SIMD code when the caller is compiled with AVX2 / FMA (`#[target_feature]`), with no table
//! lookups or libm calls.

/// Whether the CPU has AVX2 and FMA: the kernels written with these helpers compile an
/// `#[target_feature(enable = "avx2,fma")]` copy and pick it at run time when this is true.
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `a * b + c`, fused (one rounding) when `FMA`: call it from code compiled with the `fma`
/// target feature, where `mul_add` is one instruction (elsewhere it is a libm call).
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The degree-6 polynomial of [`exp_approx`] for `exp(r) - 1 - r` over `r^2`, highest degree
/// first (Cephes' `expf`); every vector form evaluates it in this order.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `P(t)` of [`gelu_erf`]'s `erfc(z) = t exp(-z^2 + P(t))`, highest degree first.
const ERFC_POLY: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_9,
    -1.135_204,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];

/// `exp(x)` for `x <= 0` by range reduction `x = k ln2 + r`, `|r| <= ln2 / 2`, and a degree-6
/// polynomial for `exp(r)` (Cephes coefficients, ~2 ulp); flushes to 0 below -87.
#[inline(always)]
pub fn exp_approx<const FMA: bool>(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.max(-87.0);
    let kf = madd::<FMA>(x, std::f32::consts::LOG2_E, ROUND);
    let k = kf.to_bits() as i32 - ROUND.to_bits() as i32;
    let kf = kf - ROUND;
    // r = x - k ln2 in two parts (ln2 = 0.693359375 - 2.12194440e-4).
    let r = madd::<FMA>(kf, -0.693_359_4, x);
    let r = madd::<FMA>(kf, 2.121_944_4e-4, r);
    let mut p = EXP_POLY[0];
    for &k in &EXP_POLY[1..] {
        p = madd::<FMA>(p, r, k);
    }
    let e = madd::<FMA>(p, r * r, r) + 1.0;
    e * f32::from_bits(((k + 127) << 23) as u32)
}

/// `x Phi(x) = x erfc(-x / sqrt 2) / 2`, with `erfc` from its Chebyshev-fitted form
/// `t exp(-z^2 + P(t))`, `t = 1 / (1 + z / 2)` (fractional error below 1.2e-7 for all `z` in
/// exact arithmetic; below 1e-6 of `max(|gelu(x)|, 0.1)` in f32).
#[inline(always)]
pub fn gelu_erf<const FMA: bool>(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / madd::<FMA>(0.5, z, 1.0);
    let mut p = ERFC_POLY[0];
    for &k in &ERFC_POLY[1..] {
        p = madd::<FMA>(p, t, k);
    }
    // erfc(z) for z >= 0; erfc(-z) = 2 - erfc(z).
    let erfc = t * exp_approx::<FMA>(madd::<FMA>(-z, z, p));
    let phi2 = if x >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * x * phi2
}

/// [`gelu_erf`] on 16 lanes: the same formula, with the reciprocal `1 / (1 + z / 2)` as
/// `rcp14` refined by one Newton step (relative error ~2^-27) instead of a division, which
/// on 512-bit vectors costs more than the rest of the formula.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn gelu_erf_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = _mm512_set1_ps;
    let z = _mm512_mul_ps(_mm512_abs_ps(x), c(std::f32::consts::FRAC_1_SQRT_2));
    let d = _mm512_fmadd_ps(c(0.5), z, c(1.0));
    let r0 = _mm512_rcp14_ps(d);
    // t = r0 (2 - d r0)
    let t = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, c(2.0)));
    let mut p = c(ERFC_POLY[0]);
    for &k in &ERFC_POLY[1..] {
        p = _mm512_fmadd_ps(p, t, c(k));
    }
    let e = exp_avx512(_mm512_fnmadd_ps(z, z, p));
    let erfc = _mm512_mul_ps(t, e);
    // x >= 0: 2 - erfc, else erfc.
    let pos = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_setzero_ps());
    let phi2 = _mm512_mask_sub_ps(erfc, pos, c(2.0), erfc);
    _mm512_mul_ps(_mm512_mul_ps(c(0.5), x), phi2)
}

/// [`exp_approx`] on 16 lanes (the same reduction and polynomial).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = _mm512_set1_ps;
    const ROUND: f32 = 12_582_912.0;
    let x = _mm512_max_ps(x, c(-87.0));
    let kf = _mm512_fmadd_ps(x, c(std::f32::consts::LOG2_E), c(ROUND));
    let k = _mm512_sub_epi32(
        _mm512_castps_si512(kf),
        _mm512_set1_epi32(ROUND.to_bits() as i32),
    );
    let kf = _mm512_sub_ps(kf, c(ROUND));
    let r = _mm512_fmadd_ps(kf, c(-0.693_359_4), x);
    let r = _mm512_fmadd_ps(kf, c(2.121_944_4e-4), r);
    let mut p = c(EXP_POLY[0]);
    for &k in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, c(k));
    }
    let e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), c(1.0));
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(k, _mm512_set1_epi32(127)));
    _mm512_mul_ps(e, _mm512_castsi512_ps(scale))
}

/// [`gelu_erf`] on `N` independent 8-lane vectors, operation for operation (the division
/// included), so that every lane equals `gelu_erf::<true>` bit for bit.
///
/// Each step is applied to all `N` vectors before the next: the formula is a chain of ~30
/// dependent operations, and one vector at a time (what LLVM makes of a loop over
/// [`gelu_erf`]) leaves the FMA units waiting on latency. Four chains side by side ran the
/// epilogue's GELU ~2x faster on Zen 3 (docs/PERFORMANCE.md, thirteenth section).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn gelu_erf_avx2<const N: usize>(
    x: [std::arch::x86_64::__m256; N],
) -> [std::arch::x86_64::__m256; N] {
    use std::arch::x86_64::*;
    let c = _mm256_set1_ps;
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let z = x.map(|x| _mm256_mul_ps(_mm256_and_ps(x, abs), c(std::f32::consts::FRAC_1_SQRT_2)));
    let t = z.map(|z| _mm256_div_ps(c(1.0), _mm256_fmadd_ps(c(0.5), z, c(1.0))));
    let mut p = [c(ERFC_POLY[0]); N];
    for &k in &ERFC_POLY[1..] {
        for j in 0..N {
            p[j] = _mm256_fmadd_ps(p[j], t[j], c(k));
        }
    }
    // `madd(-z, z, p)` of the scalar form: the same single rounding.
    // SAFETY: the caller guarantees AVX2 and FMA (this function's contract).
    let e: [__m256; N] =
        unsafe { exp_avx2(std::array::from_fn(|j| _mm256_fnmadd_ps(z[j], z[j], p[j]))) };
    std::array::from_fn(|j| {
        let erfc = _mm256_mul_ps(t[j], e[j]);
        let pos = _mm256_cmp_ps::<_CMP_GE_OQ>(x[j], _mm256_setzero_ps());
        let phi2 = _mm256_blendv_ps(erfc, _mm256_sub_ps(c(2.0), erfc), pos);
        _mm256_mul_ps(_mm256_mul_ps(c(0.5), x[j]), phi2)
    })
}

/// [`exp_approx`] on `N` 8-lane vectors, each step applied to all `N` before the next so that
/// their dependency chains overlap, with the scalar form's operations (bit-identical lanes;
/// Swin's AVX2 window attention takes its softmax exponentials from here).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn exp_avx2<const N: usize>(
    x: [std::arch::x86_64::__m256; N],
) -> [std::arch::x86_64::__m256; N] {
    use std::arch::x86_64::*;
    let c = _mm256_set1_ps;
    const ROUND: f32 = 12_582_912.0;
    // `f32::max` and `maxps` agree here: both give -87 for a NaN `x`.
    let x = x.map(|x| _mm256_max_ps(x, c(-87.0)));
    let kf = x.map(|x| _mm256_fmadd_ps(x, c(std::f32::consts::LOG2_E), c(ROUND)));
    let k = kf.map(|kf| {
        _mm256_sub_epi32(
            _mm256_castps_si256(kf),
            _mm256_set1_epi32(ROUND.to_bits() as i32),
        )
    });
    let kf = kf.map(|kf| _mm256_sub_ps(kf, c(ROUND)));
    let r: [__m256; N] = std::array::from_fn(|j| {
        let r = _mm256_fmadd_ps(kf[j], c(-0.693_359_4), x[j]);
        _mm256_fmadd_ps(kf[j], c(2.121_944_4e-4), r)
    });
    let mut p = [c(EXP_POLY[0]); N];
    for &k in &EXP_POLY[1..] {
        for j in 0..N {
            p[j] = _mm256_fmadd_ps(p[j], r[j], c(k));
        }
    }
    std::array::from_fn(|j| {
        let e = _mm256_add_ps(
            _mm256_fmadd_ps(p[j], _mm256_mul_ps(r[j], r[j]), r[j]),
            c(1.0),
        );
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(k[j], _mm256_set1_epi32(127)));
        _mm256_mul_ps(e, _mm256_castsi256_ps(scale))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in 0..20_000 {
            let x = -(i as f32) * 0.00435; // down to -87
            let (a, b) = (exp_approx::<false>(x), x.exp());
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b.max(f32::MIN_POSITIVE),
                "{x}: {a} vs {b}"
            );
        }
        assert_eq!(exp_approx::<false>(-1000.0), (-87f32).exp());
    }

    /// GELU through f64 erf from its series (libm-free): `erf(z) = 2/sqrt(pi) * sum_k (-1)^k
    /// z^(2k+1) / (k! (2k+1))` for `|z| <= 4.2` (where the series is still accurate in f64),
    /// else `+-1` (`erfc(4.2) < 3e-9`, far below the tests' bounds).
    fn gelu_f64(x: f32) -> f64 {
        let x = x as f64;
        let z = x / 2f64.sqrt();
        let erf = if z.abs() > 4.2 {
            z.signum()
        } else {
            let (mut sum, mut term, mut k) = (0f64, z, 0f64);
            while (term.abs() > 1e-18 * sum.abs().max(1e-300) || k < 5.0) && k <= 200.0 {
                sum += term / (2.0 * k + 1.0);
                k += 1.0;
                term *= -z * z / k;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        0.5 * x * (1.0 + erf)
    }

    #[test]
    fn gelu_matches_erf_form() {
        for i in -12_000..12_000 {
            let x = i as f32 * 1e-3;
            let (got, want) = (gelu_erf::<false>(x) as f64, gelu_f64(x));
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(0.1),
                "{x}: {got} vs {want}"
            );
        }
    }

    /// The 16-lane GELU (a refined reciprocal instead of a division) meets the scalar one's
    /// bound against f64 over [-12, 12], on every lane.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn gelu_avx512_matches_erf_form() {
        use std::arch::x86_64::*;
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        for i in (-12_000..12_000).step_by(16) {
            let xs: [f32; 16] = std::array::from_fn(|l| (i + l as i32) as f32 * 1e-3);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F was detected; both arrays hold 16 floats.
            unsafe {
                let v = gelu_erf_avx512(_mm512_loadu_ps(xs.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), v);
            }
            for (&x, g) in xs.iter().zip(got) {
                let want = gelu_f64(x);
                assert!(
                    (g as f64 - want).abs() <= 1e-6 * want.abs().max(0.1),
                    "{x}: {g} vs {want}"
                );
            }
        }
    }

    /// The 8-lane GELU equals the scalar FMA form bit for bit, on four vectors at once, over
    /// [-12, 12], the tails, signed zeros, infinities and NaN.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn gelu_avx2_equals_the_scalar_form() {
        use std::arch::x86_64::*;
        if !has_avx2_fma() {
            return;
        }
        #[target_feature(enable = "fma")]
        unsafe fn scalar(x: f32) -> f32 {
            gelu_erf::<true>(x)
        }
        let mut xs: Vec<f32> = (-12_000..12_000).map(|i| i as f32 * 1e-3).collect();
        xs.extend([
            0.0,
            -0.0,
            -87.0,
            -200.0,
            1e-30,
            -1e-30,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        xs.resize(xs.len().div_ceil(32) * 32, 0.5);
        for chunk in xs.chunks_exact(32) {
            let mut got = [0f32; 32];
            // SAFETY: AVX2 and FMA were detected; each load and store covers 8 of 32 floats.
            unsafe {
                let v: [__m256; 4] =
                    std::array::from_fn(|j| _mm256_loadu_ps(chunk.as_ptr().add(8 * j)));
                for (j, v) in gelu_erf_avx2(v).into_iter().enumerate() {
                    _mm256_storeu_ps(got.as_mut_ptr().add(8 * j), v);
                }
            }
            for (&x, g) in chunk.iter().zip(got) {
                // SAFETY: FMA was detected.
                let want = unsafe { scalar(x) };
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{x}: {g} vs {want}"
                );
            }
        }
    }

    /// The 8-lane exponential (Swin's AVX2 softmax) equals the scalar FMA form bit for bit
    /// over [-100, 0], -inf and NaN (both flush to exp(-87)), on three vectors at once.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_avx2_equals_the_scalar_form() {
        use std::arch::x86_64::*;
        if !has_avx2_fma() {
            return;
        }
        #[target_feature(enable = "fma")]
        unsafe fn scalar(x: f32) -> f32 {
            exp_approx::<true>(x)
        }
        let mut xs: Vec<f32> = (0..=40_000).map(|i| -(i as f32) * 2.5e-3).collect();
        xs.extend([-0.0, f32::NEG_INFINITY, f32::NAN, -1e-30]);
        xs.resize(xs.len().div_ceil(24) * 24, -1.0);
        for chunk in xs.chunks_exact(24) {
            let mut got = [0f32; 24];
            // SAFETY: AVX2 and FMA were detected; each load and store covers 8 of 24 floats.
            unsafe {
                let v: [__m256; 3] =
                    std::array::from_fn(|j| _mm256_loadu_ps(chunk.as_ptr().add(8 * j)));
                for (j, v) in exp_avx2(v).into_iter().enumerate() {
                    _mm256_storeu_ps(got.as_mut_ptr().add(8 * j), v);
                }
            }
            for (&x, g) in chunk.iter().zip(got) {
                // SAFETY: FMA was detected.
                let want = unsafe { scalar(x) };
                assert_eq!(g.to_bits(), want.to_bits(), "{x}: {g} vs {want}");
            }
        }
    }
}
