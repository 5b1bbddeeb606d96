//! PSSL's consensus of an ensemble's explanations and its decile quantisation.
//!
//! Each model's score map is normalised per image (absolute value, then `(s - min) / (max -
//! min)`, a constant map becoming zeros) and the maps are averaged over the ensemble. The
//! average is quantised into deciles D0..D9 per image, as numpy would: the nine thresholds
//! are `np.percentile(scores, [10, 20, .., 90])` (method "linear", in f64) and a score's
//! decile is the number of thresholds strictly below it (`np.searchsorted(t, s, "left")`),
//! so tied scores share a decile and a constant image is all D0.
//!
//! # Shapes
//! - per-model maps `H x W` (row-major `f32` slices); deciles `H x W` `u8` in 0..=9.

/// Normalises one score map in place: `|s|`, then `(s - min) / (max - min)`; zeros where the
/// map is constant (or empty).
pub fn normalize(scores: &mut [f32]) {
    for s in scores.iter_mut() {
        *s = s.abs();
    }
    let (lo, hi) = scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = hi - lo;
    for s in scores.iter_mut() {
        *s = if range > 0.0 { (*s - lo) / range } else { 0.0 };
    }
}

/// The consensus of several models' maps of one image: each normalised ([`normalize`]),
/// then averaged. Every map must have the same length.
pub fn consensus(maps: &[Vec<f32>]) -> Vec<f32> {
    let Some(first) = maps.first() else {
        return Vec::new();
    };
    let mut acc = vec![0f32; first.len()];
    for m in maps {
        let mut m = m.clone();
        normalize(&mut m);
        for (a, v) in acc.iter_mut().zip(&m) {
            *a += v;
        }
    }
    let k = maps.len() as f32;
    for a in acc.iter_mut() {
        *a /= k;
    }
    acc
}

/// numpy's `percentile(values, q)` with the default "linear" method, for sorted `sorted`
/// (`q` in 0..=100): virtual index `(n - 1) q` with `q / 100`, numpy's two-sided lerp.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let q = q / 100.0;
    let virt = (n - 1) as f64 * q;
    let last = (n - 1) as f64;
    let prev = virt.floor().clamp(0.0, last);
    let next = (prev + 1.0).min(last);
    let (a, b) = (sorted[prev as usize], sorted[next as usize]);
    let t = if virt <= 0.0 || virt >= last {
        0.0
    } else {
        virt - prev
    };
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// The nine decile thresholds (10th..90th percentiles) of `scores`, in f64.
pub fn decile_thresholds(scores: &[f32]) -> [f64; 9] {
    let mut v: Vec<f64> = scores.iter().map(|s| *s as f64).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    std::array::from_fn(|k| percentile_sorted(&v, 10.0 * (k + 1) as f64))
}

/// The decile 0..=9 of each score: how many of its image's thresholds lie strictly below it.
pub fn deciles(scores: &[f32]) -> Vec<u8> {
    let t = decile_thresholds(scores);
    scores
        .iter()
        .map(|&s| t.iter().filter(|th| **th < s as f64).count() as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_examples() {
        // np.percentile([1, 2, 3, 4], [10, 50, 90]) = [1.3, 2.5, 3.7]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile_sorted(&v, 10.0) - 1.3).abs() < 1e-12);
        assert_eq!(percentile_sorted(&v, 50.0), 2.5);
        assert!((percentile_sorted(&v, 90.0) - 3.7).abs() < 1e-12);
        assert_eq!(deciles(&[0.5; 7]), vec![0; 7]);
        let mut m = vec![2.0, -4.0, 0.0];
        normalize(&mut m);
        assert_eq!(m, vec![0.5, 1.0, 0.0]);
    }
}
