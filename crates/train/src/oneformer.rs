//! OneFormer fine-tuning as a [`TrainModel`]: task-conditioned joint training on panoptic
//! ground truth (issue 15).
//!
//! Per training image a task is drawn uniformly from the enabled ones ([`OneFormerSpec::tasks`];
//! `["semantic"]` trains one task only) from the run's random stream; its targets are built
//! from the batch's panoptic segments exactly as transformers' `OneFormerProcessor` builds
//! them ([`segkit_oneformer::targets`]: things as instances, stuff per class, semantic merged
//! per class, text entries "a photo with a {class}" padded with the task's filler); the model
//! runs in training mode with the text mapper, and the loss is transformers' `OneFormerLoss`
//! ([`segkit_losses::OneFormerLoss`]: class CE with no-object weight 0.1, sigmoid CE and dice
//! on 12544 importance-sampled points, the query-text contrastive loss, over the last and every
//! auxiliary decoder layer, weights 2 / 5 / 5 / 0.5). The forward pass and loss are checked
//! against transformers, every loss key and every parameter gradient
//! (tests/tests/oneformer_train_parity.rs).
//!
//! The point draws come from a splitmix64 stream seeded from the run's saved random state
//! (resume draws what the uninterrupted run would have drawn).
//!
//! Evaluation: semantic predictions give aAcc / mIoU (segkit-data's `SegMetric`); with
//! panoptic ground truth, panoptic predictions give PQ (`PanopticQuality`) and instance
//! predictions mask AP (`CocoEvaluator`), reported in [`EvalResult::extra`] as `PQ`, `SQ`,
//! `RQ`, `AP`, `AP50`.
//!
//! The optimizer follows OneFormer's `build_optimizer` (SHI-Labs/OneFormer `train_net.py`):
//! [`param_group`] gives the backbone 0.1x the learning rate and no weight decay to norms,
//! embeddings and Swin's position tables, and the trainer clips the gradients of the whole
//! model together at L2 norm 0.01 (`SOLVER.CLIP_GRADIENTS`: `full_model`, 0.01, 2.0), unless
//! the training config's `paramwise_cfg` / `clip_grad` say otherwise. Note: the released
//! `train_net.py` walks the gradients once for `torch.nan_to_num` with the same
//! `itertools.chain` it then hands to `clip_grad_norm_`, which therefore receives an exhausted
//! iterator and clips nothing; segkit applies the configured clipping, and `"clip_grad":
//! {"max_norm": null}` trains as the released code does.
//!
//! Dropout (the transformer decoder's, 0.1 in the released configs) draws its masks from the
//! run's model-side random stream ([`segkit_core::random`], installed for the forward pass),
//! so a resumed run is exact with it on. (The pixel decoder's dropout and Swin's drop path
//! still use candle's unseeded generator: keep them 0 where resume must be exact.)

use std::any::Any;
use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_core::checkpoint::StateDict;
use segkit_data::SegDataset;
use segkit_losses::{
    ContrastiveInputs, MaskTargets, OneFormerLoss, SeededPointSource, SetPrediction,
};
use segkit_models::{DataPreprocessorConfig, DatasetMeta, ModelConfig, OneFormer, OneFormerConfig};
use segkit_oneformer::targets::{build_target, ClassMetadata, PanopticSegment, TaskSampler};
use segkit_oneformer::tokenizer::Task;
use serde::{Deserialize, Serialize};

use crate::config::{ClipGradConfig, ParamGroup};
use crate::data::Batch;
use crate::eval::EvalResult;
use crate::losses::NamedLosses;
use crate::task::TrainModel;
use crate::{TrainError, TrainResult};

mod eval;
mod init;

