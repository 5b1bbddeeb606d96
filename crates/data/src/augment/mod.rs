//! Training augmentation as mmseg 1.2.2's train pipeline, on whole samples (image, semantic
//! map and instance masks together), deterministic under a seed.
//!
//! | [`Transform`] | reference |
//! |---|---|
//! | `RandomResize { scale, ratio_range, keep_ratio }` | mmcv 2.1.0 `RandomResize` (`mmcv/transforms/processing.py`: `_random_sample_ratio`) + mmseg `Resize` (`mmcv.imrescale` / `imresize`) |
//! | `Resize { scale, keep_ratio }` | mmseg `Resize` (`mmseg/datasets/transforms/transforms.py`) |
//! | `RandomCrop { crop_size, cat_max_ratio, ignore_index }` | mmseg `RandomCrop` (`crop_bbox`: up to 10 redraws while one class covers `>= cat_max_ratio` of the non-ignored pixels or there is only one class) |
//! | `RandomFlip { prob, direction }` | mmseg `RandomFlip` (mmcv `imflip`) |
//! | `PhotoMetricDistortion { .. }` | mmseg `PhotoMetricDistortion` ([`color`]) |
//! | `Pad { size, size_divisor, pad_to_square, pad_val }` | mmcv `Pad` (`impad`: bottom / right) |
//! | `Normalize { mean, std, to_rgb }` | mmseg `SegDataPreProcessor` (`(x - mean) / std`, `bgr_to_rgb`) |
//!
//! Fields and their defaults mirror the Python dicts: `scale` and `Pad`'s `size` are `(w, h)`,
//! `crop_size` is `(h, w)`, exactly as in mmseg / mmcv, and `keep_ratio` defaults to `false`
//! as in mmcv's `Resize` (mmseg's configs pass `true`). A
//! [`Pipeline`] parses from the JSON form of mmseg's `train_pipeline` (minus the loading steps);
//! [`Pipeline::mmseg_train`] is the usual one, with the data preprocessor's normalisation and
//! padding appended (`Normalize` then `Pad` with 0, as `SegDataPreProcessor` pads the
//! normalised batch).
//!
//! The deterministic parts are byte-equal to mmcv / mmseg with OpenCV 5.0 (checked in
//! `crates/data/tests/augment.rs` against `tests/parity/gen_augment.py`): the resize kernels
//! ([`crate::image::resize`], the ones inference uses too), crop, flip, pad, the photometric
//! operations for given draws ([`color`]) and the normalisation.
//!
//! Deliberate differences:
//! - randomness comes from [`Rng`] (xoshiro256** seeded by splitmix64), not numpy's global
//!   MT19937: the same distributions and the same draw structure (e.g. mmseg's hue delta in
//!   `[-18, 18)`), different streams; same seed, same output;
//! - instances (mmseg has none) follow mmdet: masks resized with nearest neighbour, cropped,
//!   flipped, padded with 0; instances left empty by a crop are dropped;
//! - the image stays RGB throughout (mmseg holds BGR); every colour operation is written for
//!   that, so the numbers are mmseg's.

pub mod color;
mod sample;

pub use color::{PhotoMetricParams, PhotoMetricRanges};
pub use sample::{Applied, AugImage, Augmented, CropBox, FlipDirection, PadVal};

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Sample};

/// A small deterministic random generator: xoshiro256** (Blackman and Vigna), seeded by
/// splitmix64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    /// An independent stream per (seed, epoch, sample index), so that a sample's augmentation
    /// does not depend on the order in which workers process samples.
    pub fn for_sample(seed: u64, epoch: u64, index: u64) -> Self {
        let mut x = seed;
        let mut y = splitmix64(&mut x) ^ epoch;
        let mut z = splitmix64(&mut y) ^ index;
        Rng::new(splitmix64(&mut z))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `[0, 1)` with 53 random bits (numpy `random_sample`).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `lo + (hi - lo) * uniform()` (numpy `uniform(lo, hi)`).
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..n` without bias (Lemire's method); 0 for `n = 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut m = self.next_u64() as u128 * n as u128;
        if (m as u64) < n {
            let t = n.wrapping_neg() % n;
            while (m as u64) < t {
                m = self.next_u64() as u128 * n as u128;
            }
        }
        (m >> 64) as u64
    }

    /// Uniform integer in `lo..hi` (numpy `randint(lo, hi)`); `lo` when the range is empty.
    pub fn int_range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi.abs_diff(lo)) as i64
    }

    /// A fair coin (numpy `randint(2)`).
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
}

