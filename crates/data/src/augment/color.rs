//! mmseg 1.2.2's `PhotoMetricDistortion` (`mmseg/datasets/transforms/transforms.py`) on 8-bit
//! RGB images, with OpenCV's 8-bit HSV conversions (`mmcv.bgr2hsv` / `mmcv.hsv2bgr`, i.e.
//! `cv2.cvtColor(.., COLOR_BGR2HSV / COLOR_HSV2BGR)`, H in `0..180`).
//!
//! - [`rgb_to_hsv`]: OpenCV's integer `RGB2HSV_b` (12-bit fixed-point division tables);
//!   byte-equal to OpenCV 5.0 on all 2^24 colours.
//! - [`hsv_to_rgb`]: OpenCV 5.0's `HSV2RGB_b` as its x86-64 wheels run it on an AVX2 CPU:
//!   f32 arithmetic with fused multiply-adds in `v (1 - s h)` and `v (1 - s (1 - h))`; within
//!   each row the first `32 * floor(width / 32)` pixels take the vector path, which truncates
//!   `255 x` to an integer, and the remaining pixels the scalar path, which rounds it
//!   (ties to even). Byte-equal to OpenCV on all `180 x 256 x 256` inputs and on rows of any
//!   width. (On CPUs with another vector width OpenCV itself gives other numbers in the last
//!   pixels of a row; mmseg's 512-wide crops are a multiple of every width.)
//! - [`PhotoMetricParams`] / [`photometric`]: the distortion with its random draws made
//!   explicit. `convert` is `uint8(clip(float32(x) * alpha + beta, 0, 255))` in f32 (numpy 2
//!   keeps the Python-float factors in f32), the hue shift `(h + delta) mod 180`.
//!
//! As mmseg, the draws are: brightness with probability 1/2 (`beta ~ U(-delta, delta)`), the
//! contrast position (`mode`), contrast, saturation and hue each with probability 1/2
//! (`alpha ~ U(lower, upper)`, hue `delta` an integer in `[-hue_delta, hue_delta)`, numpy's
//! exclusive upper bound). Saturation and hue each convert to HSV and back, as mmseg does.

use serde::{Deserialize, Serialize};

use super::Rng;

/// OpenCV's `hsv_shift`.
const HSV_SHIFT: u32 = 12;

/// OpenCV's `sdiv_table` and `hdiv_table180`: `round((255 << 12) / i)` and
/// `round((180 << 12) / (6 i))`.
fn hsv_tables() -> ([i32; 256], [i32; 256]) {
    let mut sdiv = [0i32; 256];
    let mut hdiv = [0i32; 256];
    for i in 1..256 {
        sdiv[i] = ((255u32 << HSV_SHIFT) as f64 / i as f64).round_ties_even() as i32;
        hdiv[i] = ((180u32 << HSV_SHIFT) as f64 / (6.0 * i as f64)).round_ties_even() as i32;
    }
    (sdiv, hdiv)
}

/// `cv2.cvtColor(bgr, COLOR_BGR2HSV)` of an RGB image: row-major `H x W x 3` RGB bytes in,
/// `H x W x 3` (H in 0..180, S, V) bytes out.
pub fn rgb_to_hsv(rgb: &[u8]) -> Vec<u8> {
    let (sdiv, hdiv) = hsv_tables();
    let round = 1i32 << (HSV_SHIFT - 1);
    let mut out = Vec::with_capacity(rgb.len());
    for p in rgb.chunks_exact(3) {
        let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
        let v = r.max(g).max(b);
        let vmin = r.min(g).min(b);
        let diff = v - vmin;
        let s = (diff * sdiv[v as usize] + round) >> HSV_SHIFT;
        let h = if v == r {
            g - b
        } else if v == g {
            b - r + 2 * diff
        } else {
            r - g + 4 * diff
        };
        let mut h = (h * hdiv[diff as usize] + round) >> HSV_SHIFT;
        if h < 0 {
            h += 180;
        }
        out.extend_from_slice(&[h.clamp(0, 255) as u8, s as u8, v as u8]);
    }
    out
}

/// One pixel of OpenCV's `HSV2RGB_b` (H range 180): `(r, g, b)`; `vector` picks the SIMD
/// path (truncating) over the scalar one (rounding).
fn hsv_pixel(h: u8, s: u8, v: u8, vector: bool) -> [u8; 3] {
    const SECTORS: [[usize; 3]; 6] = [
        [1, 3, 0],
        [1, 0, 2],
        [3, 0, 1],
        [0, 2, 1],
        [0, 1, 3],
        [2, 1, 0],
    ];
    let hscale = 6.0f32 / 180.0f32;
    let s = s as f32 * (1.0f32 / 255.0f32);
    let v = v as f32 * (1.0f32 / 255.0f32);
    let hh = h as f32 * hscale;
    let (sector, frac) = if vector {
        let pre = hh.trunc();
        let q = (pre * (1.0f32 / 6.0f32)).trunc();
        ((pre - q * 6.0) as usize, hh - pre)
    } else {
        let f = hh.floor();
        ((f as i64).rem_euclid(6) as usize, hh - f)
    };
    let bgr = if !vector && s == 0.0 {
        [v, v, v]
    } else {
        let tab = [
            v,
            v * (1.0 - s),
            v * (-s).mul_add(frac, 1.0),
            v * (-s).mul_add(1.0 - frac, 1.0),
        ];
        let idx = SECTORS[sector.min(5)];
        [tab[idx[0]], tab[idx[1]], tab[idx[2]]]
    };
    let cast = |x: f32| -> u8 {
        let y = x * 255.0;
        let y = if vector {
            y.trunc()
        } else {
            y.round_ties_even()
        };
        y.clamp(0.0, 255.0) as u8
    };
    [cast(bgr[2]), cast(bgr[1]), cast(bgr[0])]
}