/// The training config's OneFormer model: `{"type": "OneFormer", "config": {..}, "tasks":
/// ["panoptic", "instance", "semantic"], "thing_classes": [..]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneFormerSpec {
    /// The model (segkit's `OneFormerConfig`, as `config.json` of a OneFormer holds it);
    /// trained with the text mapper (`is_training` is set).
    pub config: Box<OneFormerConfig>,
    /// The tasks drawn from, uniformly per image (default all three).
    #[serde(default = "all_tasks")]
    pub tasks: Vec<String>,
    /// Thing classes (instances for the instance task and PQ); default: the config's
    /// (`OneFormerConfig::thing_classes`, known for the ADE20K / COCO / Cityscapes labels).
    #[serde(default)]
    pub thing_classes: Option<Vec<usize>>,
    /// Learning-rate multiplier of the backbone (`SOLVER.BACKBONE_MULTIPLIER`). Default 0.1,
    /// the released configs' value (for a pretrained backbone); a backbone trained from
    /// scratch may take 1.
    #[serde(default = "default_backbone_multiplier")]
    pub backbone_multiplier: f64,
}

fn default_backbone_multiplier() -> f64 {
    0.1
}

impl OneFormerSpec {
    /// All three tasks, the config's thing classes.
    pub fn new(config: OneFormerConfig) -> Self {
        Self {
            config: Box::new(config),
            tasks: all_tasks(),
            thing_classes: None,
            backbone_multiplier: default_backbone_multiplier(),
        }
    }
}

fn all_tasks() -> Vec<String> {
    Task::ALL.iter().map(|t| t.as_str().to_string()).collect()
}

/// OneFormer's parameter group of a variable (`build_optimizer` in SHI-Labs/OneFormer
/// `train_net.py`, on segkit's HF-named variables):
/// - learning rate x `backbone_multiplier` (`SOLVER.BACKBONE_MULTIPLIER`, 0.1) for the backbone
///   (`model.pixel_level_module.encoder.*`, the official `backbone.*`);
/// - no weight decay for the parameters of normalisation modules (`WEIGHT_DECAY_NORM = 0`:
///   LayerNorm, GroupNorm, BatchNorm), of `nn.Embedding` modules (`WEIGHT_DECAY_EMBED = 0`:
///   `queries_embedder`, the decoder's `level_embed`, the text encoder's `token_embedding`,
///   `prompt_ctx`), and Swin's `relative_position_bias_table` / absolute position
///   embedding;
/// - full decay for everything else, biases of linear and convolution layers included, and
///   plain `nn.Parameter`s (the pixel decoder's `level_embed`, the text encoder's
///   `positional_embedding`, `logit_scale`), as detectron2's defaults.
///
/// With AdamW, set `decay_norm_and_bias: true` to decay the biases as OneFormer does
/// (segkit's AdamW leaves 1-D parameters undecayed by default).
pub fn param_group(name: &str, backbone_multiplier: f64) -> ParamGroup {
    let lr_mult = if name.starts_with("model.pixel_level_module.encoder.") {
        backbone_multiplier
    } else {
        1.0
    };
    let (module, param) = name.rsplit_once('.').unwrap_or(("", name));
    let last = module.rsplit('.').next().unwrap_or("");
    let parent = module.rsplit_once('.').map_or("", |(p, _)| p);
    let parent_last = parent.rsplit('.').next().unwrap_or("");
    // The pixel decoder's conv + GroupNorm pairs are `Sequential`s: `input_projections.{i}.1`,
    // `adapter_{k}.1`, `layer_{k}.1`.
    let group_norm = last == "1"
        && (parent_last.starts_with("adapter_")
            || parent_last.starts_with("layer_")
            || parent.rsplit('.').nth(1) == Some("input_projections"));
    let norm = last.contains("norm")
        || last == "ln_final"
        || module.contains(".hidden_states_norms.")
        || group_norm;
    let embedding = matches!(
        last,
        "queries_embedder" | "level_embed" | "token_embedding" | "prompt_ctx"
    );
    let swin = param == "relative_position_bias_table"
        || name.contains("absolute_pos_embed")
        || name.contains(".embeddings.position_embeddings");
    let decay_mult = if norm || embedding || swin { 0.0 } else { 1.0 };
    ParamGroup {
        lr_mult,
        decay_mult,
    }
}

