//! segkit-data: dataset layouts, augmentation, metrics, RLE, palettes and overlays.
//!
//! - [`image`]: image decoding to 8-bit RGB and the OpenCV-exact resizes, which training
//!   (augmentation) and inference (segkit-models' test pipeline) share;
//! - [`dataset`]: the [`Sample`] type and the [`SegDataset`] trait readers implement;
//! - [`layouts`]: readers of ADE20K, Cityscapes, PASCAL VOC (+ SBD aug), COCO panoptic /
//!   instances and mmseg's generic folder layout; [`io`]: the file decoding they share;
//! - [`augment`]: mmseg's training augmentations on whole samples, under a seed;
//! - [`metrics`]: mIoU and friends (mmseg `IoUMetric`), PQ (panopticapi), mask AP
//!   (pycocotools `COCOeval`);
//! - [`rle`]: COCO run-length encoding (pycocotools `mask`);
//! - [`palette`]: colour maps and overlays (VOC palette, mmseg's visualizer blend).
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod augment;
pub mod dataset;
pub mod image;
pub mod io;
pub mod layouts;
pub mod metrics;
pub mod palette;
pub mod rle;

pub use dataset::{DatasetInfo, InstanceAnnotation, Sample, SegDataset};
pub use layouts::{
    Ade20kDataset, CityscapesDataset, CocoInstanceDataset, CocoPanopticDataset, ConcatDataset,
    CustomConfig, CustomDataset, VocDataset,
};
pub use rle::Rle;

/// Errors of segkit-data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from segkit-core.
    #[error(transparent)]
    Core(#[from] segkit_core::Error),
    /// A dataset file that is missing or malformed; names the file.
    #[error("{path}: {reason}")]
    BadFile {
        /// The offending file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An image that cannot be decoded or used ([`image`]); names the file.
    #[error("bad image {what}: {reason}")]
    BadImage {
        /// The image (a file path, or a description of an in-memory image).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}

/// Result alias of segkit-data.
pub type Result<T> = std::result::Result<T, Error>;
