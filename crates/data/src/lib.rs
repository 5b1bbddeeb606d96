//! segkit-data: dataset layouts, augmentation, metrics, RLE, palettes and overlays.
//!
//! - [`image`]: image decoding to 8-bit RGB and the OpenCV-exact resizes, which training
//!   (augmentation) and inference (segkit-models' test pipeline) share;
//! - [`dataset`]: the [`Sample`] type and the [`SegDataset`] trait readers implement;
//! - [`classification`]: image-classification sets (torchvision `ImageFolder`, MNIST IDX
//!   files) as [`SegDataset`]s whose label maps hold each image's class;
//! - [`layouts`]: readers of ADE20K, Cityscapes, PASCAL VOC (+ SBD aug), COCO panoptic /
//!   instances and mmseg's generic folder layout; [`io`]: the file decoding they share;
//! - [`augment`]: mmseg's training augmentations on whole samples, under a seed;
//! - [`edges`]: Gated-SCNN's Canny map (OpenCV-exact) and edge ground truth;
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
pub mod classification;
#[cfg(test)]
mod classification_tests;
pub mod dataset;
pub mod edges;
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

/// Errors of segkit-data: segkit-core's [`segkit_core::Error`], the one error type of segkit's
/// component crates (so a missing weight, a shape or a mis-wiring is matched the same way
/// whichever component reported it; see [`segkit_core::error`]).
pub use segkit_core::Error;

/// `Result` with segkit-data's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
