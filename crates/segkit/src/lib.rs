//! segkit: segmentation models assembled from segkit's components, with mmsegmentation's
//! presets, checkpoints and test-time pipeline.
//!
//! The component crates are re-exported ([`core`], [`backbones`], [`necks`], [`heads`]) so that
//! one dependency gives everything; this crate adds what only sees all of them:
//!
//! - [`EncoderDecoder`]: mmseg's `EncoderDecoder` segmentor (backbone -> optional neck ->
//!   decode head, optional auxiliary head), built from a typed [`SegmentorConfig`] whose
//!   backbone / neck / head choices are closed `#[serde(tag = "type")]` enums (an unknown type
//!   fails at parse time and lists the valid ones). Weight paths equal mmseg's state-dict keys
//!   (`backbone.*`, `neck.*`, `decode_head.*`, `auxiliary_head.*`), so an mmseg model-zoo
//!   `.pth` (`{meta, state_dict, ..}`) loads as is ([`EncoderDecoder::from_checkpoint`]);
//! - presets named after mmseg's configs ([`Preset`], [`Architecture`], [`Dataset`]):
//!   DANet R50/R101-D8, PSPNet R50/R101-D8 and FastFCN R50-D32 + JPU with PSP / ASPP / EncNet
//!   heads, each for Cityscapes (19 classes) and ADE20K (150 classes) with class names and
//!   palettes;
//! - inference as mmseg's test pipeline ([`inference`]): `Resize` with `keep_ratio` (OpenCV's
//!   bilinear resize on 8-bit images), the data preprocessor (mean / std, RGB), `whole` or
//!   `slide` inference, logits resized to the image and arg-maxed, optional flip and
//!   multi-scale test-time augmentation (mmseg's `SegTTAModel`);
//! - images ([`image`]): decoding with typed [`Error::BadImage`] errors and the
//!   `DynamicImage` -> tensor path;
//! - the front door ([`segmenter`]): [`Segmenter::load`] takes a registry name
//!   (`"segkit-demo"`, an mmseg preset checkpoint, a OneFormer download) or a model directory,
//!   and [`Segmenter::segment`] returns a typed [`Segmentation`] (class map, instances or
//!   panoptic segments with COCO RLE masks) that paints, overlays and saves itself.
//!
//! Design choice: composition is typed, not a string registry. A preset is a named
//! constructor that returns a plain [`SegmentorConfig`]; a JSON config with the same shape
//! builds the same model, and anything else fails when it is parsed.
//!
//! ```no_run
//! # fn main() -> segkit::Result<()> {
//! use candle_core::Device;
//! use segkit::{EncoderDecoder, SegmentorConfig};
//!
//! let cfg = SegmentorConfig::preset("pspnet_r50-d8_ade20k-512x512")?;
//! // An mmseg model-zoo checkpoint, as downloaded.
//! let model = EncoderDecoder::from_checkpoint(
//!     &cfg,
//!     "pspnet_r50-d8_512x512_160k_ade20k_20200615_184358-1890b0bd.pth",
//!     &Device::Cpu,
//! )?;
//! let img = segkit::image::open("street.jpg")?;
//! let pred = model.predict_image(&img)?;
//! println!("{} x {} class map", pred.width(), pred.height());
//! pred.colorize(&cfg.meta.palette)?.save("street_seg.png").ok();
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod config;
pub mod datasets;
pub mod image;
pub mod inference;
pub mod oneformer;
pub mod presets;
pub mod segmenter;
pub mod segmentor;
pub mod train;

pub use segkit_backbones as backbones;
pub use segkit_core as core;
pub use segkit_heads as heads;
pub use segkit_necks as necks;
pub use segkit_oneformer as oneformer_parts;

pub use config::{
    BackboneConfig, DataPreprocessorConfig, HeadConfig, NeckConfig, SegmentorConfig, TestMode,
    TestPad, TestResize, TtaConfig,
};
pub use datasets::DatasetMeta;
pub use inference::Prediction;
pub use oneformer::{
    OneFormer, OneFormerConfig, OneFormerOutput, OneFormerPrediction, PredictOptions,
};
pub use presets::{Architecture, Dataset, Preset};
pub use segmenter::{
    InstanceResult, PanopticResult, Segmentation, Segmenter, SemanticResult, Task, DEFAULT_MODEL,
};
pub use segmentor::{EncoderDecoder, SegmentorOutput};

