//! The sample types and the dataset trait every reader implements; the training loop and
//! `segkit eval` consume datasets only through [`SegDataset`].
//!
//! A sample is what mmseg's `LoadImageFromFile` + `LoadAnnotations` (and mmdet's panoptic /
//! instance loaders) produce: an 8-bit RGB image and, per task, its ground truth at the image's
//! resolution. Augmentations ([`crate::augment`]) transform a whole [`Sample`] consistently.

use std::path::PathBuf;

/// One instance of a thing (or one stuff region) of an image.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceAnnotation {
    /// Dataset class index (the same index as in the semantic map).
    pub class_id: u32,
    /// Row-major `height x width` binary mask.
    pub mask: Vec<bool>,
    /// COCO `iscrowd`.
    pub iscrowd: bool,
}

/// One training / evaluation sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Where the image came from (for messages and outputs).
    pub path: PathBuf,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Row-major `height x width x 3` RGB bytes.
    pub image: Vec<u8>,
    /// Row-major `height x width` class indices (train ids); `ignore_index` (255 unless the
    /// dataset says otherwise) marks pixels without a label. `None` when the dataset has no
    /// semantic ground truth.
    pub semantic: Option<Vec<u16>>,
    /// Instances (things and, for panoptic data, stuff segments), when the dataset has them.
    pub instances: Option<Vec<InstanceAnnotation>>,
}

/// Static facts of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    /// Class names, by class index.
    pub classes: Vec<String>,
    /// RGB colour per class.
    pub palette: Vec<[u8; 3]>,
    /// Label value that marks unlabelled pixels in [`Sample::semantic`].
    pub ignore_index: u16,
    /// Which classes are things (have instances); empty for purely semantic data.
    pub thing_classes: Vec<u32>,
}

/// A finite, indexable set of samples. Readers fail with [`crate::Error::BadFile`] naming the
/// file for anything missing or malformed, at construction (listing) or in [`SegDataset::get`]
/// (decoding).
pub trait SegDataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether the dataset has no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Classes, palette, ignore index.
    fn info(&self) -> &DatasetInfo;
    /// Loads sample `index` (`0..len()`).
    fn get(&self, index: usize) -> crate::Result<Sample>;
}