/// A OneFormer being fine-tuned (see the module docs).
pub struct OneFormerTask {
    spec: OneFormerSpec,
    cfg: OneFormerConfig,
    model: OneFormer,
    loss: OneFormerLoss,
    sampler: TaskSampler,
    classes: ClassMetadata,
    meta: DatasetMeta,
    pre: DataPreprocessorConfig,
    names: Vec<String>,
}

impl std::fmt::Debug for OneFormerTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneFormerTask")
            .field("name", &self.cfg.name)
            .field("tasks", &self.sampler.tasks())
            .finish_non_exhaustive()
    }
}

/// The model config as trained: `is_training` on (text mapper and `logit_scale`).
fn training_config(spec: &OneFormerSpec) -> OneFormerConfig {
    let mut cfg = (*spec.config).clone();
    cfg.is_training = true;
    cfg
}

impl OneFormerTask {
    /// Builds the model of `spec` with its variables in `vb`.
    pub fn new(spec: OneFormerSpec, vb: VarBuilder<'_>) -> TrainResult<Self> {
        let cfg = training_config(&spec);
        let bad = |m: String| TrainError::from(segkit_models::Error::InvalidConfig(m));
        let tasks = spec
            .tasks
            .iter()
            .map(|t| t.parse::<Task>())
            .collect::<segkit_core::Result<Vec<_>>>()
            .map_err(|e| bad(format!("OneFormer `tasks`: {e}")))?;
        let sampler = TaskSampler::new(&tasks).map_err(|e| bad(format!("OneFormer: {e}")))?;
        let things: Vec<usize> = match &spec.thing_classes {
            Some(t) => t.clone(),
            None => cfg.thing_classes().iter().map(|&c| c as usize).collect(),
        };
        let classes = ClassMetadata::from_thing_ids(cfg.labels.clone(), &things)
            .map_err(|e| bad(format!("OneFormer `thing_classes`: {e}")))?;
        let model = OneFormer::new(&cfg, vb)?;
        let loss = OneFormerLoss::new(cfg.loss.clone());
        let mut names: Vec<String> = vec!["loss_mask", "loss_dice", "loss_cross_entropy"]
            .into_iter()
            .map(String::from)
            .collect();
        names.push("loss_contrastive".into());
        for i in 0..cfg.decoder.decoder_layers.saturating_sub(1) {
            for k in ["loss_mask", "loss_dice", "loss_cross_entropy"] {
                names.push(format!("{k}_{i}"));
            }
        }
        let p = &cfg.preprocess;
        let pre = DataPreprocessorConfig {
            mean: p.image_mean.map(|m| m * 255.0),
            std: p.image_std.map(|s| s * 255.0),
            ..Default::default()
        };
        let meta = DatasetMeta {
            classes: cfg.labels.clone(),
            palette: segkit_data::palette::voc_palette(cfg.labels.len()),
        };
        Ok(Self {
            spec,
            cfg,
            model,
            loss,
            sampler,
            classes,
            meta,
            pre,
            names,
        })
    }

    /// The model.
    pub fn model(&self) -> &OneFormer {
        &self.model
    }

    /// The enabled tasks.
    pub fn tasks(&self) -> &[Task] {
        self.sampler.tasks()
    }

