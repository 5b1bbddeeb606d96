//! What the [`crate::Trainer`] trains: the [`TrainModel`] trait, one implementation per model
//! family, and [`build_model`], which turns the training config's `model` ([`ModelSpec`])
//! into one.
//!
//! The trainer owns everything a family shares — the data order, augmentation, collation,
//! the optimizer and schedule, gradient accumulation, checkpoints with exact resume, the
//! metrics log, periodic evaluation, the memory guard — and asks the model for the rest:
//! its losses on a collated batch, its evaluation, its saved form, its normalisation and
//! its memory figures.
//!
//! Implementations:
//! - [`crate::trainer::SegmentorTask`]: mmseg encoder-decoder segmentors
//!   ([`segkit_models::EncoderDecoder`]; `{"type": "Preset" | "Config" | "File"}`);
//! - [`crate::classify_task::ClassifierTask`]: image classifiers
//!   ([`segkit_models::classifier::Classifier`]; `{"type": "Classifier", ...}`, or a
//!   classifier preset name / model file);
//! - [`crate::gscnn::GscnnTask`]: Gated-SCNN ([`segkit_models::Gscnn`]; `{"type":
//!   "Gscnn", ...}`, or a Gated-SCNN preset name / model file).
//!
//! # Adding a model family
//!
//! 1. A new file with a type implementing [`TrainModel`] and a constructor
//!    `fn new(spec, train_cfg, vb: VarBuilder) -> TrainResult<Self>` that creates every
//!    parameter through `vb` (the trainer's [`candle_nn::VarMap`]: the variables it
//!    initialises, optimises and checkpoints; their names are the keys of the saved weights).
//! 2. One variant of [`ModelSpec`] (its JSON form, `{"type": "YourModel", ...}`; give the
//!    variant's struct `#[serde(deny_unknown_fields)]`), and its arm in [`build_model`].
//!    If a [`segkit_models::ModelConfig`] of the family may arrive through a preset name or a
//!    model file (`{"type": "Preset"}` / `{"type": "File"}`), its arm in
//!    `build_from_model_config` too.
//!
//! Nothing else in the trainer changes: resume checks the model by
//! [`TrainModel::config_json`], the metrics log and checkpoints carry
//! [`TrainModel::loss_names`], and [`TrainModel::save`] writes what `segkit infer` reloads.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::checkpoint::StateDict;
use segkit_data::SegDataset;
use segkit_models::{DataPreprocessorConfig, DatasetMeta, ModelConfig};

use crate::config::{ClipGradConfig, ModelSpec, ParamGroup, TrainConfig};
use crate::data::Batch;
use crate::eval::EvalResult;
use crate::losses::NamedLosses;
use crate::{TrainError, TrainResult};

/// A model the [`crate::Trainer`] can train (see the module docs).
///
/// The trainer calls, in order: [`TrainModel::init_value`] for every variable (or
/// [`TrainModel::load_state_dict`] with `load_from`), then per forward pass
/// [`TrainModel::losses`] on a batch collated with [`TrainModel::preprocessor`]; at each
/// evaluation [`TrainModel::evaluate`] with a detached copy of the weights; at the end
/// [`TrainModel::save`].
///
/// `Send`: the trainer runs each step on a worker of rayon's pool
/// ([`segkit_core::runtime::on_pool`]).
pub trait TrainModel: Send {
    /// The model's name (logs, error messages).
    fn name(&self) -> &str;

    /// The tagged model config that `config.json` holds and `segkit infer` reloads.
    fn model_config(&self) -> ModelConfig;

    /// The model's identity in a checkpoint (metadata `model_config`): a resumed run is
    /// refused unless this JSON is the same value. The segmentor's is its
    /// [`segkit_models::SegmentorConfig`]'s JSON, as checkpoints have always stored.
    fn config_json(&self) -> TrainResult<String>;

    /// Number of classes (labels must be a class or the ignore index).
    fn num_classes(&self) -> usize;

    /// Class names and palette (the `custom` dataset layout takes them from here).
    fn meta(&self) -> &DatasetMeta;

    /// The normalisation (0..255 scale) and pad size with which training batches are
    /// collated ([`crate::data::collate`]).
    fn preprocessor(&self) -> &DataPreprocessorConfig;

    /// The names of the losses [`TrainModel::losses`] returns, in its order.
    fn loss_names(&self) -> &[String];

    /// The fewest samples a training batch may have (2 where BatchNorm runs on batch
    /// statistics).
    fn min_batch_size(&self) -> usize {
        2
    }

    /// The optimizer's learning-rate and weight-decay multipliers of the variable `name`,
    /// used when the training config has no `paramwise_cfg` (default `(1, 1)`: every
    /// variable alike; OneFormer: its `build_optimizer` groups).
    fn param_group(&self, name: &str) -> ParamGroup {
        let _ = name;
        ParamGroup::default()
    }

    /// Gradient clipping by the global norm, used when the training config has no
    /// `clip_grad` (default none; OneFormer: 0.01, L2, over the full model).
    fn clip_grad(&self) -> Option<ClipGradConfig> {
        None
    }

    /// Initial value of the variable `name` for the run's `seed` (default: segkit-core's
    /// mmseg initialisation, [`segkit_core::init::mmseg_value`], without zero-init gammas).
    fn init_value(&self, name: &str, dims: &[usize], seed: u64) -> TrainResult<Tensor> {
        crate::init::init_value(name, dims, seed, None)
    }