fn default_true() -> bool {
    true
}
fn default_one() -> f64 {
    1.0
}
fn default_ignore() -> u8 {
    255
}
fn default_brightness() -> i32 {
    32
}
fn default_range() -> [f64; 2] {
    [0.5, 1.5]
}
fn default_hue() -> i32 {
    18
}

/// One step of a training pipeline; the JSON form is mmseg's dict
/// (`{"type": "RandomCrop", "crop_size": [512, 512], "cat_max_ratio": 0.75}`). See the module
/// doc for the references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Transform {
    /// Resize to `scale * ratio`, `ratio ~ U(ratio_range)` (mmcv `RandomResize`).
    RandomResize {
        /// Base scale `(w, h)`; with `keep_ratio`, the (long, short) edge limits.
        scale: [usize; 2],
        /// `(min, max)` ratio.
        ratio_range: [f64; 2],
        /// Keep the aspect ratio (`mmcv.imrescale`) instead of resizing to the exact scale.
        #[serde(default)]
        keep_ratio: bool,
    },
    /// Resize to `scale` (mmseg `Resize`).
    Resize {
        /// Scale `(w, h)`; with `keep_ratio`, the (long, short) edge limits.
        scale: [usize; 2],
        /// Keep the aspect ratio (`mmcv.imrescale`).
        #[serde(default)]
        keep_ratio: bool,
    },
    /// Random crop of `crop_size` (mmseg `RandomCrop`).
    RandomCrop {
        /// `(h, w)` of the crop (smaller images give a smaller crop).
        crop_size: [usize; 2],
        /// Redraw (up to 10 times) while one class covers at least this share of the
        /// non-ignored pixels of the crop; 1 disables the check.
        #[serde(default = "default_one")]
        cat_max_ratio: f64,
        /// Label not counted by the check.
        #[serde(default = "default_ignore")]
        ignore_index: u8,
    },
    /// Flip with probability `prob` (mmseg `RandomFlip`).
    RandomFlip {
        /// Flip probability.
        prob: f64,
        /// Flip direction.
        #[serde(default)]
        direction: FlipDirection,
    },
    /// Photometric distortion (mmseg `PhotoMetricDistortion`).
    PhotoMetricDistortion {
        /// Brightness `beta ~ U(-delta, delta)`.
        #[serde(default = "default_brightness")]
        brightness_delta: i32,
        /// Contrast `alpha` range.
        #[serde(default = "default_range")]
        contrast_range: [f64; 2],
        /// Saturation `alpha` range.
        #[serde(default = "default_range")]
        saturation_range: [f64; 2],
        /// Hue shift in `[-delta, delta)`.
        #[serde(default = "default_hue")]
        hue_delta: i32,
    },
    /// Pad at the bottom / right (mmcv `Pad`); exactly one of `size`, `size_divisor`,
    /// `pad_to_square` (the last may combine with `size_divisor`).
    Pad {
        /// Target `(w, h)`.
        #[serde(default)]
        size: Option<[usize; 2]>,
        /// Pad each side up to a multiple of this.
        #[serde(default)]
        size_divisor: Option<usize>,
        /// Pad to a square of the longer side.
        #[serde(default)]
        pad_to_square: bool,
        /// Padding values.
        #[serde(default)]
        pad_val: PadVal,
    },
    /// `(x - mean) / std` (mmseg's data preprocessor).
    Normalize {
        /// Per-channel mean (of the output channel order).
        mean: [f64; 3],
        /// Per-channel standard deviation.
        std: [f64; 3],
        /// Output RGB (mmseg `bgr_to_rgb=True`); `false` gives BGR.
        #[serde(default = "default_true")]
        to_rgb: bool,
    },
}

/// mmcv `RandomResize._random_sample_ratio` for a uniform draw `u` in `[0, 1)`:
/// `ratio = u * (max - min) + min`, scale `(int(w * ratio), int(h * ratio))`.
pub fn random_resize_scale(scale: [usize; 2], ratio_range: [f64; 2], u: f64) -> [usize; 2] {
    let ratio = u * (ratio_range[1] - ratio_range[0]) + ratio_range[0];
    scale.map(|s| (s as f64 * ratio).max(0.0) as usize)
}

/// The size `(w, h)` mmseg's `Resize(scale, keep_ratio)` gives a `(w, h)` image.
pub fn resize_target(size: (usize, usize), scale: [usize; 2], keep_ratio: bool) -> (usize, usize) {
    if keep_ratio {
        crate::image::resize::rescale_size(size, scale)
    } else {
        (scale[0], scale[1])
    }
}

