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
//! - [`targets`]: training targets (task, class / mask targets, text entries) from panoptic
//!   ground truth, as `OneFormerProcessor` builds them.
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod attention;
pub mod decoder;
pub mod postprocess;
pub mod targets;
pub mod text_mapper;
pub mod tokenizer;

/// Errors of segkit-oneformer: segkit-core's [`segkit_core::Error`], the one error type of segkit's
/// component crates (so a missing weight, a shape or a mis-wiring is matched the same way
/// whichever component reported it; see [`segkit_core::error`]).
pub use segkit_core::Error;

/// `Result` with segkit-oneformer's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
