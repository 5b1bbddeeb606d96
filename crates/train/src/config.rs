//! The training configuration file: a JSON document (serde, closed `#[serde(tag = "type")]`
//! enums, unknown fields rejected) naming the model, the dataset, the data pipeline, the
//! optimizer, the learning-rate schedule and the loop's sizes and intervals.
//!
//! Relative paths (`dataset.root`, `output_dir`, `model.path`, `load_from`) are resolved
//! against the directory of the config file.
//!
//! ```
//! use segkit_train::TrainConfig;
//! let cfg = TrainConfig::from_json(r#"{
//!     "model": {"type": "Preset", "name": "segkit_demo_r18w16_psp_fashion-128x128"},
//!     "dataset": {"type": "Custom", "root": "data/fashion"},
//!     "optimizer": {"type": "SGD", "lr": 0.01},
//!     "iterations": 100, "batch_size": 8, "output_dir": "work_dirs/demo"
//! }"#).unwrap();
//! assert_eq!(cfg.aux_loss_weight, None); // the model config's auxiliary losses (mmseg: 0.4)
//! let e = TrainConfig::from_json(r#"{"optimizer": {"type": "Adam"}}"#).unwrap_err();
//! assert!(e.to_string().contains("AdamW"), "{e}");
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{TrainError, TrainResult};
use segkit_models::SegmentorConfig;

/// What [`TrainConfig::source_path`] names for a config not read from a file.
const INLINE: &str = "<inline config>";

/// Which model to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ModelSpec {
    /// A named preset (`segkit_demo_r18w16_psp_fashion-128x128`, or any mmseg preset).
    Preset {
        /// The preset's name.
        name: String,
    },
    /// A full segmentor config inline.
    Config {
        /// The config.
        config: Box<SegmentorConfig>,
    },
    /// A model config JSON file (a tagged `ModelConfig`, `{"type": "EncoderDecoder", ...}`, as
    /// `segkit train` writes next to the weights).
    File {
        /// Path of the file.
        path: PathBuf,
    },
    /// A Gated-SCNN (a preset or an inline `GscnnConfig`, with its losses, edge ground
    /// truth and boundary metric; see [`crate::gscnn::GscnnSpec`]). A Gated-SCNN preset name
    /// or model file in `Preset` / `File` trains with the defaults of this variant.
    Gscnn(Box<crate::gscnn::GscnnSpec>),
    /// An image classifier (`segkit_models::classifier::ClassifierConfig` inline, the JSON of
    /// its `config.json`): trained with the cross-entropy, evaluated by top-1 accuracy
    /// ([`crate::classify_task`]). A classifier preset name or model file in `Preset` / `File`
    /// trains the same way.
    Classifier(Box<segkit_models::classifier::ClassifierConfig>),
    /// A OneFormer fine-tuned on panoptic ground truth with task-conditioned joint training
    /// (`{"type": "OneFormer", "config": {..}, "tasks": [..]}`; see
    /// [`crate::oneformer::OneFormerSpec`]). A OneFormer model file in `File` trains all
    /// three tasks.
    OneFormer(Box<crate::oneformer::OneFormerSpec>),
    /// A PANet trained with the official losses on instance ground truth
    /// (`{"type": "Panet", "preset" | "config", "train"}`; see [`crate::panet::PanetSpec`]).
    Panet(Box<crate::panet::PanetSpec>),
}

fn default_train_split() -> String {
    "train".into()
}
fn default_val_split() -> String {
    "val".into()
}
fn default_ignore() -> u16 {
    255
}