use std::path::PathBuf;

/// Everything that can go wrong in segkit: the component crates' errors, and the
/// segmentor's own (unknown presets, configs, checkpoints that do not fit, bad images).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from segkit-core (shapes, weights, ops, checkpoint files).
    #[error(transparent)]
    Core(#[from] segkit_core::Error),
    /// A backbone error.
    #[error(transparent)]
    Backbone(#[from] segkit_backbones::Error),
    /// A neck error.
    #[error(transparent)]
    Neck(#[from] segkit_necks::Error),
    /// A head error.
    #[error(transparent)]
    Head(#[from] segkit_heads::Error),
    /// A preset name that does not exist.
    #[error("unknown preset `{name}`; valid presets: {}", .valid.join(", "))]
    UnknownPreset {
        /// The name given.
        name: String,
        /// Every valid name.
        valid: Vec<String>,
    },
    /// A segmentor config that cannot describe a valid model (or one that does not parse).
    #[error("invalid segmentor config: {0}")]
    InvalidConfig(String),
    /// A checkpoint that cannot be read or does not fit the model: `source` is the typed
    /// reason ([`segkit_core::Error::MissingWeight`] naming the key,
    /// [`segkit_core::Error::ShapeMismatch`] naming the key with both shapes — e.g. a
    /// class-count mismatch on `decode_head.conv_seg.weight` —,
    /// [`segkit_core::Error::UnexpectedWeights`] listing unused keys, or a file error).
    #[error("loading `{model}` from {}: {source}", .checkpoint.display())]
    Checkpoint {
        /// The preset (or config) name of the model being built.
        model: String,
        /// The checkpoint file.
        checkpoint: PathBuf,
        /// What did not fit (boxed to keep `Result`s small; match on `&*source`).
        source: Box<segkit_core::Error>,
    },
    /// An image that cannot be decoded or used.
    #[error("bad image {what}: {reason}")]
    BadImage {
        /// The image (a file path, or a description of an in-memory image).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A model name that is neither an existing path nor a known name ([`Segmenter::load`]).
    #[error(
        "unknown model `{name}` (no such file or directory, and not a model name); models \
         present: {}; registered but not downloaded: {}",
        list_or_none(.present),
        list_or_none(.not_downloaded)
    )]
    UnknownModel {
        /// The name given.
        name: String,
        /// Names whose files are present.
        present: Vec<String>,
        /// Registered names whose files are not (`cargo xtask download NAME`).
        not_downloaded: Vec<String>,
    },
    /// A registered model whose files are not present.
    #[error(
        "model `{name}` is not present in {}: {hint}",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
    )]
    ModelNotDownloaded {
        /// The name.
        name: String,
        /// The weights directories searched.
        searched: Vec<PathBuf>,
        /// How to get it.
        hint: String,
    },
    /// A model directory, config or file that cannot be loaded as a model.
    #[error("bad model {}: {reason}", .path.display())]
    BadModel {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A task the model cannot do (e.g. instance segmentation with a semantic model).
    #[error("model `{model}` does not do {task} segmentation; it supports: {}", .supported.join(", "))]
    UnsupportedTask {
        /// The model's name.
        model: String,
        /// The task asked for.
        task: String,
        /// The tasks it supports.
        supported: Vec<String>,
    },
    /// A device that cannot be used.
    #[error("device `{name}`: {reason}")]
    Device {
        /// The device name given.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}

impl From<Error> for segkit_core::Error {
    /// Flattens a segkit error into segkit-core's (for code that speaks only core errors).
    fn from(e: Error) -> Self {
        match e {
            Error::Core(e) => e,
            Error::Backbone(e) => e.into(),
            Error::Neck(e) => e.into(),
            Error::Head(e) => e.into(),
            Error::Checkpoint { source, .. } => *source,
            Error::BadImage { what, reason } => {
                segkit_core::Error::BadImage(format!("{what}: {reason}"))
            }
            other => segkit_core::Error::InvalidConfig(other.to_string()),
        }
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// `Result` with segkit's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
