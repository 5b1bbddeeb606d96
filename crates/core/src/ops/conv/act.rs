//! Vectorisable f32 activations and the fused bias + activation epilogue.
//!
//! The scalar functions here are branch-free polynomial approximations written so that LLVM
//! auto-vectorises the loops that call them; `*_avx2` wrappers recompile the same loops with
//! AVX2 + FMA, picked at run time.

use rayon::prelude::*;

use super::Activation;
use crate::ops::fastmath::madd;

/// Elements per rayon task in the element-wise passes (big enough to amortise the task cost).
const PAR_CHUNK: usize = 1 << 15;

/// `exp(x)` (Cephes `expf` polynomial, relative error ~2 ulp), saturating outside
/// [-87.3, 88.3] instead of returning 0 / inf.
#[inline(always)]
fn exp_approx<const FMA: bool>(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.3, 88.3);
    let t = madd::<FMA>(x, std::f32::consts::LOG2_E, MAGIC);
    let n_bits = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let n = t - MAGIC;
    let r = madd::<FMA>(n, -0.693_359_4, x);
    let r = madd::<FMA>(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    y * f32::from_bits(((n_bits + 127) << 23) as u32)
}

/// `erf(x)` as a rational approximation on [-4, 4] (Eigen's `generic_fast_erf_float`, a few
/// ulp); outside that range erf is +-1 in f32.
#[inline(always)]
fn erf_approx<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10;
    p = madd::<FMA>(x2, p, 2.770_681_4e-8);
    p = madd::<FMA>(x2, p, -2.101_024e-6);
    p = madd::<FMA>(x2, p, -5.692_506_4e-5);
    p = madd::<FMA>(x2, p, -7.349_906_3e-4);
    p = madd::<FMA>(x2, p, -2.954_6e-3);
    p = madd::<FMA>(x2, p, -1.609_603_3e-2);
    p *= x;
    let mut q = -1.456_607_2e-5;
    q = madd::<FMA>(x2, q, -2.133_740_6e-4);
    q = madd::<FMA>(x2, q, -1.682_827e-3);
    q = madd::<FMA>(x2, q, -7.373_329e-3);
    q = madd::<FMA>(x2, q, -1.426_474e-2);
    // |erf| rounds to 1 in f32 beyond 3.85; return it exactly so GELU's tails are exact.
    if x.abs() >= 3.85 {
        1f32.copysign(x)
    } else {
        p / q
    }
}

#[inline(always)]
fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx::<FMA>(-x))
}

#[inline(always)]
fn gelu<const FMA: bool>(x: f32) -> f32 {
    let h = 0.5 * x;
    madd::<FMA>(h, erf_approx::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2), h)
}

/// `row[i] = act(row[i] s + b)` for every element (one rounding for `row[i] s + b`, which is
/// `row[i] + b` exactly when `s = 1`).
#[inline(always)]
fn bias_act_row<const FMA: bool>(row: &mut [f32], s: f32, b: f32, act: Activation) {
    let y = |v: f32| madd::<FMA>(v, s, b);
    match act {
        Activation::None => row.iter_mut().for_each(|v| *v = y(*v)),
        Activation::Relu => row.iter_mut().for_each(|v| *v = y(*v).max(0.0)),
        Activation::Sigmoid => row.iter_mut().for_each(|v| *v = sigmoid::<FMA>(y(*v))),
        Activation::Gelu => row.iter_mut().for_each(|v| *v = gelu::<FMA>(y(*v))),
    }
}

