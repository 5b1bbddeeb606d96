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
mod geometry;
mod rng;
mod sample;
mod transform;

pub use color::{PhotoMetricParams, PhotoMetricRanges};
pub use geometry::{crop_passes, pad_target, random_resize_scale, resize_target, select_crop};
pub use rng::Rng;
pub use sample::{Applied, AugImage, Augmented, CropBox, FlipDirection, PadVal};
pub use transform::Transform;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Sample};
use transform::invalid;

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