/// `cv2.cvtColor(hsv, COLOR_HSV2BGR)` to RGB: row-major `H x W x 3` (H, S, V) bytes of a
/// `width`-wide image in, RGB bytes out (see the module doc for the per-row vector / scalar
/// split). `hsv.len()` must be a multiple of `3 * width`.
pub fn hsv_to_rgb(hsv: &[u8], width: usize) -> Vec<u8> {
    let width = width.max(1);
    let vector_end = width / 32 * 32;
    let mut out = Vec::with_capacity(hsv.len());
    for (i, p) in hsv.chunks_exact(3).enumerate() {
        out.extend_from_slice(&hsv_pixel(p[0], p[1], p[2], i % width < vector_end));
    }
    out
}

/// The random choices of one [`PhotoMetricDistortion`](super::Transform::PhotoMetricDistortion)
/// application (`None`: that step was skipped).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhotoMetricParams {
    /// Brightness `beta` added to every channel.
    pub brightness: Option<f64>,
    /// mmseg's `mode == 1`: contrast before the HSV steps (else after).
    pub contrast_first: bool,
    /// Contrast `alpha` multiplying every channel.
    pub contrast: Option<f64>,
    /// Saturation `alpha` multiplying S.
    pub saturation: Option<f64>,
    /// Hue shift added to H (mod 180).
    pub hue: Option<i32>,
}

/// The ranges of `PhotoMetricDistortion` (mmseg's arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhotoMetricRanges {
    /// `brightness_delta`.
    pub brightness_delta: i32,
    /// `contrast_range`.
    pub contrast_range: [f64; 2],
    /// `saturation_range`.
    pub saturation_range: [f64; 2],
    /// `hue_delta`.
    pub hue_delta: i32,
}

impl PhotoMetricParams {
    /// Draws the parameters in mmseg's order (brightness, mode, contrast if first, saturation,
    /// hue, contrast if last).
    pub fn sample(r: &PhotoMetricRanges, rng: &mut Rng) -> Self {
        let d = r.brightness_delta as f64;
        let brightness = rng.coin().then(|| rng.uniform_range(-d, d));
        let contrast_first = rng.coin();
        let mut contrast = None;
        if contrast_first {
            contrast = rng
                .coin()
                .then(|| rng.uniform_range(r.contrast_range[0], r.contrast_range[1]));
        }
        let saturation = rng
            .coin()
            .then(|| rng.uniform_range(r.saturation_range[0], r.saturation_range[1]));
        let hue = rng
            .coin()
            .then(|| rng.int_range(-r.hue_delta as i64, r.hue_delta as i64) as i32);
        if !contrast_first {
            contrast = rng
                .coin()
                .then(|| rng.uniform_range(r.contrast_range[0], r.contrast_range[1]));
        }
        PhotoMetricParams {
            brightness,
            contrast_first,
            contrast,
            saturation,
            hue,
        }
    }
}

/// mmseg's `convert`: `uint8(clip(float32(x) * alpha + beta, 0, 255))` in f32.
fn convert(x: u8, alpha: f32, beta: f32) -> u8 {
    (x as f32 * alpha + beta).clamp(0.0, 255.0) as u8
}

/// Brightness: every channel `+ beta` (mmseg `brightness` with a fixed draw).
pub fn brightness(rgb: &mut [u8], beta: f64) {
    let b = beta as f32;
    rgb.iter_mut().for_each(|x| *x = convert(*x, 1.0, b));
}

/// Contrast: every channel `* alpha` (mmseg `contrast` with a fixed draw).
pub fn contrast(rgb: &mut [u8], alpha: f64) {
    let a = alpha as f32;
    rgb.iter_mut().for_each(|x| *x = convert(*x, a, 0.0));
}

/// Saturation: S `* alpha` in OpenCV HSV and back (mmseg `saturation` with a fixed draw).
pub fn saturation(rgb: &mut [u8], width: usize, alpha: f64) {
    let a = alpha as f32;
    let mut hsv = rgb_to_hsv(rgb);
    hsv.chunks_exact_mut(3)
        .for_each(|p| p[1] = convert(p[1], a, 0.0));
    let back = hsv_to_rgb(&hsv, width);
    rgb[..back.len()].copy_from_slice(&back);
}

/// Hue: H `+ delta` mod 180 in OpenCV HSV and back (mmseg `hue` with a fixed draw).
pub fn hue(rgb: &mut [u8], width: usize, delta: i32) {
    let mut hsv = rgb_to_hsv(rgb);
    hsv.chunks_exact_mut(3)
        .for_each(|p| p[0] = (p[0] as i32 + delta).rem_euclid(180) as u8);
    let back = hsv_to_rgb(&hsv, width);
    rgb[..back.len()].copy_from_slice(&back);
}

/// `PhotoMetricDistortion.transform` with the given draws, on a row-major `H x width x 3`
/// RGB image in place.
pub fn photometric(rgb: &mut [u8], width: usize, p: &PhotoMetricParams) {
    if let Some(b) = p.brightness {
        brightness(rgb, b);
    }
    if p.contrast_first {
        if let Some(a) = p.contrast {
            contrast(rgb, a);
        }
    }
    if let Some(a) = p.saturation {
        saturation(rgb, width, a);
    }
    if let Some(d) = p.hue {
        hue(rgb, width, d);
    }
    if !p.contrast_first {
        if let Some(a) = p.contrast {
            contrast(rgb, a);
        }
    }
}