/// mmseg's `cat_max_ratio` test on the labels under a crop: more than one non-ignored class,
/// and the largest covering less than `cat_max_ratio` of the non-ignored pixels (`false` for a
/// window outside the map).
pub fn crop_passes(
    semantic: &[u8],
    width: usize,
    b: &CropBox,
    cat_max_ratio: f64,
    ignore_index: u8,
) -> bool {
    let inside = b.x1 < b.x2
        && b.y1 < b.y2
        && b.x2 <= width
        && b.y2.checked_mul(width).is_some_and(|n| n <= semantic.len());
    if !inside {
        return false;
    }
    let mut counts = [0u64; 256];
    for y in b.y1..b.y2 {
        for &v in &semantic[y * width + b.x1..y * width + b.x2] {
            counts[v as usize] += 1;
        }
    }
    counts[ignore_index as usize] = 0;
    let classes = counts.iter().filter(|&&c| c > 0).count();
    let total: u64 = counts.iter().sum();
    let max = counts.iter().copied().max().unwrap_or(0);
    classes > 1 && (max as f64 / total as f64) < cat_max_ratio
}

/// mmseg `RandomCrop.crop_bbox`: a `crop_size = (h, w)` window at offsets drawn by
/// `draw(margin_h, margin_w)` (each in `0..=margin`); when `cat_max_ratio < 1` and there is a
/// semantic map, up to 10 more windows are drawn while [`crop_passes`] fails (the last is kept
/// either way). The window is clamped to the image.
pub fn select_crop(
    width: usize,
    height: usize,
    semantic: Option<&[u8]>,
    crop_size: [usize; 2],
    cat_max_ratio: f64,
    ignore_index: u8,
    draw: &mut dyn FnMut(usize, usize) -> (usize, usize),
) -> CropBox {
    let margin_h = height.saturating_sub(crop_size[0]);
    let margin_w = width.saturating_sub(crop_size[1]);
    let mut generate = || {
        let (oh, ow) = draw(margin_h, margin_w);
        let (oh, ow) = (oh.min(margin_h), ow.min(margin_w));
        CropBox {
            y1: oh,
            y2: (oh + crop_size[0]).min(height),
            x1: ow,
            x2: (ow + crop_size[1]).min(width),
        }
    };
    let mut b = generate();
    if let (Some(sem), true) = (semantic, cat_max_ratio < 1.0) {
        for _ in 0..10 {
            if crop_passes(sem, width, &b, cat_max_ratio, ignore_index) {
                break;
            }
            b = generate();
        }
    }
    b
}

fn invalid(i: usize, msg: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("pipeline step {i}: {msg}"))
}

