//! [`Transform`]: one step of a training pipeline, its parameter checks and its application.

use serde::{Deserialize, Serialize};

use super::{
    pad_target, random_resize_scale, resize_target, select_crop, Applied, Augmented, FlipDirection,
    PadVal, PhotoMetricParams, PhotoMetricRanges, Rng,
};
use crate::{Error, Result};

fn default_true() -> bool {
    true
}
fn default_one() -> f64 {
    1.0
}
fn default_ignore() -> u16 {
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
/// (`{"type": "RandomCrop", "crop_size": [512, 512], "cat_max_ratio": 0.75}`). See the
/// [module doc](crate::augment) for the references.
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
        ignore_index: u16,
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

/// An [`Error::InvalidArgument`] naming pipeline step `i`.
pub(super) fn invalid(i: usize, msg: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("pipeline step {i}: {msg}"))
}

impl Transform {
    /// Checks the parameters (`i`: the step's position, for messages).
    pub(super) fn validate(&self, i: usize) -> Result<()> {
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