    /// The targets of each image of `batch`, tasks drawn from `rng`.
    fn targets(
        &self,
        batch: &Batch,
        rng: &mut u64,
    ) -> TrainResult<Vec<segkit_oneformer::targets::OneFormerTarget>> {
        let (n, _, h, w) = batch.images.dims4()?;
        let num_text = self.cfg.decoder.num_queries - self.cfg.text_mapper.text_encoder_n_ctx;
        let labels: Vec<u32> = batch.labels.flatten_all()?.to_vec1()?;
        (0..n)
            .map(|k| {
                let u = (segkit_core::random::splitmix64(rng) >> 11) as f64 / (1u64 << 53) as f64;
                let task = self.sampler.pick(u);
                let inst = batch.instances.get(k).map(Vec::as_slice).unwrap_or(&[]);
                let from_labels;
                let segs: Vec<PanopticSegment<'_>> = if inst.is_empty() {
                    // No panoptic segments: the semantic task's targets come from the class
                    // map (one segment per class present); the others need instances.
                    from_labels =
                        class_segments(&labels[k * h * w..(k + 1) * h * w], self.classes.len());
                    if task != Task::Semantic && !from_labels.is_empty() {
                        return Err(TrainError::from(segkit_models::Error::InvalidConfig(
                            format!(
                            "OneFormer's {task} task needs panoptic ground truth (a dataset with \
                             instances, e.g. {{\"type\": \"CocoPanoptic\"}}); this dataset has \
                             class maps only: set \"tasks\": [\"semantic\"]"
                        ),
                        )));
                    }
                    from_labels
                        .iter()
                        .map(|(c, mask)| PanopticSegment {
                            class_id: *c,
                            mask,
                            iscrowd: false,
                        })
                        .collect()
                } else {
                    inst.iter()
                        .map(|a| PanopticSegment {
                            class_id: a.class_id as usize,
                            mask: &a.mask,
                            iscrowd: a.iscrowd,
                        })
                        .collect()
                };
                Ok(build_target(task, &segs, h, w, &self.classes, num_text)?)
            })
            .collect()
    }
}

/// One segment per class present in a class map (values `>= k`, the ignore index included,
/// are unlabelled).
fn class_segments(labels: &[u32], k: usize) -> Vec<(usize, Vec<bool>)> {
    let mut out: Vec<(usize, Vec<bool>)> = Vec::new();
    for c in 0..k {
        if labels.iter().any(|&v| v as usize == c) {
            out.push((c, labels.iter().map(|&v| v as usize == c).collect()));
        }
    }
    out
}

impl TrainModel for OneFormerTask {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn model_config(&self) -> ModelConfig {
        let mut cfg = self.cfg.clone();
        cfg.is_training = false;
        ModelConfig::OneFormer(Box::new(cfg))
    }

    fn config_json(&self) -> TrainResult<String> {
        crate::checkpoint::to_json(&serde_json::json!({ "oneformer": self.spec }))
    }

    fn num_classes(&self) -> usize {
        self.cfg.labels.len()
    }

    fn meta(&self) -> &DatasetMeta {
        &self.meta
    }

    fn preprocessor(&self) -> &DataPreprocessorConfig {
        &self.pre
    }

    fn loss_names(&self) -> &[String] {
        &self.names
    }

    fn min_batch_size(&self) -> usize {
        // No BatchNorm on the training path (Swin, GroupNorm, LayerNorm); the contrastive
        // loss is defined for one image (its logits are 1 x 1).
        1
    }

    fn param_group(&self, name: &str) -> ParamGroup {
        param_group(name, self.spec.backbone_multiplier)
    }

    fn clip_grad(&self) -> Option<ClipGradConfig> {
        // `SOLVER.CLIP_GRADIENTS`: full_model, CLIP_VALUE 0.01, NORM_TYPE 2 (see the module
        // docs for what the released `train_net.py` actually does).
        Some(ClipGradConfig::l2(0.01))
    }

    fn init_value(&self, name: &str, dims: &[usize], seed: u64) -> TrainResult<Tensor> {
        if name == "criterion.logit_scale" {
            let t = self.cfg.loss.contrastive_temperature.unwrap_or(0.07);
            return Ok(Tensor::new((1.0 / t).ln() as f32, &Device::Cpu)?);
        }
        init::init_value(&self.cfg, name, dims, seed)
    }

    fn load_state_dict(&self, path: &std::path::Path) -> TrainResult<StateDict> {
        let mut sd = StateDict::load(path)
            .map_err(|e| segkit_models::Error::checkpoint(self.name(), path, e))?;
        // Released OneFormer checkpoints (shi-labs, `is_training = false`) hold no text
        // mapper: it starts from segkit's initialisation (seed 0), as transformers
        // initialises the weights `from_pretrained` does not find.
        if !sd.keys().any(|k| k.starts_with("model.text_mapper.")) {
            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let _ = segkit_oneformer::text_mapper::TextMapper::new(
                &self.cfg.text_mapper,
                vb.pp("model").pp("text_mapper"),
            )?;
            let vars = vm
                .data()
                .lock()
                .map_err(|_| crate::task::internal("varmap"))?;
            for (k, v) in vars.iter() {
                sd.insert(k.clone(), self.init_value(k, v.dims(), 0)?);
            }
        }
        if !sd.contains("criterion.logit_scale") {
            sd.insert(
                "criterion.logit_scale",
                self.init_value("criterion.logit_scale", &[], 0)?,
            );
        }
        Ok(sd)
    }

