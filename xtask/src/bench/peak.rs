//! This CPU's FP32 peak, measured: `threads` threads, each running 12 independent chains of
//! fused multiply-adds on the widest vectors the CPU has (AVX-512F, else AVX2 + FMA), and
//! how much of it a case's matmul and convolution work reaches.
//!
//! Twelve chains keep both FMA pipes of a Zen 3 / Intel core busy through the FMA latency (4
//! cycles x 2 pipes needs 8 in flight), so the loop runs at the core's vector FMA throughput:
//! on the 2-core AMD EPYC of docs/PERFORMANCE.md, 101-103 GFLOP/s per core at ~3.2 GHz.

use std::time::Instant;

/// Multiply-adds per chain per call of a kernel.
const STEPS: u64 = 150_000_000;
/// Independent accumulators per thread.
const CHAINS: u64 = 12;

/// The measured peak of `threads` threads in GFLOP/s, with the instruction set it used
/// (`None` on a CPU without AVX2 + FMA, where no figure would be comparable).
pub fn fp32_peak(threads: usize) -> Option<(f64, &'static str)> {
    let (lanes, isa): (u64, &'static str) = isa()?;
    let threads = threads.max(1);
    // One untimed round wakes the cores up to their running clock.
    let round = || {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| std::hint::black_box(fma_loop(STEPS / 4)));
            }
        })
    };
    round();
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| std::hint::black_box(fma_loop(STEPS)));
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let flops = threads as f64 * (STEPS * CHAINS * lanes * 2) as f64;
    Some((flops / secs / 1e9, isa))
}

/// Vector lanes (f32) and the name of the widest FMA instruction set of this CPU.
fn isa() -> Option<(u64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Some((16, "AVX-512F"));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some((8, "AVX2 + FMA"));
        }
    }
    None
}

/// Runs `steps` rounds of 12 multiply-adds on the widest vectors; returns a value that
/// depends on every lane so that nothing is optimised away.
fn fma_loop(steps: u64) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected on this CPU.
            return unsafe { x86::fma512(steps) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were detected on this CPU.
            return unsafe { x86::fma256(steps) };
        }
    }
    let _ = steps;
    0.0
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(steps: u64) -> f32 {
        let b = _mm256_set1_ps(1.000_000_1);
        let c = _mm256_set1_ps(1e-7);
        let mut a: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
        for _ in 0..steps {
            for v in a.iter_mut() {
                *v = _mm256_fmadd_ps(*v, b, c);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in a {
            s = _mm256_add_ps(s, v);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(steps: u64) -> f32 {
        let b = _mm512_set1_ps(1.000_000_1);
        let c = _mm512_set1_ps(1e-7);
        let mut a: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        for _ in 0..steps {
            for v in a.iter_mut() {
                *v = _mm512_fmadd_ps(*v, b, c);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in a {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_a_plausible_figure() {
        let Some((one, isa)) = fp32_peak(1) else {
            return; // no AVX2 + FMA: no figure to check
        };
        assert!(one > 1.0, "{isa}: {one} GFLOP/s");
        // A sanity bound, not a timing assertion: no core does more than 64 FP32 FMAs a
        // cycle at 6 GHz.
        assert!(one < 64.0 * 2.0 * 6.0 * 2.0, "{isa}: {one} GFLOP/s");
    }
}