/// `dst[i] = act(src[i])` for every element.
#[inline(always)]
fn act_map<const FMA: bool>(src: &[f32], dst: &mut [f32], act: Activation) {
    let it = dst.iter_mut().zip(src);
    match act {
        Activation::None => it.for_each(|(d, &s)| *d = s),
        Activation::Relu => it.for_each(|(d, &s)| *d = s.max(0.0)),
        Activation::Sigmoid => it.for_each(|(d, &s)| *d = sigmoid::<FMA>(s)),
        Activation::Gelu => it.for_each(|(d, &s)| *d = gelu::<FMA>(s)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_act_row_avx2(row: &mut [f32], s: f32, b: f32, act: Activation) {
    bias_act_row::<true>(row, s, b, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn act_map_avx2(src: &[f32], dst: &mut [f32], act: Activation) {
    act_map::<true>(src, dst, act)
}

/// Whether the running CPU has AVX2 and FMA (cached by std).
#[inline]
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Set to `avx2` to keep the convolution kernels off AVX-512 on a CPU that has it (as
/// PyTorch's `ATEN_CPU_CAPABILITY`): for comparing the kernels, never needed for speed.
const CPU_CAPABILITY_ENV: &str = "SEGKIT_CPU_CAPABILITY";

/// Whether segkit's AVX-512F kernels may run: the CPU has AVX-512F and `SEGKIT_CPU_CAPABILITY`
/// is not `avx2` (set it to compare against the AVX2 kernels; never needed for speed). Kernels
/// in other segkit crates (Swin's window attention) follow the same switch.
pub fn cpu_has_avx512f() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let allowed = *ALLOWED.get_or_init(|| {
        std::env::var(CPU_CAPABILITY_ENV).map_or(true, |v| !v.eq_ignore_ascii_case("avx2"))
    });
    #[cfg(target_arch = "x86_64")]
    {
        allowed && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = allowed;
        false
    }
}

/// Which instruction set the kernels may use: AVX2 + FMA only when the running CPU has them,
/// AVX-512F (the GEMM microkernel) only when it also has that ([`Simd::detect`]), so that a
/// `Simd` can be passed down safely.
#[derive(Debug, Clone, Copy)]
pub(super) struct Simd {
    avx2: bool,
    avx512: bool,
}

impl Simd {
    /// The best the running CPU supports.
    pub(super) fn detect() -> Self {
        let avx2 = has_avx2_fma();
        Self {
            avx2,
            avx512: avx2 && cpu_has_avx512f(),
        }
    }

    /// Portable code only (tests of the fallback paths).
    #[cfg(test)]
    pub(super) fn portable() -> Self {
        Self {
            avx2: false,
            avx512: false,
        }
    }

    /// AVX2 + FMA where the CPU has them, never AVX-512 (tests of the AVX2 kernels on CPUs
    /// that would pick AVX-512).
    #[cfg(test)]
    pub(super) fn avx2_only() -> Self {
        Self {
            avx2: has_avx2_fma(),
            avx512: false,
        }
    }

    /// Whether AVX2 + FMA code may run.
    #[inline]
    pub(super) fn avx2(self) -> bool {
        self.avx2
    }

    /// Whether AVX-512F code may run (implies [`Simd::avx2`]).
    #[inline]
    pub(super) fn avx512(self) -> bool {
        self.avx512
    }
}

/// `row = act(row + b)` in place, on the calling thread.
pub(crate) fn bias_act(row: &mut [f32], b: f32, act: Activation) {
    scale_bias_act(row, 1.0, b, act)
}

/// `row[i] = act(row[i] s + b)`: [`bias_act`] after a per-row scale (a BatchNorm folded into
/// the outputs instead of the weights).
pub(super) fn scale_bias_act(row: &mut [f32], s: f32, b: f32, act: Activation) {
    if act == Activation::None && b == 0.0 && s == 1.0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { bias_act_row_avx2(row, s, b, act) };
    }
    bias_act_row::<false>(row, s, b, act)
}

/// `dst = act(src)` element-wise, on the calling thread.
fn act_slice(src: &[f32], dst: &mut [f32], act: Activation) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { act_map_avx2(src, dst, act) };
    }
    act_map::<false>(src, dst, act)
}

/// `act(src)` into a new vector, in parallel chunks.
pub(super) fn act_vec(src: &[f32], act: Activation) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    if src.len() <= PAR_CHUNK {
        act_slice(src, &mut dst, act);
    } else {
        dst.par_chunks_mut(PAR_CHUNK)
            .zip(src.par_chunks(PAR_CHUNK))
            .for_each(|(d, s)| act_slice(s, d, act));
    }
    dst
}

/// Applies `act(v + bias[o])` to the `len` elements starting at `o * stride + offset` of `out`,
/// for every channel `o` (one contiguous run per channel), in parallel over channels.
pub(super) fn epilogue(
    out: &mut [f32],
    stride: usize,
    offset: usize,
    len: usize,
    bias: Option<&[f32]>,
    act: Activation,
) {
    if act == Activation::None && bias.is_none() {
        return;
    }
    let rows = out.len() / stride;
    let run = |(o, plane): (usize, &mut [f32])| {
        let b = bias.map_or(0.0, |b| b[o]);
        bias_act(&mut plane[offset..offset + len], b, act);
    };
    if rows * len <= PAR_CHUNK {
        out.chunks_mut(stride).enumerate().for_each(run);
    } else {
        out.par_chunks_mut(stride)
            .enumerate()
            .with_max_len(1)
            .for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_ref(x: f64) -> f64 {
        // Abramowitz-Stegun 7.1.26 is too coarse for a reference; integrate instead.
        let n = 20_000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn approximations_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let e = exp_approx::<false>(x);
            let r = (x as f64).exp();
            assert!(((e as f64 - r) / r).abs() < 1e-6, "exp({x}) = {e} vs {r}");
            let e = erf_approx::<false>(x);
            let r = erf_ref(x as f64);
            assert!((e as f64 - r).abs() < 3e-7, "erf({x}) = {e} vs {r}");
            let s = sigmoid::<true>(x);
            let r = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((s as f64 - r).abs() < 1e-7, "sigmoid({x}) = {s} vs {r}");
        }
        assert!((0.0..1e-37).contains(&sigmoid::<false>(-1e30)));
        assert_eq!(sigmoid::<false>(1e30), 1.0);
        assert_eq!(gelu::<false>(-1e30), 0.0);
        assert_eq!(gelu::<true>(7.5), 7.5);
    }
}
