//! Reproducible Gaussian noise for SmoothGrad: a counter-based stream, so an image's noise
//! depends only on its key — never on thread scheduling, batch order or an earlier, killed run.

use candle_core::{Device, Tensor};

use crate::TrainResult;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a, 64 bit (the seed of a key's stream).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn bits(seed: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_add(i.wrapping_mul(GOLDEN))
        .wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values in `[0, 1)`: element `i` is `splitmix64(fnv1a64(key) + i * golden) >> 40`
/// over `2^24` (the function of segkit's synthetic test data, `tests/parity/synth.py`'s
/// `uniform`).
pub fn uniform(key: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(key.as_bytes());
    (0..n as u64)
        .map(|i| (bits(seed, i) >> 40) as f64 / (1u64 << 24) as f64)
        .collect()
}

/// Standard normal draws of `shape`: Box-Muller `sqrt(-2 ln(1 - u1)) cos(2 pi u2)` in f64 over
/// `uniform(key + ".u1")` and `uniform(key + ".u2")`, cast to f32 (`gen_pssl.py`'s
/// `gaussian_noise`).
pub fn gaussian_noise(key: &str, shape: &[usize], dev: &Device) -> TrainResult<Tensor> {
    let n: usize = shape.iter().product();
    let u1 = uniform(&format!("{key}.u1"), n);
    let u2 = uniform(&format!("{key}.u2"), n);
    let z: Vec<f32> = u1
        .iter()
        .zip(&u2)
        .map(|(a, b)| {
            ((-2.0 * (1.0 - a).ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(z, shape, dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_moments() {
        let z = gaussian_noise("k", &[20000], &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let m = z.iter().map(|v| *v as f64).sum::<f64>() / z.len() as f64;
        let v = z.iter().map(|x| (*x as f64 - m).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.05, "{m} {v}");
        assert_eq!(uniform("a", 3), uniform("a", 3));
        assert_ne!(uniform("a", 3), uniform("b", 3));
    }
}