/// The dataset (layout and root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum DatasetConfig {
    /// segkit's custom layout (segkit-data `CustomDataset`): `images/{split}/NAME.png` with
    /// the class map `annotations/{split}/NAME.png` (8- or 16-bit class ids, `ignore_index`
    /// unlabelled); class names and palette come from the model config.
    Custom {
        /// Dataset root.
        root: PathBuf,
        /// Training split folder name. Default `train`.
        #[serde(default = "default_train_split")]
        train_split: String,
        /// Validation split folder name. Default `val`.
        #[serde(default = "default_val_split")]
        val_split: String,
        /// Label value of unlabelled pixels. Default 255.
        #[serde(default = "default_ignore")]
        ignore_index: u16,
    },
    /// ADE20K (`ADEChallengeData2016`: `training` / `validation`, `reduce_zero_label`).
    #[serde(rename = "ADE20K")]
    Ade20k {
        /// The `ADEChallengeData2016` folder.
        root: PathBuf,
    },
    /// Cityscapes (`leftImg8bit` + `gtFine` `labelTrainIds`: `train` / `val`).
    Cityscapes {
        /// The folder holding `leftImg8bit` and `gtFine`.
        root: PathBuf,
    },
    /// Pascal VOC 2012 (`train` / `val` lists; with `aug`, training on `SegmentationClassAug`
    /// with mmseg's `aug` list).
    #[serde(rename = "VOC")]
    Voc {
        /// The `VOC2012` folder.
        root: PathBuf,
        /// Train on the augmented set. Default false.
        #[serde(default)]
        aug: bool,
    },
    /// A classification set in torchvision's `ImageFolder` layout
    /// (`root/{split}/CLASS/**/NAME.png`), for classifiers
    /// ([`segkit_data::classification`]).
    ImageFolder(segkit_data::classification::ImageFolderConfig),
    /// MNIST / Fashion-MNIST IDX files, for classifiers ([`segkit_data::classification`]).
    Idx(segkit_data::classification::IdxConfig),
    /// PSSL labels written by `segkit pssl generate`, thresholded at load time, with PSSL's
    /// weighted cross-entropy ([`crate::pssl::dataset`]).
    Pssl(crate::pssl::PsslDatasetConfig),
    /// PaddleSeg's released PSSL masks ([`crate::pssl::dataset`]).
    PaddleSegPssl(crate::pssl::PaddleSegPsslConfig),
    /// COCO panoptic layout (segkit-data `CocoPanopticDataset`:
    /// `annotations/panoptic_{split}2017.json`, `annotations/panoptic_{split}2017/*.png`, `{split}2017/*.jpg`): panoptic segments for
    /// OneFormer's targets and PQ / AP, the semantic map for mIoU. A user's own panoptic data
    /// in this layout trains OneFormer (docs/TRAINING.md).
    CocoPanoptic {
        /// Dataset root.
        root: PathBuf,
        /// Training split (`{split}2017`). Default `train`.
        #[serde(default = "default_train_split")]
        train_split: String,
        /// Validation split. Default `val`.
        #[serde(default = "default_val_split")]
        val_split: String,
    },
    /// COCO instance layout (segkit-data `CocoInstanceDataset`:
    /// `annotations/instances_{split}2017.json` with polygon / RLE masks and crowd flags,
    /// `{split}2017/`): instances for PANet ([`crate::coco_instances`]).
    CocoInstances(crate::coco_instances::CocoInstancesConfig),
}

/// One training-pipeline transform (segkit-data's mmseg augmentation; the JSON form is
/// mmseg's dict: `{"type": "RandomCrop", "crop_size": [512, 512], "cat_max_ratio": 0.75}`):
/// `RandomResize`, `Resize`, `RandomCrop`, `RandomFlip`, `PhotoMetricDistortion`, `Pad`,
/// `Normalize`.
pub type TransformConfig = segkit_data::augment::Transform;

mod optimizer;
pub use optimizer::{
    ClipGradConfig, LrPolicy, OptimizerConfig, ParamGroup, ParamwiseConfig, ScheduleConfig,
    WarmupConfig,
};

