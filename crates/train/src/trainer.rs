//! The training loop, for any [`TrainModel`] ([`crate::task`]: encoder-decoder segmentors,
//! Gated-SCNN).
//!
//! Each iteration: `accumulate` batches of `batch_size` samples (data order, pipeline,
//! collation with the model's normalisation), the model's training forward pass and named
//! losses ([`TrainModel::losses`]; a segmentor's: `forward_t(x, true)` and every configured
//! loss of every named head output, [`crate::losses`] — DANet's three cross-entropies,
//! EncNet's cross-entropy and SE loss, the auxiliary head's cross-entropy weighted 0.4;
//! Gated-SCNN's: `seg_loss`, `edge_loss`, `att_loss`, `dual_loss`, [`crate::gscnn`]), their
//! total `backward`, gradients summed over the accumulated batches (each total divided by
//! `accumulate`), then one optimizer step at the scheduled learning rate. The metrics log
//! records each loss by name and the total.
//!
//! Everything random is a pure function of the seed and a counter that checkpoints store —
//! the weight initialisation (per parameter name), the data order (`(epoch, pos)`), the
//! augmentation (per sample number) and the model's own stream (dropout, Gated-SCNN's Gumbel
//! noise: a SplitMix64 state) — and the kernels sum in a fixed order, so a run resumed from a
//! checkpoint continues exactly as the uninterrupted run would (bit-identical weights and
//! losses).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rayon::prelude::*;
use segkit_data::SegDataset;

use crate::checkpoint;
use crate::config::{ClipGradConfig, TrainConfig};
use crate::data::{check_labels, collate, open_dataset, DataOrder, Limited, Split};
use crate::eval::{detached_copy, EvalResult};
use crate::optim::Optimizer;
use crate::record::{accumulate, Interval, IterLosses};
use crate::task::{build_model, internal, TrainModel};
use crate::{TrainError, TrainResult};
use segkit_models::{EncoderDecoder, SegmentorConfig};

mod run;
mod segmentor;
mod state;

pub use segmentor::SegmentorTask;

/// File name of the latest checkpoint in the output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the final weights (model only, the model's own keys).
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the model config written next to the weights.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the JSONL metrics log.
pub const LOG_FILE: &str = "metrics.jsonl";
/// File name of the run's summary.
pub const SUMMARY_FILE: &str = "summary.json";
/// Every file a run writes into its output directory.
pub const RUN_FILES: [&str; 5] = [
    CHECKPOINT_FILE,
    MODEL_FILE,
    CONFIG_FILE,
    LOG_FILE,
    SUMMARY_FILE,
];

/// A training run (see the module docs).
pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
    varmap: VarMap,
    params: BTreeMap<String, Var>,
    trainable: BTreeMap<String, Var>,
    model: Box<dyn TrainModel>,
    optimizer: Optimizer,
    clip: Option<ClipGradConfig>,
    train_set: Box<dyn SegDataset>,
    val_set: Box<dyn SegDataset>,
    pipeline: segkit_data::augment::Pipeline,
    order: DataOrder,
    iteration: usize,
    samples_seen: u64,
    /// The model's random stream (dropout, Gumbel noise), saved in checkpoints.
    pub(crate) dropout_state: u64,
    interval: Interval,
    history: Vec<IterLosses>,
    quiet: bool,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model.name())
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

fn progress_note(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("{msg}");
    }
}

fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The training set, the validation set (cut to `val_limit`), checked against the model.
fn open_datasets(
    cfg: &TrainConfig,
    model: &dyn TrainModel,
) -> TrainResult<(Box<dyn SegDataset>, Box<dyn SegDataset>)> {
    let train = open_dataset(&cfg.dataset, Split::Train, model.meta())?;
    let mut val = open_dataset(&cfg.dataset, Split::Val, model.meta())?;
    if let Some(n) = cfg.val_limit {
        val = Box::new(Limited::new(val, n));
    }
    let k = model.num_classes();
    let n = train.info().classes.len();
    if n != k {
        return Err(cfg.error(format!(
            "`dataset`: the dataset has {n} classes but model `{}` predicts {k}",
            model.name()
        )));
    }
    if train.is_empty() {
        return Err(cfg.error("`dataset`: the training split has no samples"));
    }
    if val.is_empty() {
        return Err(cfg.error(
            "`dataset`: the validation split has no samples (the mIoU of no images is \
             undefined)",
        ));
    }
    Ok((train, val))
}

impl Trainer {
    /// Starts a fresh run: builds the model (random initialisation or `load_from`), opens the
    /// datasets, and clears the output directory's metrics log.
    pub fn new(cfg: TrainConfig) -> TrainResult<Self> {
        Self::build(cfg, None)
    }

    /// Continues the run whose latest checkpoint is in `cfg.output_dir`.
    pub fn resume(cfg: TrainConfig) -> TrainResult<Self> {
        let path = cfg.output_dir.join(CHECKPOINT_FILE);
        let ck = checkpoint::load(&path)?;
        Self::build(cfg, Some((path, ck)))
    }

    /// Resumes when the output directory has a checkpoint, else starts fresh.
    pub fn resume_or_new(cfg: TrainConfig) -> TrainResult<Self> {
        if cfg.output_dir.join(CHECKPOINT_FILE).exists() {
            Self::resume(cfg)
        } else {
            Self::new(cfg)
        }
    }

