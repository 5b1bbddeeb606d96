//! segkit-train: mmseg's iteration-based training loop for [`segkit_models::EncoderDecoder`]
//! segmentors on CPU with candle autograd, plus evaluation.
//!
//! - [`TrainConfig`] ([`config`]): the JSON training config — model preset / config,
//!   dataset (layout + root), pipeline, optimizer (SGD with momentum, AdamW), schedule (poly
//!   with a minimum, linear warm-up), iterations, batch size, gradient accumulation,
//!   auxiliary-loss weight, evaluation / checkpoint / log intervals, output directory;
//! - [`losses`]: every configured loss of every named head output, by mmseg's name, and the
//!   total ([`losses::compute`], the trainer's code path);
//! - [`Trainer`] ([`trainer`]): the loop, atomic safetensors checkpoints with exact resume,
//!   periodic evaluation, a progress line on stderr and a JSONL metrics log;
//! - [`evaluate`] ([`eval`]): aAcc / mIoU / per-class IoU with segkit-data's `SegMetric`;
//! - [`data`]: the `custom` dataset layout, the training transforms, data order, collation;
//! - [`optim`]: the optimizers, update for update as PyTorch's;
//! - [`checkpoint`]: the checkpoint format and atomic writes;
//! - [`plot`]: a small PNG line-plot writer for training curves.
//!
//! Every op on the training path of the ResNet segmentors (PSP / FCN / DANet / EncNet heads)
//! has a backward pass: segkit-core's fast kernels and the heads' softmax switch to
//! differentiable implementations when their inputs record gradients (see
//! `segkit_core::ops`).
//!
//! Performance note: candle's element-wise CPU ops run on a thread pool whose workers spin
//! after every op by default, which next to segkit's rayon kernels wastes most of a small
//! machine's time (4-6x slower steps on 2 cores). segkit-core sets
//! `CANDLE_BARRIER_POOL_SPIN_LIMIT=0` before `main` (unless already set;
//! `segkit_core::runtime`): the workers park after each op, and the element-wise ops (the sums
//! of gradients among them) still run on every core.

#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod checkpoint;
pub mod classify;
pub mod classify_task;
pub mod coco_instances;
pub mod config;
pub mod data;
pub mod eval;
pub mod eval_weights;
pub mod gscnn;
mod init;
pub mod losses;
pub mod memory;
pub mod oneformer;
pub mod optim;
pub mod panet;
pub mod plot;
pub mod progress;
pub mod pssl;
pub mod record;
pub mod task;
pub mod trainer;

#[cfg(test)]
mod tests;

pub use config::{
    DatasetConfig, LrPolicy, ModelSpec, OptimizerConfig, PretrainedConfig, ScheduleConfig,
    TrainConfig, TransformConfig, WarmupConfig,
};
pub use data::{open_dataset, Split};
pub use eval::{evaluate, EvalResult};
pub use eval_weights::evaluate_weights;
pub use losses::{LossPlan, NamedLosses};
pub use optim::Optimizer;
pub use record::{IterLosses, TrainSummary};
pub use task::TrainModel;
pub use trainer::Trainer;

use std::path::PathBuf;

use segkit_models::SegmentorConfig;

/// Errors of training and evaluation.
///
/// A model or checkpoint error keeps its chain: a weight missing from `load_from` arrives as
/// [`TrainError::Segkit`] holding [`segkit_models::Error::Checkpoint`], whose `source()` is the
/// [`segkit_core::Error::MissingWeight`] ([`segkit_core::error::missing_weight`] finds it).
/// `From<TrainError> for segkit_models::Error` lets the facade's `Result` take it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A model error (config, weights, shapes).
    #[error(transparent)]
    Segkit(#[from] segkit_models::Error),
    /// A component error: a dataset ([`segkit_core::Error::BadFile`] names the file), a loss,
    /// a shape (segkit-data's and segkit-losses' error is segkit-core's).
    #[error(transparent)]
    Core(#[from] segkit_core::Error),
    /// A training config that cannot be read or used.
    #[error("bad training config {}: {reason}", .path.display())]
    Config {
        /// The config file (`<json>` for a string).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file that cannot be read or written.
    #[error("{}: {reason}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A checkpoint that cannot be used.
    #[error("checkpoint {}: {reason}", .path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A size in the config (batch size, resize, crop, pad) whose estimated memory exceeds
    /// the limit, found before anything of that size is allocated ([`memory`]).
    #[error(
        "{}: {field} needs an estimated {estimate} to train, more than the memory limit {limit}",
        .path.display()
    )]
    TooLarge {
        /// The config file.
        path: PathBuf,
        /// The field(s) that set the size, with their values.
        field: String,
        /// The estimate.
        estimate: String,
        /// The limit and where it comes from.
        limit: String,
    },
    /// The loss became NaN or infinite.
    #[error("training diverged at iteration {iteration}: loss {loss}")]
    Diverged {
        /// The iteration.
        iteration: usize,
        /// The loss value.
        loss: f64,
    },
}

impl TrainError {
    /// The segkit-core error this error carries (directly, or inside a model error), if any.
    pub fn as_core(&self) -> Option<&segkit_core::Error> {
        match self {
            TrainError::Segkit(e) => e.as_core(),
            TrainError::Core(e) => Some(e),
            _ => None,
        }
    }
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Core(e.into())
    }
}

impl From<TrainError> for segkit_models::Error {
    /// A model or component error as itself; the trainer's own errors (config, files,
    /// checkpoints, divergence) as [`segkit_models::Error::Training`], whose `source()` is the
    /// [`TrainError`].
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Segkit(e) => e,
            TrainError::Core(e) => segkit_models::Error::Core(e),
            other => segkit_models::Error::Training(Box::new(other)),
        }
    }
}

/// `Result` with [`TrainError`].
pub type TrainResult<T> = std::result::Result<T, TrainError>;

/// The segmentor config of a preset name (any encoder-decoder preset of
/// [`segkit_models::presets`], segkit's demo model included).
pub fn resolve_preset(name: &str) -> TrainResult<SegmentorConfig> {
    match segkit_models::preset(name)? {
        segkit_models::ModelConfig::EncoderDecoder(c) => Ok(*c),
        other => Err(TrainError::Config {
            path: PathBuf::from("<train config>"),
            reason: format!(
                "preset `{name}` is a {} model; `segkit train` trains encoder-decoder \
                 segmentors",
                other.type_name()
            ),
        }),
    }
}
