//! segkit: image-segmentation models in Rust on candle — the front door.
//!
//! This crate re-exports segkit's crates, so one dependency gives everything, and adds the
//! [`Segmenter`]: load a model by registry name or path, segment an image, get a typed,
//! serialisable result ([`Segmentation`]: a class map, instances or panoptic segments with
//! COCO RLE masks) that paints, overlays and saves itself, and serialises to the JSON that
//! `segkit infer` writes (`serde_json::to_string_pretty(&out)`; the shape is documented in
//! [`segmenter::results`]). segkit's small trained demo model
//! ships inside this package ([`DEFAULT_MODEL`], `demo/`), so it works offline anywhere.
//!
//! | re-export | crate | what |
//! |---|---|---|
//! | [`core`] | segkit-core | errors, `FeatureSpec`, layers, ops candle lacks, checkpoints |
//! | [`backbones`] | segkit-backbones | ResNet, Swin |
//! | [`necks`] | segkit-necks | FPN, JPU, deformable-attention pixel decoder |
//! | [`heads`] | segkit-heads | FCN, PSP, DANet, ASPP, EncNet |
//! | [`oneformer_parts`] | segkit-oneformer | OneFormer's tokenizer, decoder, post-processing |
//! | [`losses`] | segkit-losses | segmentation losses, matcher, criterion |
//! | [`data`] | segkit-data | datasets, augmentation, metrics, palettes, RLE |
//! | [`models`] | segkit-models | the architectures, `ModelConfig`, the preset table |
//! | [`train`] (feature `train`, default) | segkit-train | the training loop |
//!
//! The models' main types are also at the top level ([`EncoderDecoder`], [`SegmentorConfig`],
//! [`OneFormer`], [`ModelConfig`], ...).
//!
//! ```no_run
//! # fn main() -> segkit::Result<()> {
//! use segkit::{Segmenter, Task};
//!
//! let seg = Segmenter::load("segkit-demo", &candle_core::Device::Cpu)?; // a name or a path
//! let img = segkit::image::open("photo.jpg")?;
//! let out = seg.segment(&img, Task::Semantic)?;
//! out.semantic().save_color("seg.png")?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod segmenter;

pub use segkit_backbones as backbones;
pub use segkit_core as core;
pub use segkit_data as data;
pub use segkit_heads as heads;
pub use segkit_losses as losses;
pub use segkit_models as models;
pub use segkit_necks as necks;
pub use segkit_oneformer as oneformer_parts;
#[cfg(feature = "train")]
pub use segkit_train as train;

pub use segkit_models::{
    datasets, encoder_decoder, image, load_hf_dir, oneformer, preset, presets, segment,
    Architecture, BackboneConfig, DataPreprocessorConfig, Dataset, DatasetMeta, EncoderDecoder,
    Error, HeadConfig, Model, ModelConfig, NeckConfig, OneFormer, OneFormerConfig, OneFormerOutput,
    OneFormerPrediction, PredictOptions, Prediction, Preset, PresetInfo, Result, SegmentorConfig,
    SegmentorOutput, TestMode, TestPad, TestResize, TtaConfig,
};
pub use segmenter::{
    ClassArea, Instance, InstanceResult, PanopticResult, PanopticSegment, Segmentation, Segmenter,
    SemanticResult, Task, DEFAULT_MODEL,
};