impl Transform {
    /// Checks the parameters (`i`: the step's position, for messages).
    fn validate(&self, i: usize) -> Result<()> {
        match self {
            Transform::RandomResize {
                scale, ratio_range, ..
            } => {
                if scale.contains(&0) {
                    return Err(invalid(i, "RandomResize scale must be positive"));
                }
                let [lo, hi] = *ratio_range;
                if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
                    return Err(invalid(
                        i,
                        format!("RandomResize ratio_range {ratio_range:?} must be 0 < min <= max"),
                    ));
                }
            }
            Transform::Resize { scale, .. } => {
                if scale.contains(&0) {
                    return Err(invalid(i, "Resize scale must be positive"));
                }
            }
            Transform::RandomCrop {
                crop_size,
                cat_max_ratio,
                ..
            } => {
                if crop_size.contains(&0) {
                    return Err(invalid(i, "RandomCrop crop_size must be positive"));
                }
                if cat_max_ratio.is_nan() || *cat_max_ratio <= 0.0 {
                    return Err(invalid(i, "RandomCrop cat_max_ratio must be positive"));
                }
            }
            Transform::RandomFlip { prob, .. } => {
                if !(0.0..=1.0).contains(prob) {
                    return Err(invalid(
                        i,
                        format!("RandomFlip prob {prob} is not in [0, 1]"),
                    ));
                }
            }
            Transform::PhotoMetricDistortion {
                brightness_delta,
                contrast_range,
                saturation_range,
                hue_delta,
            } => {
                if *brightness_delta < 0 || *hue_delta < 0 {
                    return Err(invalid(i, "PhotoMetricDistortion deltas must be >= 0"));
                }
                for r in [contrast_range, saturation_range] {
                    if !(r[0] <= r[1] && r[0].is_finite() && r[1].is_finite()) {
                        return Err(invalid(
                            i,
                            format!("PhotoMetricDistortion range {r:?} must be min <= max"),
                        ));
                    }
                }
            }
            Transform::Pad {
                size,
                size_divisor,
                pad_to_square,
                ..
            } => {
                let ok = match (size, size_divisor, pad_to_square) {
                    (Some(s), None, false) => !s.contains(&0),
                    (None, Some(d), _) => *d > 0,
                    (None, None, true) => true,
                    _ => false,
                };
                if !ok {
                    return Err(invalid(
                        i,
                        "Pad needs a positive size, a positive size_divisor or pad_to_square \
                         (size_divisor may combine with pad_to_square)",
                    ));
                }
            }
            Transform::Normalize { std, mean, .. } => {
                if std.contains(&0.0) || !std.iter().chain(mean).all(|v| v.is_finite()) {
                    return Err(invalid(i, "Normalize needs finite mean / std and std != 0"));
                }
            }
        }
        Ok(())
    }

    /// Applies this step to `s`, drawing from `rng`.
    ///
    /// Errors: [`Error::InvalidArgument`] when the step cannot apply (e.g. a resize to an
    /// empty size, an 8-bit-only step after `Normalize`).
    pub fn apply(&self, s: &mut Augmented, rng: &mut Rng) -> Result<()> {
        match self {
            Transform::RandomResize {
                scale,
                ratio_range,
                keep_ratio,
            } => {
                let target = random_resize_scale(*scale, *ratio_range, rng.uniform());
                let (w, h) = resize_target((s.width, s.height), target, *keep_ratio);
                s.resize(w, h)
            }
            Transform::Resize { scale, keep_ratio } => {
                let (w, h) = resize_target((s.width, s.height), *scale, *keep_ratio);
                s.resize(w, h)
            }
            Transform::RandomCrop {
                crop_size,
                cat_max_ratio,
                ignore_index,
            } => {
                let b = select_crop(
                    s.width,
                    s.height,
                    s.semantic.as_deref(),
                    *crop_size,
                    *cat_max_ratio,
                    *ignore_index,
                    &mut |mh, mw| {
                        let oh = rng.below(mh as u64 + 1) as usize;
                        let ow = rng.below(mw as u64 + 1) as usize;
                        (oh, ow)
                    },
                );
                s.crop(b)
            }
            Transform::RandomFlip { prob, direction } => {
                if rng.uniform() < *prob {
                    s.flip(*direction)?;
                } else {
                    s.applied.push(Applied::Flip(None));
                }
                Ok(())
            }
            Transform::PhotoMetricDistortion {
                brightness_delta,
                contrast_range,
                saturation_range,
                hue_delta,
            } => {
                let ranges = PhotoMetricRanges {
                    brightness_delta: *brightness_delta,
                    contrast_range: *contrast_range,
                    saturation_range: *saturation_range,
                    hue_delta: *hue_delta,
                };
                s.photometric(&PhotoMetricParams::sample(&ranges, rng))
            }
            Transform::Pad {
                size,
                size_divisor,
                pad_to_square,
                pad_val,
            } => {
                let (w, h) = pad_target((s.width, s.height), *size, *size_divisor, *pad_to_square);
                s.pad(w, h, pad_val)
            }
            Transform::Normalize { mean, std, to_rgb } => s.normalize(*mean, *std, *to_rgb),
        }
    }
}

/// mmcv `Pad._pad_img`'s target size `(w, h)` for a `(w, h)` image.
pub fn pad_target(
    (w, h): (usize, usize),
    size: Option<[usize; 2]>,
    size_divisor: Option<usize>,
    pad_to_square: bool,
) -> (usize, usize) {
    let mut target = if pad_to_square {
        let m = w.max(h);
        Some((m, m))
    } else {
        None
    };
    if let Some(d) = size_divisor.filter(|&d| d > 0) {
        let (tw, th) = target.unwrap_or((w, h));
        target = Some((tw.div_ceil(d) * d, th.div_ceil(d) * d));
    } else if let Some([sw, sh]) = size {
        target = Some((sw, sh));
    }
    target.unwrap_or((w, h))
}

/// A training pipeline: a validated list of [`Transform`]s. Its JSON form is the list of
/// mmseg dicts.
///
/// ```
/// use segkit_data::augment::{Pipeline, Rng};
/// let p: Pipeline = serde_json::from_str(r#"[
///     {"type": "RandomResize", "scale": [2048, 512], "ratio_range": [0.5, 2.0], "keep_ratio": true},
///     {"type": "RandomCrop", "crop_size": [512, 512], "cat_max_ratio": 0.75},
///     {"type": "RandomFlip", "prob": 0.5},
///     {"type": "PhotoMetricDistortion"}
/// ]"#)?;
/// assert_eq!(p, Pipeline::mmseg_train([2048, 512], [512, 512], false));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Transform>", into = "Vec<Transform>")]
pub struct Pipeline {
    transforms: Vec<Transform>,
}

