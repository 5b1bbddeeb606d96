//! PSSL (Distilling Ensemble of Explanations for Weakly-Supervised Pre-Training of Image
//! Segmentation Models): pseudo segmentation labels from an ensemble of classifiers'
//! explanations.
//!
//! - [`explain`]: the [`Explainer`] trait on candle's autograd, [`SmoothGrad`] (captum's
//!   `NoiseTunnel(Saliency)`), [`IntegratedGradients`], channel reduction;
//! - [`consensus`]: per-image normalisation, the ensemble average, numpy-equal deciles;
//! - [`labels`]: the label PNG (deciles + class), atomic writes, PaddleSeg's binary masks;
//! - [`generate`]: `segkit pssl generate`'s resumable, parallel labelling;
//! - [`noise`]: reproducible Gaussian noise keyed by image.
//!
//! The weighted cross-entropy (1.0 per class, 0.1 background) is
//! `segkit_losses::CrossEntropyLoss::pssl` / `pssl_class_weight`.

pub mod consensus;
pub mod explain;
pub mod generate;
pub mod labels;
pub mod noise;

pub use explain::{ChannelReduce, Explainer, IntegratedGradients, NoiseLevel, SmoothGrad};
pub use labels::PsslLabel;