fn default_pipeline() -> Vec<TransformConfig> {
    vec![TransformConfig::RandomFlip {
        prob: 0.5,
        direction: segkit_data::augment::FlipDirection::Horizontal,
    }]
}
fn default_accumulate() -> usize {
    1
}
fn default_log_interval() -> usize {
    10
}

/// Variables started from a pretrained weights file: every model variable (parameter or
/// BatchNorm running statistic) whose name starts with `to` takes the file's tensor named
/// `prefix` + the rest of its name, which must exist with the variable's shape. Taking a
/// segmentor's backbone into another model: `{"path": "demo/model.safetensors", "prefix":
/// "backbone.", "to": "model.pixel_level_module.encoder."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainedConfig {
    /// The weights file: safetensors or a PyTorch checkpoint (as `load_from`); relative to
    /// the config file's directory.
    pub path: PathBuf,
    /// The prefix of the file's keys that are taken (`""`: the file's keys are the rest of
    /// the variables' names as they are).
    #[serde(default)]
    pub prefix: String,
    /// The prefix of the model's variables that are set (`""`: every variable; at least one
    /// variable must match).
    #[serde(default)]
    pub to: String,
}

/// A whole training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The model.
    pub model: ModelSpec,
    /// The dataset.
    pub dataset: DatasetConfig,
    /// Training transforms after loading, in order (mmseg's `train_pipeline` without the
    /// loading steps). Default: a horizontal flip with probability 0.5. Samples are then
    /// normalised by the model's data preprocessor (unless the pipeline has `Normalize`) and
    /// padded (image 0 after normalisation, label 255) to its `size` when it has one, else to
    /// the batch's largest.
    #[serde(default = "default_pipeline")]
    pub pipeline: Vec<TransformConfig>,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// Per-parameter learning-rate and weight-decay multipliers (mmengine's `paramwise_cfg`,
    /// `{"custom_keys": {"backbone": {"lr_mult": 0.1}}}`). Default `None`: the model's own
    /// rules (OneFormer: its `build_optimizer` groups; other models: none).
    #[serde(default)]
    pub paramwise_cfg: Option<ParamwiseConfig>,
    /// Gradient clipping by the global norm (mmengine's `clip_grad`, `{"max_norm": 0.01,
    /// "norm_type": 2}`; `{"max_norm": null}`: none). Default `None`: the model's own
    /// (OneFormer: 0.01, L2, over the full model; other models: none).
    #[serde(default)]
    pub clip_grad: Option<ClipGradConfig>,
    /// The learning-rate schedule. Default Poly(0.9, min 1e-4), no warm-up.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Number of optimizer steps.
    pub iterations: usize,
    /// Samples per forward pass.
    pub batch_size: usize,
    /// Forward/backward passes whose gradients are summed (each loss divided by this) before
    /// one optimizer step: the effective batch is `batch_size * accumulate`. Default 1.
    #[serde(default = "default_accumulate")]
    pub accumulate: usize,
    /// Weight of every auxiliary-head loss, replacing the model config's (whose default is
    /// mmseg's `loss_weight=0.4` of the FCN auxiliary head); 0 trains without them. Default
    /// `None`: the model config's auxiliary losses as they are.
    #[serde(default)]
    pub aux_loss_weight: Option<f64>,
    /// Evaluate on the validation split every this many iterations (and at the end); 0:
    /// only at the end.
    #[serde(default)]
    pub eval_interval: usize,
    /// Write a checkpoint every this many iterations (and at the end); 0: at each
    /// evaluation and at the end.
    #[serde(default)]
    pub checkpoint_interval: usize,
    /// Log (metrics file, and the progress line when stderr is not a terminal) every this many
    /// iterations. Default 10.
    #[serde(default = "default_log_interval")]
    pub log_interval: usize,
    /// Samples per evaluation batch. Default: `batch_size`.
    #[serde(default)]
    pub eval_batch_size: Option<usize>,
    /// Use only the first `n` validation samples (`n >= 1`; 0 is refused, since the mIoU
    /// of no images is undefined). Default: all.
    #[serde(default)]
    pub val_limit: Option<usize>,
    /// Seed of the weight initialisation, the data order, the augmentation and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Start from these weights (a model safetensors / mmseg checkpoint) instead of the
    /// random initialisation.
    #[serde(default)]
    pub load_from: Option<PathBuf>,
    /// Parts of the model started from pretrained files, applied in order after the
    /// initialisation and `load_from` (mmengine's `init_cfg = dict(type='Pretrained',
    /// checkpoint=.., prefix=..)`): a backbone trained elsewhere, say. Default: none.
    #[serde(default)]
    pub pretrained: Vec<PretrainedConfig>,
    /// Where checkpoints, logs and the final model go.
    pub output_dir: PathBuf,
    /// The file this config was read from ([`TrainConfig::load`] sets it; not part of the
    /// JSON): errors about the config name it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl TrainConfig {
    /// Parses a config (no path resolution); errors name the offending field or variant.
    pub fn from_json(text: &str) -> TrainResult<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| TrainError::Config {
            path: PathBuf::from(INLINE),
            reason: e.to_string(),
        })?;
        cfg.validate().map_err(|reason| cfg.error(reason))?;
        Ok(cfg)
    }

    /// The config's file ([`TrainConfig::source`]), or `<inline config>` for a config that
    /// was not read from a file.
    pub fn source_path(&self) -> PathBuf {
        self.source.clone().unwrap_or_else(|| PathBuf::from(INLINE))
    }

    /// A [`TrainError::Config`] naming this config's file.
    pub fn error(&self, reason: impl Into<String>) -> TrainError {
        TrainError::Config {
            path: self.source_path(),
            reason: reason.into(),
        }
    }

    /// Reads a config file; relative paths in it are resolved against its directory.
    pub fn load(path: impl AsRef<Path>) -> TrainResult<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut cfg: Self = serde_json::from_str(&text).map_err(|e| TrainError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate().map_err(|reason| TrainError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Makes the relative paths of the config relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.output_dir);
        match &mut self.dataset {
            DatasetConfig::Custom { root, .. }
            | DatasetConfig::Ade20k { root }
            | DatasetConfig::Cityscapes { root }
            | DatasetConfig::Voc { root, .. }
            | DatasetConfig::CocoPanoptic { root, .. } => fix(root),
            DatasetConfig::ImageFolder(c) => c.resolve_paths(base),
            DatasetConfig::Idx(c) => c.resolve_paths(base),
            DatasetConfig::Pssl(c) => c.resolve_paths(base),
            DatasetConfig::PaddleSegPssl(c) => c.resolve_paths(base),
            DatasetConfig::CocoInstances(c) => c.resolve_paths(base),
        }
        if let ModelSpec::File { path } = &mut self.model {
            fix(path);
        }
        if let Some(p) = &mut self.load_from {
            fix(p);
        }
        for p in &mut self.pretrained {
            fix(&mut p.path);
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.iterations == 0 {
            return Err("`iterations` must be positive".into());
        }
        if self.batch_size == 0 || self.accumulate == 0 {
            return Err("`batch_size` and `accumulate` must be positive".into());
        }
        if let Some(w) = self.aux_loss_weight {
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!(
                    "`aux_loss_weight` must be finite and >= 0, got {w}"
                ));
            }
        }
        if self.eval_batch_size == Some(0) {
            return Err("`eval_batch_size` must be positive".into());
        }
        if self.val_limit == Some(0) {
            return Err(
                "`val_limit` must be at least 1 (the mIoU of no images is undefined); \
                        omit it to evaluate the whole validation split"
                    .into(),
            );
        }
        let lr = self.optimizer.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("optimizer lr must be positive, got {lr}"));
        }
        match &self.optimizer {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                if !(0.0..1.0).contains(momentum) || *weight_decay < 0.0 {
                    return Err(format!(
                        "SGD needs momentum in [0, 1) and weight_decay >= 0, got {momentum} and \
                         {weight_decay}"
                    ));
                }
            }
            OptimizerConfig::AdamW {
                betas,
                eps,
                weight_decay,
                ..
            } => {
                if betas.iter().any(|b| !(0.0..1.0).contains(b))
                    || *eps <= 0.0
                    || *weight_decay < 0.0
                {
                    return Err(format!(
                        "AdamW needs betas in [0, 1), eps > 0 and weight_decay >= 0, got {betas:?}, \
                         {eps} and {weight_decay}"
                    ));
                }
            }
        }
        if let Some(p) = &self.paramwise_cfg {
            p.validate()?;
        }
        if let Some(c) = &self.clip_grad {
            c.validate()?;
        }
        if let LrPolicy::Poly { power, min_lr } = self.schedule.policy {
            if power < 0.0 || min_lr < 0.0 || min_lr > lr {
                return Err(format!(
                    "Poly schedule needs power >= 0 and 0 <= min_lr <= lr, got {power} and \
                     {min_lr}"
                ));
            }
        }
        if let Some(w) = &self.schedule.warmup {
            if !(0.0..=1.0).contains(&w.start_factor) {
                return Err(format!(
                    "warm-up start_factor must be in [0, 1], got {}",
                    w.start_factor
                ));
            }
        }
        segkit_data::augment::Pipeline::new(self.pipeline.clone())
            .map_err(|e| format!("pipeline: {e}"))?;
        Ok(())
    }

    /// The tagged model config the model spec names (`Preset`, `Config`, `File`; `Gscnn`
    /// gives its network); errors name the config file and the `model` field (or the model
    /// file).
    pub fn model_config(&self) -> TrainResult<segkit_models::ModelConfig> {
        use segkit_models::ModelConfig;
        match &self.model {
            ModelSpec::Preset { name } => {
                segkit_models::preset(name).map_err(|e| self.error(format!("`model.name`: {e}")))
            }
            ModelSpec::Config { config } => {
                config
                    .validate()
                    .map_err(|e| self.error(format!("`model.config`: {e}")))?;
                Ok(ModelConfig::EncoderDecoder(config.clone()))
            }
            ModelSpec::File { path } => {
                let text = std::fs::read_to_string(path).map_err(|e| TrainError::Config {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let bad = |reason: String| TrainError::Config {
                    path: path.clone(),
                    reason,
                };
                let m = ModelConfig::from_json(&text).map_err(|e| bad(e.to_string()))?;
                if let ModelConfig::EncoderDecoder(c) = &m {
                    c.validate().map_err(|e| bad(e.to_string()))?;
                }
                Ok(m)
            }
            ModelSpec::Gscnn(spec) => Ok(ModelConfig::Gscnn(Box::new(spec.resolve(self)?.net))),
            ModelSpec::Classifier(c) => Ok(ModelConfig::Classifier(c.clone())),
            ModelSpec::OneFormer(s) => Ok(ModelConfig::OneFormer(s.config.clone())),
            ModelSpec::Panet(s) => Ok(ModelConfig::Panet(Box::new(s.model()?))),
        }
    }

    /// The segmentor config the model spec names; errors name the config file and the
    /// `model` field (or the model file), and a model of another family.
    pub fn segmentor_config(&self) -> TrainResult<SegmentorConfig> {
        match self.model_config()? {
            segkit_models::ModelConfig::EncoderDecoder(c) => Ok(*c),
            other => {
                let what = format!(
                    "a `{}` model; this needs an `EncoderDecoder` segmentor",
                    other.type_name()
                );
                match &self.model {
                    ModelSpec::File { path } => Err(TrainError::Config {
                        path: path.clone(),
                        reason: what,
                    }),
                    _ => Err(self.error(format!("`model`: {what}"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
