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
//!   gated convolutions, Canny fusion, ASPP with edge branch), official checkpoint layout;
//! - [`panet`]: PANet instance segmentation (caffe ResNet, GN FPN with the bottom-up path, RPN,
//!   RoI heads with adaptive feature pooling and fully-connected mask fusion), Detectron's
//!   test pipeline, the official legacy checkpoint.
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

pub mod classifier;
pub mod datasets;
pub mod encoder_decoder;
pub mod gscnn;
pub mod image;
pub mod model;
pub mod oneformer;
pub mod panet;
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
pub use panet::{Panet, PanetConfig, PanetOutput};
pub use preset_table::{preset, presets, PresetInfo};
pub use segment::{Model, Segmentation, Task};

mod error;
pub use error::{Error, Result};
