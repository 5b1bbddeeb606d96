//! segkit-losses: the training losses of the segkit models, with forward values and gradients
//! equal to the PyTorch references (torch.nn.functional, mmseg, transformers' Mask2Former /
//! OneFormer loss code, the official Gated-SCNN repository).
//!
//! Every loss is composed from candle tensor ops that have a backward pass, so
//! `loss.backward()` yields the gradients with respect to the logits (and any other
//! [`candle_core::Var`] involved). What the references compute under `torch.no_grad()`
//! (OHEM weights, class-balanced edge weights, Hungarian matching, importance-sampled point
//! coordinates) is computed on the host and enters the graph as constants.
//!
//! | module | reference |
//! |---|---|
//! | [`cross_entropy`] | mmseg `CrossEntropyLoss` / `cross_entropy` (both averaging modes), `binary_cross_entropy` (`use_sigmoid`), PSSL class weights |
//! | [`config`] | mmseg's `loss_decode` configs per named head output, `BaseDecodeHead` / `DAHead` / `EncHead.loss_by_feat` |
//! | [`ohem`] | mmseg `OHEMPixelSampler` + `CrossEntropyLoss` |
//! | [`gscnn`] | nv-tlabs/GSCNN `loss.py` (`JointEdgeSegLoss`, `bce2d`, `ImageBasedCrossEntropyLoss2d`), `my_functionals/DualTaskLoss.py` |
//! | [`mask`] | transformers `dice_loss`, `sigmoid_cross_entropy_loss`, `pair_wise_*`, MaskFormer `sigmoid_focal_loss`; torchvision `sigmoid_focal_loss` |
//! | [`point_sample`](mod@point_sample) | transformers `sample_point`, `sample_points_using_uncertainty` |
//! | [`lsap`] | scipy `linear_sum_assignment` (rectangular shortest augmenting path) |
//! | [`matcher`] | transformers `OneFormerHungarianMatcher` |
//! | [`criterion`] | transformers `OneFormerLoss` (set criterion, auxiliary layers) |
//! | [`contrastive`] | transformers `OneFormerLoss.loss_contrastive` |
//! | [`detection`] | Detectron v1 / PANet `smooth_l1_loss`, `fpn_rpn_losses`, `fast_rcnn_losses`, `mask_rcnn_losses` |
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod config;
pub mod contrastive;
pub mod criterion;
pub mod cross_entropy;
pub mod detection;
pub mod gscnn;
pub mod lsap;
pub mod mask;
pub mod matcher;
pub mod ohem;
pub mod point_sample;
mod util;

pub use config::{class_presence, CrossEntropyLossConfig, LossConfig, OutputLosses};
pub use contrastive::query_text_contrastive_loss;
pub use criterion::{
    ContrastiveInputs, LayerLosses, OneFormerLoss, OneFormerLossConfig, OneFormerLosses,
    SetPrediction,
};
pub use cross_entropy::{pssl_class_weight, BinaryCrossEntropyLoss, CrossEntropyLoss};
pub use gscnn::{
    edge_attention_target, edge_bce_loss, DualTaskGradient, DualTaskLoss,
    ImageBasedCrossEntropyLoss, JointEdgeSegLoss, JointEdgeSegLosses, SegLossMode,
};
pub use lsap::linear_sum_assignment;
pub use mask::{
    dice_loss, pair_wise_dice_loss, pair_wise_sigmoid_cross_entropy_loss,
    sigmoid_cross_entropy_loss, sigmoid_focal_loss, sigmoid_focal_loss_torchvision, Reduction,
};
pub use matcher::{MaskTargets, Matching, OneFormerHungarianMatcher};
pub use ohem::{OhemCrossEntropyLoss, OhemPixelSampler};
pub use point_sample::{
    point_sample, sample_points_using_uncertainty, PointSource, ReplayPointSource,
    SeededPointSource,
};

/// Errors of segkit-losses: segkit-core's [`segkit_core::Error`], the one error type of segkit's
/// component crates (so a missing weight, a shape or a mis-wiring is matched the same way
/// whichever component reported it; see [`segkit_core::error`]).
pub use segkit_core::Error;

/// `Result` with segkit-losses's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