    /// The weights of `load_from` in the variables' names (default: the file's state dict;
    /// errors name the model and the file).
    fn load_state_dict(&self, path: &Path) -> TrainResult<StateDict> {
        StateDict::load(path)
            .map_err(|e| segkit_models::Error::checkpoint(self.name(), path, e).into())
    }

    /// The training forward pass on `batch` and every loss of it, named, with their total.
    ///
    /// `rng` is the run's model-side random stream (dropout, Gumbel noise, ...): the
    /// implementation installs it as the thread's [`segkit_core::random`] state for what it
    /// draws and stores the advanced state back. The trainer saves it in checkpoints, so a
    /// resumed run draws what the uninterrupted run would have drawn.
    fn losses(&self, batch: &Batch, ignore_index: u16, rng: &mut u64) -> TrainResult<NamedLosses>;

    /// Evaluates a model with `weights` (detached copies of the variables, by name) on
    /// `dataset`, `batch_size` images at a time.
    fn evaluate(
        &self,
        weights: HashMap<String, Tensor>,
        dataset: &dyn SegDataset,
        batch_size: usize,
    ) -> TrainResult<EvalResult>;

    /// Peak bytes of a training step per input pixel of one sample (activations kept for
    /// backward, their gradients, scratch), for the memory guard ([`crate::memory`]).
    fn activation_bytes_per_pixel(&self) -> u64;

    /// Writes the trained model into `dir`: `model.safetensors` (`weights`, by variable
    /// name) and `config.json` ([`TrainModel::model_config`]). Returns the weights' path.
    fn save(&self, dir: &Path, weights: &BTreeMap<String, Tensor>) -> TrainResult<PathBuf> {
        save_model_dir(dir, weights, &self.model_config())
    }

    /// The implementation, for downcasting (tests, family-specific accessors).
    fn as_any(&self) -> &dyn Any;
}

/// Writes `model.safetensors` and `config.json` (the tagged `model`) into `dir`.
pub fn save_model_dir(
    dir: &Path,
    weights: &BTreeMap<String, Tensor>,
    model: &ModelConfig,
) -> TrainResult<PathBuf> {
    crate::checkpoint::ensure_dir(dir)?;
    let path = dir.join(crate::trainer::MODEL_FILE);
    let w: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    crate::checkpoint::save(&path, &w, &BTreeMap::new())?;
    crate::checkpoint::write_atomic(
        &dir.join(crate::trainer::CONFIG_FILE),
        format!("{}\n", model.to_json_pretty()).as_bytes(),
    )?;
    Ok(path)
}

/// Builds the model `cfg.model` names, its variables created in `vb`.
pub fn build_model(cfg: &TrainConfig, vb: VarBuilder<'_>) -> TrainResult<Box<dyn TrainModel>> {
    match &cfg.model {
        ModelSpec::Gscnn(spec) => {
            let spec = spec.resolve(cfg)?;
            Ok(Box::new(crate::gscnn::GscnnTask::new(spec, vb)?))
        }
        ModelSpec::OneFormer(spec) => Ok(Box::new(crate::oneformer::OneFormerTask::new(
            (**spec).clone(),
            vb,
        )?)),
        ModelSpec::Panet(spec) => Ok(Box::new(crate::panet::PanetTask::new(spec, vb)?)),
        ModelSpec::Preset { .. }
        | ModelSpec::Config { .. }
        | ModelSpec::File { .. }
        | ModelSpec::Classifier(_) => build_from_model_config(cfg, cfg.model_config()?, vb),
    }
}

/// The model of a preset name or model file, by its family.
fn build_from_model_config(
    cfg: &TrainConfig,
    model: ModelConfig,
    vb: VarBuilder<'_>,
) -> TrainResult<Box<dyn TrainModel>> {
    match model {
        ModelConfig::EncoderDecoder(mut c) => {
            crate::pssl::dataset::apply_pssl_losses(&cfg.dataset, &mut c);
            Ok(Box::new(crate::trainer::SegmentorTask::new(
                *c,
                cfg.aux_loss_weight,
                vb,
            )?))
        }
        ModelConfig::Classifier(c) => {
            Ok(Box::new(crate::classify_task::ClassifierTask::new(*c, vb)?))
        }
        ModelConfig::Gscnn(g) => {
            let spec = crate::gscnn::GscnnSpec::default().resolve_config(*g, cfg)?;
            Ok(Box::new(crate::gscnn::GscnnTask::new(spec, vb)?))
        }
        ModelConfig::OneFormer(c) => Ok(Box::new(crate::oneformer::OneFormerTask::new(
            crate::oneformer::OneFormerSpec::new(*c),
            vb,
        )?)),
        ModelConfig::Panet(c) => Ok(Box::new(crate::panet::PanetTask::new(
            &crate::panet::PanetSpec {
                preset: None,
                config: Some(c),
                train: None,
            },
            vb,
        )?)),
        other => Err(cfg.error(format!(
            "`model`: a `{}` model; `segkit train` trains `EncoderDecoder`, `Gscnn`, \
             `Classifier`, `OneFormer` and `Panet` models",
            other.type_name()
        ))),
    }
}

/// A [`TrainError::Io`] for a poisoned lock or similar internal failure.
pub(crate) fn internal(what: &str) -> TrainError {
    TrainError::Io {
        path: PathBuf::from(format!("<{what}>")),
        reason: "poisoned lock".into(),
    }
}
