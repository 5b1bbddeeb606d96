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
    let mut p = 1.987_569_1e-4f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let e = madd::<FMA>(p, r * r, r) + 1.0;
    e * f32::from_bits(((k + 127) << 23) as u32)
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
}