impl TryFrom<Vec<Transform>> for Pipeline {
    type Error = Error;

    fn try_from(t: Vec<Transform>) -> Result<Self> {
        Pipeline::new(t)
    }
}

impl From<Pipeline> for Vec<Transform> {
    fn from(p: Pipeline) -> Self {
        p.transforms
    }
}

/// ImageNet mean of mmseg's data preprocessor (RGB).
pub const IMAGENET_MEAN: [f64; 3] = [123.675, 116.28, 103.53];
/// ImageNet standard deviation of mmseg's data preprocessor (RGB).
pub const IMAGENET_STD: [f64; 3] = [58.395, 57.12, 57.375];

impl Pipeline {
    /// A pipeline of `transforms`, checked: valid parameters, and nothing that needs the 8-bit
    /// image (resizes, photometric distortion, a second `Normalize`) after `Normalize`.
    ///
    /// Errors: [`Error::InvalidArgument`] naming the step.
    pub fn new(transforms: Vec<Transform>) -> Result<Self> {
        let mut normalized = false;
        for (i, t) in transforms.iter().enumerate() {
            t.validate(i)?;
            match t {
                Transform::RandomResize { .. }
                | Transform::Resize { .. }
                | Transform::PhotoMetricDistortion { .. }
                | Transform::Normalize { .. }
                    if normalized =>
                {
                    return Err(invalid(
                        i,
                        "this step needs the 8-bit image but comes after Normalize",
                    ));
                }
                Transform::Normalize { .. } => normalized = true,
                Transform::Pad { pad_val, .. }
                    if !normalized
                        && (pad_val.img.fract() != 0.0
                            || !(0.0..=255.0).contains(&pad_val.img)) =>
                {
                    return Err(invalid(
                        i,
                        format!(
                            "pad value {} for an 8-bit image is not an integer in 0..=255",
                            pad_val.img
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(Pipeline { transforms })
    }

    /// mmseg 1.x's standard semantic-segmentation train pipeline:
    /// `RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True)`,
    /// `RandomCrop(crop_size, cat_max_ratio=0.75)`, `RandomFlip(prob=0.5)`,
    /// `PhotoMetricDistortion()`; with `preprocess`, also the data preprocessor's
    /// `Normalize(IMAGENET_MEAN, IMAGENET_STD, to_rgb)` and `Pad(size=crop, img 0, seg 255)`.
    /// ADE20K: `scale = [2048, 512]`, `crop_size = [512, 512]`; Cityscapes: `[2048, 1024]`,
    /// `[512, 1024]`.
    pub fn mmseg_train(scale: [usize; 2], crop_size: [usize; 2], preprocess: bool) -> Self {
        let mut transforms = vec![
            Transform::RandomResize {
                scale,
                ratio_range: [0.5, 2.0],
                keep_ratio: true,
            },
            Transform::RandomCrop {
                crop_size,
                cat_max_ratio: 0.75,
                ignore_index: 255,
            },
            Transform::RandomFlip {
                prob: 0.5,
                direction: FlipDirection::Horizontal,
            },
            Transform::PhotoMetricDistortion {
                brightness_delta: 32,
                contrast_range: [0.5, 1.5],
                saturation_range: [0.5, 1.5],
                hue_delta: 18,
            },
        ];
        if preprocess {
            transforms.push(Transform::Normalize {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
                to_rgb: true,
            });
            transforms.push(Transform::Pad {
                size: Some([crop_size[1], crop_size[0]]),
                size_divisor: None,
                pad_to_square: false,
                pad_val: PadVal { img: 0.0, seg: 255 },
            });
        }
        Pipeline { transforms }
    }

    /// The steps.
    pub fn transforms(&self) -> &[Transform] {
        &self.transforms
    }

    /// Runs every step on `sample`, drawing from `rng`.
    ///
    /// Errors: [`Error::InvalidArgument`] for a sample whose buffers do not match its size or
    /// a step that cannot apply.
    pub fn apply(&self, sample: Sample, rng: &mut Rng) -> Result<Augmented> {
        let mut s = Augmented::new(sample)?;
        for t in &self.transforms {
            t.apply(&mut s, rng)?;
        }
        Ok(s)
    }
}