    fn losses(&self, batch: &Batch, _ignore: u16, rng: &mut u64) -> TrainResult<NamedLosses> {
        let targets = self.targets(batch, rng)?;
        let dev = batch.images.device();
        let tok = self.model.tokenizer();
        let tasks: Vec<Task> = targets.iter().map(|t| t.task).collect();
        let len = self.cfg.decoder.task_seq_len;
        let task_inputs = tok.task_inputs_batch(&tasks, len, dev)?;
        let text = targets
            .iter()
            .map(|t| t.text_inputs(tok, self.cfg.text_mapper.text_encoder_context_length, dev))
            .collect::<segkit_core::Result<Vec<_>>>()?;
        let text = Tensor::stack(&text, 0)?;
        // Dropout draws from the run's model-side stream (exact resume).
        let out = segkit_core::random::with_thread_state(rng, || {
            self.model
                .forward(&batch.images, &task_inputs, Some(&text), true)
        });
        let out = out?;
        let mask_targets = targets
            .iter()
            .map(|t| {
                Ok(MaskTargets {
                    masks: t.masks_tensor(dev)?,
                    classes: t.classes.clone(),
                })
            })
            .collect::<segkit_core::Result<Vec<_>>>()?;
        let pred = |c: &Tensor, m: &Tensor| SetPrediction {
            masks_queries_logits: m.clone(),
            class_queries_logits: c.clone(),
        };
        let aux: Vec<SetPrediction> = out
            .auxiliary
            .iter()
            .map(|a| pred(&a.class_queries_logits, &a.masks_queries_logits))
            .collect();
        let contrastive = match (&out.text_queries, self.model.logit_scale()) {
            (Some(tq), Some(s)) => Some(ContrastiveInputs {
                image_queries: &out.contrastive_queries,
                text_queries: tq,
                logit_scale: s,
            }),
            _ => None,
        };
        let mut points = SeededPointSource::new(segkit_core::random::splitmix64(rng));
        let losses = self.loss.forward(
            &pred(&out.class_queries_logits, &out.masks_queries_logits),
            &aux,
            &mask_targets,
            contrastive,
            &mut points,
        )?;
        Ok(NamedLosses {
            total: losses.total()?,
            items: losses.weighted()?,
        })
    }

    fn evaluate(
        &self,
        weights: HashMap<String, Tensor>,
        dataset: &dyn SegDataset,
        _batch_size: usize,
    ) -> TrainResult<EvalResult> {
        let mut cfg = self.cfg.clone();
        cfg.is_training = false;
        let weights = weights
            .into_iter()
            .filter(|(k, _)| !k.starts_with("model.text_mapper."))
            .collect();
        let model = OneFormer::new(
            &cfg,
            VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
        )?;
        eval::evaluate(&model, &self.classes, dataset)
    }

    fn activation_bytes_per_pixel(&self) -> u64 {
        // Not measured yet: the Swin-T / width-256 model's step holds about as much per pixel
        // as the ResNet-50 segmentors (estimate).
        26_000
    }

    fn save(
        &self,
        dir: &std::path::Path,
        weights: &BTreeMap<String, Tensor>,
    ) -> TrainResult<std::path::PathBuf> {
        // The text mapper is a training-time part (transformers drops it when `is_training`
        // is false); the saved model is the inference model.
        let w: BTreeMap<String, Tensor> = weights
            .iter()
            .filter(|(k, _)| !k.starts_with("model.text_mapper."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        crate::task::save_model_dir(dir, &w, &self.model_config())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod init_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trainer_tests;
