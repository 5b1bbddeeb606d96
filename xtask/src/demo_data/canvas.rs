//! One demo canvas: Fashion-MNIST items, tinted and scaled, over a procedural background.

use image::{GrayImage, ImageBuffer, Luma, RgbImage};
use segkit::train::data::SampleRng;

use super::fashion_mnist::{FashionMnist, ITEM};

/// One composed canvas.
#[derive(Debug, Clone)]
pub struct Canvas {
    /// The RGB image.
    pub image: RgbImage,
    /// Class ids (0 background, `1 + label` for items).
    pub semantic: GrayImage,
    /// Instance ids (0 none, `1..=n` in drawing order; later items occlude earlier ones).
    pub instances: ImageBuffer<Luma<u16>, Vec<u16>>,
}

/// Intensity above which an item pixel is labelled (of 255).
pub const LABEL_THRESHOLD: u8 = 48;

pub(crate) fn random_color(rng: &mut SampleRng) -> [f64; 3] {
    [rng.uniform(), rng.uniform(), rng.uniform()].map(|v| 255.0 * v)
}

/// A procedural background of `size x size`: value noise (a random lattice of 4-31 cells a
/// side, bilinearly interpolated), a linear gradient, sinusoidal stripes or a checkerboard,
/// each between two random colours at a random angle / frequency / cell size.
pub(crate) fn background(size: usize, rng: &mut SampleRng) -> Vec<[f64; 3]> {
    let kind = rng.below(4);
    let (c0, c1) = (random_color(rng), random_color(rng));
    let mix = |t: f64| -> [f64; 3] {
        let t = t.clamp(0.0, 1.0);
        [0, 1, 2].map(|k| c0[k] * (1.0 - t) + c1[k] * t)
    };
    let angle = rng.uniform() * std::f64::consts::PI;
    let (ca, sa) = (angle.cos(), angle.sin());
    let freq = 0.05 + 0.25 * rng.uniform();
    let cell = 6 + rng.below(20);
    // Value noise: a random lattice, bilinearly interpolated.
    let g = 4 + rng.below(28);
    let lattice: Vec<f64> = (0..(g + 1) * (g + 1)).map(|_| rng.uniform()).collect();
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f64 / size as f64, y as f64 / size as f64);
            let t = match kind {
                0 => {
                    let (gx, gy) = (fx * g as f64, fy * g as f64);
                    let (ix, iy) = ((gx as usize).min(g - 1), (gy as usize).min(g - 1));
                    let (tx, ty) = (gx - ix as f64, gy - iy as f64);
                    let at = |i: usize, j: usize| lattice[j * (g + 1) + i];
                    let top = at(ix, iy) * (1.0 - tx) + at(ix + 1, iy) * tx;
                    let bot = at(ix, iy + 1) * (1.0 - tx) + at(ix + 1, iy + 1) * tx;
                    top * (1.0 - ty) + bot * ty
                }
                1 => (fx * ca + fy * sa + 1.0) / 2.0,
                2 => 0.5 + 0.5 * ((x as f64 * ca + y as f64 * sa) * freq).sin(),
                _ => (((x / cell) + (y / cell)) % 2) as f64,
            };
            out.push(mix(t));
        }
    }
    out
}

/// Bilinear resize of a `28 x 28` item to `s x s` (half-pixel centres, edge clamped).
pub(crate) fn resize_item(item: &[u8], s: usize) -> Vec<f64> {
    let scale = ITEM as f64 / s as f64;
    let at = |x: isize, y: isize| -> f64 {
        let x = x.clamp(0, ITEM as isize - 1) as usize;
        let y = y.clamp(0, ITEM as isize - 1) as usize;
        item[y * ITEM + x] as f64
    };
    let mut out = Vec::with_capacity(s * s);
    for y in 0..s {
        let sy = ((y as f64 + 0.5) * scale - 0.5).max(0.0);
        let (y0, ty) = (sy.floor() as isize, sy - sy.floor());
        for x in 0..s {
            let sx = ((x as f64 + 0.5) * scale - 0.5).max(0.0);
            let (x0, tx) = (sx.floor() as isize, sx - sx.floor());
            let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1, y0) * tx;
            let bot = at(x0, y0 + 1) * (1.0 - tx) + at(x0 + 1, y0 + 1) * tx;
            out.push(top * (1.0 - ty) + bot * ty);
        }
    }
    out
}

/// Composes canvas `index` of a run seeded with `seed` from `items`: a procedural background
/// and 2-5 items at random positions and sizes (20-64 px), each tinted with a random colour
/// (shaded by the item's intensity). Pixels whose item intensity exceeds
/// [`LABEL_THRESHOLD`] take the class `1 + label` and the item's instance id.
pub fn compose_canvas(items: &FashionMnist, seed: u64, index: u64, size: usize) -> Canvas {
    let mut rng = SampleRng::for_sample(seed, index);
    let mut px = background(size, &mut rng);
    let mut sem = vec![0u8; size * size];
    let mut inst = vec![0u16; size * size];
    let count = 2 + rng.below(4);
    for k in 0..count {
        let idx = rng.below(items.len().max(1));
        let label = items.labels[idx];
        let s = (20 + rng.below(45)).min(size);
        let a = resize_item(items.item(idx), s);
        let (ox, oy) = (rng.below(size - s + 1), rng.below(size - s + 1));
        let tint = random_color(&mut rng);
        // Scale the tint so that its brightest channel is 140-255: items stay visible.
        let bright = tint.iter().fold(0f64, |m, &v| m.max(v)).max(1.0);
        let target = 140.0 + 115.0 * rng.uniform();
        let tint = tint.map(|v| v * target / bright);
        let flip = rng.uniform() < 0.5;
        for y in 0..s {
            for x in 0..s {
                let sx = if flip { s - 1 - x } else { x };
                let v = a[y * s + sx];
                if v <= 8.0 {
                    continue;
                }
                let alpha = (v / 255.0 * 1.6).min(1.0);
                let shade = 0.45 + 0.55 * v / 255.0;
                let p = (oy + y) * size + ox + x;
                for c in 0..3 {
                    px[p][c] = px[p][c] * (1.0 - alpha) + tint[c] * shade * alpha;
                }
                if v > LABEL_THRESHOLD as f64 {
                    sem[p] = 1 + label;
                    inst[p] = (k + 1) as u16;
                }
            }
        }
    }
    let raw: Vec<u8> = px
        .iter()
        .flat_map(|c| c.map(|v| v.round().clamp(0.0, 255.0) as u8))
        .collect();
    let sz = size as u32;
    Canvas {
        image: RgbImage::from_raw(sz, sz, raw).unwrap_or_else(|| RgbImage::new(sz, sz)),
        semantic: GrayImage::from_raw(sz, sz, sem).unwrap_or_else(|| GrayImage::new(sz, sz)),
        instances: ImageBuffer::from_raw(sz, sz, inst).unwrap_or_else(|| ImageBuffer::new(sz, sz)),
    }
}
