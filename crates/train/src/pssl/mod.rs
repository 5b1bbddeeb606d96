//! PSSL (Distilling Ensemble of Explanations for Weakly-Supervised Pre-Training of Image
//! Segmentation Models): pseudo segmentation labels from an ensemble of classifiers'
//! explanations.
//!
//! - [`explain`]: the [`Explainer`] trait on candle's autograd, [`SmoothGrad`] (captum's
//!   `NoiseTunnel(Saliency)`), [`IntegratedGradients`], channel reduction;
//! - [`consensus`]: per-image normalisation, the ensemble average, numpy-equal deciles;
//! - [`labels`]: the label PNG (deciles + class), atomic writes, PaddleSeg's binary masks;
//! - [`generate`]: `segkit pssl generate`'s resumable, parallel labelling;
//! - [`noise`]: reproducible Gaussian noise keyed by image;
//! - [`dataset`]: PSSL labels (segkit's decile PNGs or PaddleSeg's masks) as a training set,
//!   thresholded at load time, and the weighted cross-entropy for a segmentor's heads.
//!
//! The weighted cross-entropy (1.0 per class, 0.1 background) is
//! `segkit_losses::CrossEntropyLoss::pssl` / `pssl_class_weight`.

pub mod consensus;
pub mod dataset;
#[cfg(test)]
mod dataset_tests;
pub mod explain;
pub mod generate;
pub mod labels;
pub mod noise;
#[cfg(test)]
mod train_tests;

pub use dataset::{
    pssl_ignore_index, set_pssl_losses, Background, PaddleSegPsslConfig, PsslDataset,
    PsslDatasetConfig,
};
pub use explain::{ChannelReduce, Explainer, IntegratedGradients, NoiseLevel, SmoothGrad};
pub use labels::PsslLabel;
