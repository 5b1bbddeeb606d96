//! segkit-oneformer: the parts of OneFormer (Jain et al., "OneFormer: One Transformer to Rule
//! Universal Image Segmentation", CVPR 2023) that sit on top of a backbone and the
//! multi-scale deformable-attention pixel decoder.
//!
//! Parameter names and numerics follow transformers' `models/oneformer/modeling_oneformer.py`
//! and `image_processing_oneformer.py` (HF checkpoints `shi-labs/oneformer_*` load unchanged).
//!
//! - [`tokenizer`]: CLIP BPE task / text tokenizer (HF `CLIPTokenizer` ids), with the CLIP
//!   vocabulary embedded as the offline default.
//! - [`decoder`]: task MLP, query transformer, masked-attention transformer decoder and the
//!   class / mask predictions, built from the pixel decoder's output `FeatureSpec`s.
//! - [`attention`]: `torch.nn.MultiheadAttention`, shared by the decoder and the text mapper.
//! - [`text_mapper`]: the training-time text encoder, context embeddings and projector.
//! - [`postprocess`]: semantic, instance and panoptic post-processing.
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod attention;
pub mod decoder;
pub mod postprocess;
pub mod text_mapper;
pub mod tokenizer;

/// Errors of segkit-oneformer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from segkit-core (shapes, weights, ops).
    #[error(transparent)]
    Core(#[from] segkit_core::Error),
    /// A configuration that does not describe a valid network.
    #[error("invalid OneFormer config: {0}")]
    InvalidConfig(String),
    /// The tokenizer could not be built or could not encode a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A channel count the config declares differs from the one an input spec reports.
    #[error(
        "transformer decoder: the config's `{field}` is {declared}, but {spec} has {channels} \
         channels"
    )]
    SpecMismatch {
        /// The config field (`hidden_dim`, `conv_dim`, `mask_dim`).
        field: &'static str,
        /// Its value.
        declared: usize,
        /// The input spec it was compared with, e.g. "the pixel decoder's mask features
        /// (stride 4)".
        spec: String,
        /// The channels that spec reports.
        channels: usize,
    },
    /// An argument outside its valid range (e.g. an unknown task name).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}

impl From<Error> for segkit_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(c) => c,
            Error::InvalidConfig(m) => segkit_core::Error::InvalidConfig(m),
            e @ Error::SpecMismatch { .. } => segkit_core::Error::InvalidConfig(e.to_string()),
            other => segkit_core::Error::InvalidArgument(other.to_string()),
        }
    }
}

/// Result alias of segkit-oneformer.
pub type Result<T> = std::result::Result<T, Error>;
