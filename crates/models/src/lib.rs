//! segkit-models: segkit's architectures, one folder each, assembled from the component
//! crates (segkit-backbones, segkit-necks, segkit-heads, segkit-oneformer).
//!
//! - [`encoder_decoder`]: mmseg's `EncoderDecoder` segmentor (backbone -> optional neck ->
//!   decode head, optional auxiliary head) with mmseg's presets (DANet, PSPNet, FastFCN x
//!   Cityscapes / ADE20K, segkit's demo model), checkpoint loading and test pipeline;
//! - [`oneformer`]: OneFormer assembled from a Swin or ResNet backbone, the deformable-attention
//!   pixel decoder and the task-conditioned transformer decoder, with Hugging Face config and
//!   directory loading and the shi-labs presets;
//! - [`gscnn`]: Gated-SCNN (WideResNet38 or dilated ResNet regular stream, shape stream with
//!   gated convolutions, Canny fusion, ASPP with edge branch), official checkpoint layout.
//!
//! One [`ModelConfig`] (a closed `#[serde(tag = "type")]` enum) describes every model, and one
//! preset table ([`presets`], [`preset`]) names every preset of every architecture. segkit's own
//! `config.json` is a serialised [`ModelConfig`], so a model directory carries its type.
//!
//! Adding an architecture is one folder here (its config, presets and assembly) plus its parts
//! in the component crates, one variant in [`ModelConfig`] and its presets in the table
//! (docs/ARCHITECTURE.md walks through it).
//!
//! ```
//! use segkit_models::{preset, presets, ModelConfig};
//! assert!(presets().iter().any(|p| p.name == "danet_r50-d8_cityscapes-512x1024"));
//! let cfg = preset("pspnet_r50-d8_ade20k-512x512").unwrap();
//! assert!(matches!(cfg, ModelConfig::EncoderDecoder(_)));
//! let json = serde_json::to_string(&cfg).unwrap();
//! assert!(json.starts_with(r#"{"type":"EncoderDecoder""#));
//! assert_eq!(ModelConfig::from_json(&json).unwrap(), cfg);
//! ```
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod datasets;
pub mod encoder_decoder;
pub mod gscnn;
pub mod image;
pub mod model;
pub mod oneformer;
mod preset_table;
pub mod segment;

pub use datasets::DatasetMeta;
pub use encoder_decoder::config::{
    BackboneConfig, DataPreprocessorConfig, HeadConfig, NeckConfig, SegmentorConfig, TestMode,
    TestPad, TestResize, TtaConfig,
};
pub use encoder_decoder::inference::Prediction;
pub use encoder_decoder::presets::{Architecture, Dataset, Preset};
pub use encoder_decoder::{EncoderDecoder, SegmentorOutput};
pub use gscnn::{Gscnn, GscnnConfig, GscnnOutput};
pub use model::{load_hf_dir, ModelConfig};
pub use oneformer::{
    OneFormer, OneFormerConfig, OneFormerOutput, OneFormerPrediction, PredictOptions,
};
pub use preset_table::{preset, presets, PresetInfo};
pub use segment::{Model, Segmentation, Task};

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
    /// A model name that is neither an existing path nor a known name (for the facade's
    /// `segkit::Segmenter::load`).
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

impl Error {
    /// The one way a checkpoint failure becomes an [`Error::Checkpoint`]: `source` (a file
    /// error from reading it, or a weight that does not fit) while loading `model` from
    /// `checkpoint`.
    ///
    /// ```
    /// use segkit_models::Error;
    /// let missing = segkit_core::Error::MissingWeight {
    ///     key: "conv.weight".into(),
    ///     available: vec![],
    /// };
    /// let e = Error::checkpoint("tiny", "m.safetensors", missing);
    /// assert_eq!(
    ///     e.to_string(),
    ///     "loading `tiny` from m.safetensors: missing weight `conv.weight`"
    /// );
    /// ```
    pub fn checkpoint(
        model: impl Into<String>,
        checkpoint: impl Into<PathBuf>,
        source: segkit_core::Error,
    ) -> Self {
        Error::Checkpoint {
            model: model.into(),
            checkpoint: checkpoint.into(),
            source: Box::new(source),
        }
    }

    /// Attributes a weight error met while building `model` from `checkpoint` (what
    /// `segkit_core::checkpoint::load_model` returns: [`segkit_core::Error::MissingWeight`],
    /// [`segkit_core::Error::ShapeMismatch`] or [`segkit_core::Error::UnexpectedWeights`]) to
    /// the checkpoint, as an [`Error::Checkpoint`] ([`Error::checkpoint`]); any other error
    /// (an invalid config, a device failure) is returned unchanged.
    pub fn in_checkpoint(self, model: &str, checkpoint: &std::path::Path) -> Self {
        match self {
            Error::Core(
                source @ (segkit_core::Error::MissingWeight { .. }
                | segkit_core::Error::ShapeMismatch { .. }
                | segkit_core::Error::UnexpectedWeights { .. }),
            ) => Error::checkpoint(model, checkpoint, source),
            other => other,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_errors_are_attributed_to_the_checkpoint_and_others_pass_through() {
        let shape = Error::Core(segkit_core::Error::ShapeMismatch {
            what: "decode_head.conv_seg.weight".into(),
            expected: vec![4, 8, 1, 1],
            got: vec![5, 8, 1, 1],
        });
        let path = std::path::Path::new("w/model.safetensors");
        match shape.in_checkpoint("tiny", path) {
            Error::Checkpoint {
                model,
                checkpoint,
                source,
            } => {
                assert_eq!((model.as_str(), checkpoint.as_path()), ("tiny", path));
                assert!(matches!(*source, segkit_core::Error::ShapeMismatch { .. }));
            }
            other => panic!("{other}"),
        }
        let cfg = Error::InvalidConfig("no classes".into()).in_checkpoint("tiny", path);
        assert!(matches!(cfg, Error::InvalidConfig(_)), "{cfg}");
        let io = segkit_core::Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("truncated"),
        };
        let e = Error::checkpoint("tiny", path, io);
        let text = e.to_string();
        assert!(
            text.starts_with("loading `tiny` from w/model.safetensors: "),
            "{text}"
        );
    }
}