    /// Silences the progress line and messages (tests).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    fn build(
        cfg: TrainConfig,
        resume: Option<(PathBuf, checkpoint::Checkpoint)>,
    ) -> TrainResult<Self> {
        cfg.validate().map_err(|reason| cfg.error(reason))?;
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let model = build_model(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
        checkpoint::refuse_overwriting_inputs(&cfg, &RUN_FILES)?;
        let min = model.min_batch_size();
        if cfg.batch_size < min {
            return Err(cfg.error(format!(
                "`batch_size` must be at least {min}: BatchNorm in training needs more than \
                 one value per channel (PSP's 1x1 pyramid level has one per sample)"
            )));
        }
        let (train_set, val_set) = open_datasets(&cfg, model.as_ref())?;
        let first = train_set.get(0)?;
        let native = (first.height, first.width);
        drop(first);
        let pipeline = segkit_data::augment::Pipeline::new(cfg.pipeline.clone())?;
        let params: BTreeMap<String, Var> = varmap
            .data()
            .lock()
            .map_err(|_| internal("varmap"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let count: usize = params.values().map(|v| v.elem_count()).sum();
        crate::memory::check_training_memory_of(
            &cfg,
            model.activation_bytes_per_pixel(),
            model.preprocessor().size,
            count as u64,
            native,
            &cfg.source_path(),
        )?;
        let trainable: BTreeMap<String, Var> = params
            .iter()
            .filter(|(k, _)| !is_buffer(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The config's `paramwise_cfg` / `clip_grad` where given, else the model's rules.
        let groups = trainable
            .keys()
            .map(|k| {
                let g = match &cfg.paramwise_cfg {
                    Some(p) => p.group(k),
                    None => model.param_group(k),
                };
                (k.clone(), g)
            })
            .collect();
        let clip = cfg.clip_grad.or_else(|| model.clip_grad());
        let mut t = Self {
            order: DataOrder::new(cfg.seed, train_set.len(), 0, 0),
            optimizer: Optimizer::new(&cfg.optimizer).with_groups(groups),
            clip,
            cfg,
            device,
            varmap,
            params,
            trainable,
            model,
            train_set,
            val_set,
            pipeline,
            iteration: 0,
            samples_seen: 0,
            dropout_state: 0,
            interval: Interval::default(),
            history: Vec::new(),
            quiet: false,
        };
        t.dropout_state = {
            let mut s = t.cfg.seed ^ 0x000D_20F0_u64;
            segkit_core::random::splitmix64(&mut s)
        };
        match resume {
            None => t.initialise()?,
            Some((path, ck)) => t.restore(&path, ck)?,
        }
        Ok(t)
    }

    fn initialise(&mut self) -> TrainResult<()> {
        for (name, var) in &self.params {
            var.set(&self.model.init_value(name, var.dims(), self.cfg.seed)?)?;
        }
        if let Some(path) = &self.cfg.load_from {
            // A file that cannot be read, a key that is absent or has another shape: a typed
            // `segkit_models::Error::Checkpoint` naming the model and file (its source names
            // the key or the file's problem).
            let in_ck = |e: segkit_core::Error| {
                segkit_models::Error::checkpoint(self.model.name(), path, e)
            };
            let sd = self.model.load_state_dict(path)?;
            for (name, var) in &self.params {
                let t = sd.require(name).map_err(in_ck)?;
                if t.dims() != var.dims() {
                    Err(in_ck(segkit_core::Error::shape(
                        name.as_str(),
                        var.dims(),
                        t.dims(),
                    )))?;
                }
                var.set(&t.to_dtype(DType::F32)?)?;
            }
        }
        for (i, p) in self.cfg.pretrained.iter().enumerate() {
            let in_ck = |e: segkit_core::Error| {
                segkit_models::Error::checkpoint(self.model.name(), &p.path, e)
            };
            let sd = segkit_core::checkpoint::StateDict::load(&p.path).map_err(in_ck)?;
            let mut set = 0;
            for (name, var) in &self.params {
                let Some(rest) = name.strip_prefix(p.to.as_str()) else {
                    continue;
                };
                let key = format!("{}{rest}", p.prefix);
                let t = sd.require(&key).map_err(in_ck)?;
                if t.dims() != var.dims() {
                    Err(in_ck(segkit_core::Error::shape(
                        key.as_str(),
                        var.dims(),
                        t.dims(),
                    )))?;
                }
                var.set(&t.to_dtype(DType::F32)?)?;
                set += 1;
            }
            if set == 0 {
                return Err(self.cfg.error(format!(
                    "`pretrained[{i}].to`: no variable of model `{}` starts with `{}`",
                    self.model.name(),
                    p.to
                )));
            }
        }
        Ok(())
    }

    /// The training config.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The model being trained.
    pub fn model(&self) -> &dyn TrainModel {
        self.model.as_ref()
    }

    /// The segmentor config, when the model is an encoder-decoder segmentor.
    pub fn segmentor_config(&self) -> Option<&SegmentorConfig> {
        self.segmentor().map(SegmentorTask::config)
    }

    fn segmentor(&self) -> Option<&SegmentorTask> {
        self.model.as_any().downcast_ref::<SegmentorTask>()
    }

    /// The optimizer (its state and per-variable groups).
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The gradient clipping applied before each step (the config's `clip_grad`, else the
    /// model's).
    pub fn clip_grad(&self) -> Option<&ClipGradConfig> {
        self.clip.as_ref()
    }

    /// Optimizer steps taken.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// The losses of the iterations run by this session.
    pub fn history(&self) -> &[IterLosses] {
        &self.history
    }

    /// Every model tensor (parameters and BatchNorm running statistics), by key.
    pub fn weights(&self) -> TrainResult<BTreeMap<String, Tensor>> {
        self.params
            .iter()
            .map(|(k, v)| Ok((k.clone(), detached_copy(v.as_tensor())?)))
            .collect()
    }

    /// The variables, for direct inspection.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// An inference copy of the current segmentor (weights copied, nothing tracked); an
    /// error for a model of another family.
    pub fn eval_model(&self) -> TrainResult<EncoderDecoder> {
        let cfg = self.segmentor_config().ok_or_else(|| {
            self.cfg
                .error(format!("`{}` is not an encoder-decoder", self.model.name()))
        })?;
        let ts: HashMap<String, Tensor> = self.weights()?.into_iter().collect();
        Ok(EncoderDecoder::new(
            cfg,
            VarBuilder::from_tensors(ts, DType::F32, &self.device),
        )?)
    }

    /// Evaluates the current weights on the validation split (a Gated-SCNN's result
    /// carries its boundary F-scores in [`EvalResult::extra`]).
    pub fn evaluate(&self) -> TrainResult<EvalResult> {
        let ts: HashMap<String, Tensor> = self.weights()?.into_iter().collect();
        let bs = self.cfg.eval_batch_size.unwrap_or(self.cfg.batch_size);
        self.model.evaluate(ts, self.val_set.as_ref(), bs)
    }

    fn load_batch(&mut self) -> TrainResult<Vec<segkit_data::augment::Augmented>> {
        let bs = self.cfg.batch_size;
        let jobs: Vec<(usize, u64)> = (0..bs)
            .map(|k| (self.order.next_index(), self.samples_seen + k as u64))
            .collect();
        self.samples_seen += bs as u64;
        let k = self.model.num_classes();
        let ignore = self.train_set.info().ignore_index;
        let (set, pipeline, seed) = (&self.train_set, &self.pipeline, self.cfg.seed);
        jobs.into_par_iter()
            .map(|(i, counter)| {
                let s = set.get(i)?;
                check_labels(&s, k, ignore)?;
                let mut rng = segkit_data::augment::Rng::for_sample(seed, 0, counter);
                Ok(pipeline.apply(s, &mut rng)?)
            })
            .collect()
    }

    /// One optimizer step (`accumulate` forward / backward passes), run on a worker of rayon's
    /// pool ([`segkit_core::runtime::on_pool`]: no thread switch per op).
    pub fn step(&mut self) -> TrainResult<IterLosses> {
        segkit_core::runtime::on_pool(|| self.step_here())
    }

    fn step_here(&mut self) -> TrainResult<IterLosses> {
        let lr =
            self.cfg
                .schedule
                .lr_at(self.cfg.optimizer.lr(), self.iteration, self.cfg.iterations);
        let acc = self.cfg.accumulate;
        let ignore = self.train_set.info().ignore_index;
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        let mut total = 0f64;
        let mut named = BTreeMap::new();
        for _ in 0..acc {
            let samples = self.load_batch()?;
            let pre = self.model.preprocessor();
            let batch = collate(&samples, pre, pre.size, ignore, &self.device)?;
            let losses = self.model.losses(&batch, ignore, &mut self.dropout_state)?;
            let lv = accumulate(&mut named, &losses)?;
            if !lv.is_finite() {
                return Err(TrainError::Diverged {
                    iteration: self.iteration + 1,
                    loss: lv,
                });
            }
            total += lv;
            let loss = losses.total;
            let scaled = if acc > 1 { (loss / acc as f64)? } else { loss };
            let g = scaled.backward()?;
            for (name, var) in &self.trainable {
                if let Some(t) = g.get(var.as_tensor()) {
                    let t = match grads.remove(name) {
                        Some(prev) => (prev + t)?,
                        None => t.clone(),
                    };
                    grads.insert(name.clone(), t);
                }
            }
        }
        if let Some(c) = &self.clip {
            crate::optim::clip_grad_norm(&mut grads, c)?;
        }
        self.optimizer.step(&self.trainable, &grads, lr)?;
        self.iteration += 1;
        let rec = IterLosses::new(self.iteration, lr, total, named, acc);
        self.interval.add(&rec);
        self.history.push(rec.clone());
        Ok(rec)
    }

    /// The losses a segmentor trains with (names and configuration); `None` for a model of
    /// another family (its names: [`TrainModel::loss_names`]).
    pub fn loss_plan(&self) -> Option<&crate::losses::LossPlan> {
        self.segmentor().map(SegmentorTask::loss_plan)
    }
}
