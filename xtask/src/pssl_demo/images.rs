//! Single-item images: one Fashion-MNIST item on a procedural background, as the demo
//! canvases draw their items (same backgrounds, tints, shading and flips; see
//! `demo_data::canvas`), with the item's true foreground kept for scoring.
//!
//! The foreground of an image is every pixel the item is drawn on: the pixels where the
//! resized item's intensity exceeds 8 (of 255), the canvas code's drawing threshold (fainter
//! pixels leave the background unchanged).

use std::path::Path;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use segkit::train::data::SampleRng;
use segkit::train::{TrainError, TrainResult};

use crate::demo_data::canvas::{background, random_color, resize_item};
use crate::demo_data::FashionMnist;

/// Intensity (of 255) above which an item pixel is drawn, hence foreground.
pub const DRAW_THRESHOLD: f64 = 8.0;

/// A set of single-item images of one size.
#[derive(Debug, Clone)]
pub struct ItemSet {
    /// Side of every image.
    pub size: usize,
    /// `len * size * size * 3` RGB bytes, image-major, row-major, interleaved.
    pub pixels: Vec<u8>,
    /// `len * size * size` foreground flags.
    pub foreground: Vec<bool>,
    /// Class (Fashion-MNIST label 0..9) of each image.
    pub classes: Vec<u32>,
    /// Fashion-MNIST item index of each image.
    pub items: Vec<usize>,
}

/// One image: `size x size` RGB bytes and its foreground.
fn compose(items: &FashionMnist, seed: u64, item: usize, size: usize) -> (Vec<u8>, Vec<bool>) {
    let mut rng = SampleRng::for_sample(seed, item as u64);
    let mut px = background(size, &mut rng);
    let mut fg = vec![false; size * size];
    // The item covers 7/16 .. 7/8 of the side (28..56 px at 64): one main object per image.
    let lo = (size * 7 / 16).max(1);
    let s = (lo + rng.below(size * 7 / 8 - lo + 1)).min(size);
    let a = resize_item(items.item(item), s);
    let (ox, oy) = (rng.below(size - s + 1), rng.below(size - s + 1));
    let tint = random_color(&mut rng);
    let bright = tint.iter().fold(0f64, |m, &v| m.max(v)).max(1.0);
    let target = 140.0 + 115.0 * rng.uniform();
    let tint = tint.map(|v| v * target / bright);
    let flip = rng.uniform() < 0.5;
    for y in 0..s {
        for x in 0..s {
            let sx = if flip { s - 1 - x } else { x };
            let v = a[y * s + sx];
            if v <= DRAW_THRESHOLD {
                continue;
            }
            let alpha = (v / 255.0 * 1.6).min(1.0);
            let shade = 0.45 + 0.55 * v / 255.0;
            let p = (oy + y) * size + ox + x;
            for c in 0..3 {
                px[p][c] = px[p][c] * (1.0 - alpha) + tint[c] * shade * alpha;
            }
            fg[p] = true;
        }
    }
    let raw = px
        .iter()
        .flat_map(|c| c.map(|v| v.round().clamp(0.0, 255.0) as u8))
        .collect();
    (raw, fg)
}

impl ItemSet {
    /// The images of items `range` of `items` (one image per item, in order), composed with
    /// `seed` (image of item `i` drawn from `SampleRng::for_sample(seed, i)`).
    pub fn make(
        items: &FashionMnist,
        seed: u64,
        range: std::ops::Range<usize>,
        size: usize,
    ) -> TrainResult<Self> {
        if range.end > items.len() || size < 8 {
            return Err(TrainError::Io {
                path: Path::new("fashion-mnist").to_path_buf(),
                reason: format!(
                    "items {range:?} of {} at size {size} (at least 8)",
                    items.len()
                ),
            });
        }
        let parts: Vec<(Vec<u8>, Vec<bool>)> = range
            .clone()
            .into_par_iter()
            .map(|i| compose(items, seed, i, size))
            .collect();
        let mut set = Self {
            size,
            pixels: Vec::with_capacity(parts.len() * size * size * 3),
            foreground: Vec::with_capacity(parts.len() * size * size),
            classes: range.clone().map(|i| items.labels[i] as u32).collect(),
            items: range.collect(),
        };
        for (p, f) in parts {
            set.pixels.extend(p);
            set.foreground.extend(f);
        }
        Ok(set)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Pixels of image `i` (`H x W x 3` bytes).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.size * self.size * 3;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Foreground of image `i` (`H x W`).
    pub fn fg(&self, i: usize) -> &[bool] {
        let n = self.size * self.size;
        &self.foreground[i * n..(i + 1) * n]
    }

    /// Images `range` as an `N x 3 x H x W` f32 tensor of 0-255 values.
    pub fn tensor(&self, range: std::ops::Range<usize>, device: &Device) -> TrainResult<Tensor> {
        let s = self.size;
        let n = range.len();
        let data: Vec<f32> = self.pixels[range.start * s * s * 3..range.end * s * s * 3]
            .iter()
            .map(|v| *v as f32)
            .collect();
        Ok(Tensor::from_vec(data, (n, s, s, 3), device)?
            .permute((0, 3, 1, 2))?
            .contiguous()?)
    }

    /// The noise key of image `i` (its item), as `segkit pssl generate` keys by file name.
    pub fn key(&self, i: usize) -> String {
        format!("item{:05}", self.items[i])
    }
}

fn io(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes `set` as split `split` of a `custom`-layout dataset under `root`: the images and, as
/// annotations, `labels[i]` (`H x W` class ids, 0 background).
pub fn write_split(root: &Path, split: &str, set: &ItemSet, labels: &[Vec<u8>]) -> TrainResult<()> {
    let s = set.size as u32;
    let (idir, adir) = (
        root.join("images").join(split),
        root.join("annotations").join(split),
    );
    for d in [&idir, &adir] {
        std::fs::create_dir_all(d).map_err(|e| io(d)(&e))?;
    }
    (0..set.len()).into_par_iter().try_for_each(|i| {
        let name = format!("{:05}.png", set.items[i]);
        let img = image::RgbImage::from_raw(s, s, set.image(i).to_vec());
        let ann = image::GrayImage::from_raw(s, s, labels[i].clone());
        let (Some(img), Some(ann)) = (img, ann) else {
            return Err(io(&idir)(&"image / label of the wrong size"));
        };
        let (ip, ap) = (idir.join(&name), adir.join(&name));
        img.save(&ip).map_err(|e| io(&ip)(&e))?;
        ann.save(&ap).map_err(|e| io(&ap)(&e))
    })
}

/// The true segmentation of image `i`: `1 + class` on its foreground, 0 elsewhere.
pub fn true_label(set: &ItemSet, i: usize) -> Vec<u8> {
    let c = 1 + set.classes[i] as u8;
    set.fg(i).iter().map(|f| if *f { c } else { 0 }).collect()
}

/// Intersection over union of two masks (1 when both are empty).
pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        inter += (*x && *y) as usize;
        union += (*x || *y) as usize;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}
