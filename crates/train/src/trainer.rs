//! The training loop.
//!
//! Each iteration: `accumulate` batches of `batch_size` samples (data order, pipeline,
//! collation), the segmentor's training forward pass (`forward_t(x, true)`: batch statistics,
//! running-statistics updates, dropout), every configured loss of every named head output
//! ([`crate::losses`]: mmseg's `loss_by_feat` of each head — DANet's three cross-entropies,
//! EncNet's cross-entropy and SE loss, the auxiliary head's cross-entropy weighted 0.4 — or the
//! model config's own), their total `backward`, gradients summed over the accumulated batches
//! (each total divided by `accumulate`), then one optimizer step at the scheduled learning
//! rate. The metrics log records each loss by mmseg's name and the total.
//!
//! Everything random is a pure function of the seed and a counter that checkpoints store —
//! the weight initialisation (per parameter name), the data order (`(epoch, pos)`), the
//! augmentation (per sample number) and dropout (a per-thread SplitMix64 state) — and the
//! kernels sum in a fixed order, so a run resumed from a checkpoint continues exactly as the
//! uninterrupted run would (bit-identical weights and losses).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rayon::prelude::*;
use segkit_data::SegDataset;

use crate::checkpoint::{self, State};
use crate::config::TrainConfig;
use crate::data::{check_labels, collate, open_datasets, DataOrder};
use crate::eval::{detached_copy, evaluate, EvalResult};
use crate::init::init_value;
use crate::losses::LossPlan;
use crate::optim::Optimizer;
use crate::progress::{MetricsLog, Progress};
use crate::record::{accumulate, Interval, IterLosses, TrainSummary};
use crate::{TrainError, TrainResult};
use segkit_models::EncoderDecoder;
use segkit_models::{BackboneConfig, SegmentorConfig};

/// File name of the latest checkpoint in the output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the final weights (model only, mmseg keys).
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
    model_cfg: SegmentorConfig,
    device: Device,
    varmap: VarMap,
    params: BTreeMap<String, Var>,
    trainable: BTreeMap<String, Var>,
    model: EncoderDecoder,
    optimizer: Optimizer,
    losses: LossPlan,
    train_set: Box<dyn SegDataset>,
    val_set: Box<dyn SegDataset>,
    pipeline: segkit_data::augment::Pipeline,
    order: DataOrder,
    iteration: usize,
    samples_seen: u64,
    dropout_state: u64,
    interval: Interval,
    history: Vec<IterLosses>,
    quiet: bool,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model_cfg.name)
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
        let model_cfg = cfg.segmentor_config()?;
        checkpoint::refuse_overwriting_inputs(&cfg, &RUN_FILES)?;
        if cfg.batch_size < 2 {
            return Err(cfg.error(
                "`batch_size` must be at least 2: BatchNorm in training needs more than one \
                 value per channel (PSP's 1x1 pyramid level has one per sample)",
            ));
        }
        let device = Device::Cpu;
        let (train_set, val_set, _) = open_datasets(&cfg, &model_cfg)?;
        let first = train_set.get(0)?;
        let native = (first.height, first.width);
        drop(first);
        let losses = LossPlan::new(&model_cfg, cfg.aux_loss_weight)?;
        let pipeline = segkit_data::augment::Pipeline::new(cfg.pipeline.clone())?;
        let varmap = VarMap::new();
        let model = EncoderDecoder::new(
            &model_cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )?;
        let params: BTreeMap<String, Var> = varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Io {
                path: PathBuf::from("<varmap>"),
                reason: "poisoned lock".into(),
            })?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let count: usize = params.values().map(|v| v.elem_count()).sum();
        crate::memory::check_training_memory(
            &cfg,
            &model_cfg,
            count as u64,
            native,
            &cfg.source_path(),
        )?;
        let trainable = params
            .iter()
            .filter(|(k, _)| !is_buffer(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut t = Self {
            order: DataOrder::new(cfg.seed, train_set.len(), 0, 0),
            optimizer: Optimizer::new(&cfg.optimizer),
            losses,
            cfg,
            model_cfg,
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
        // The last BatchNorm of each residual block (`zero_init_residual`); none elsewhere.
        let zero_gamma = match &self.model_cfg.backbone {
            BackboneConfig::ResNet(r) => match r.layout() {
                Ok((_, true)) => Some(".bn3.weight"),
                _ => Some(".bn2.weight"),
            },
            _ => None,
        };
        for (name, var) in &self.params {
            var.set(&init_value(name, var.dims(), self.cfg.seed, zero_gamma)?)?;
        }
        if let Some(path) = &self.cfg.load_from {
            // A file that cannot be read, a key that is absent or has another shape: a typed
            // `segkit_models::Error::Checkpoint` naming the model and file (its source names
            // the key or the file's problem).
            let in_ck = |e: segkit_core::Error| {
                segkit_models::Error::checkpoint(&self.model_cfg.name, path, e)
            };
            let sd = segkit_core::checkpoint::StateDict::load(path).map_err(in_ck)?;
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
        Ok(())
    }

    fn restore(&mut self, path: &Path, ck: checkpoint::Checkpoint) -> TrainResult<()> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let saved_model: SegmentorConfig = ck
            .metadata
            .get("model_config")
            .ok_or_else(|| bad("no model_config in the metadata".into()))
            .and_then(|j| serde_json::from_str(j).map_err(|e| bad(e.to_string())))?;
        if saved_model != self.model_cfg {
            return Err(bad(format!(
                "it was written for model `{}` with another config than `{}`'s",
                saved_model.name, self.model_cfg.name
            )));
        }
        let state: State = ck
            .metadata
            .get("state")
            .ok_or_else(|| bad("no state in the metadata".into()))
            .and_then(|j| serde_json::from_str(j).map_err(|e| bad(e.to_string())))?;
        if state.train_len != self.train_set.len() {
            return Err(bad(format!(
                "the training set had {} samples, now {}: the data order cannot continue",
                state.train_len,
                self.train_set.len()
            )));
        }
        for (name, var) in &self.params {
            let t = ck
                .tensors
                .get(&format!("model.{name}"))
                .ok_or_else(|| bad(format!("no tensor `model.{name}`")))?;
            if t.dims() != var.dims() {
                return Err(bad(format!("`model.{name}` has shape {:?}", t.dims())));
            }
            var.set(t)?;
        }
        let optim: BTreeMap<String, Tensor> = ck
            .tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix("optim.").map(|k| (k.to_string(), t.clone())))
            .collect();
        self.optimizer
            .load_state(&optim, &state.adam_steps)
            .map_err(bad)?;
        self.iteration = state.iteration;
        self.order = DataOrder::new(self.cfg.seed, self.train_set.len(), state.epoch, state.pos);
        self.samples_seen = state.samples_seen;
        self.dropout_state = state.dropout_state;
        self.interval = Interval::from_state(&state.interval, self.losses.names()).map_err(bad)?;
        Ok(())
    }

    /// The training config.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The model config.
    pub fn model_config(&self) -> &SegmentorConfig {
        &self.model_cfg
    }

    /// Optimizer steps taken.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// The losses of the iterations run by this session.
    pub fn history(&self) -> &[IterLosses] {
        &self.history
    }

    /// Every model tensor (parameters and BatchNorm running statistics), by mmseg key.
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

    /// An inference copy of the current model (weights copied, nothing tracked).
    pub fn eval_model(&self) -> TrainResult<EncoderDecoder> {
        let ts: HashMap<String, Tensor> = self.weights()?.into_iter().collect();
        Ok(EncoderDecoder::new(
            &self.model_cfg,
            VarBuilder::from_tensors(ts, DType::F32, &self.device),
        )?)
    }

    /// Evaluates the current weights on the validation split.
    pub fn evaluate(&self) -> TrainResult<EvalResult> {
        let model = self.eval_model()?;
        let bs = self.cfg.eval_batch_size.unwrap_or(self.cfg.batch_size);
        evaluate(&model, self.val_set.as_ref(), bs, |_, _| {})
    }

    fn load_batch(&mut self) -> TrainResult<Vec<segkit_data::augment::Augmented>> {
        let bs = self.cfg.batch_size;
        let jobs: Vec<(usize, u64)> = (0..bs)
            .map(|k| (self.order.next_index(), self.samples_seen + k as u64))
            .collect();
        self.samples_seen += bs as u64;
        let k = self.model_cfg.num_classes();
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

    /// One optimizer step (`accumulate` forward / backward passes).
    pub fn step(&mut self) -> TrainResult<IterLosses> {
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
            let batch = collate(
                &samples,
                &self.model_cfg.data_preprocessor,
                self.model_cfg.data_preprocessor.size,
                ignore,
                &self.device,
            )?;
            let prev = segkit_core::random::thread_state();
            segkit_core::random::set_thread_state(Some(self.dropout_state));
            let out = self.model.forward_t(&batch.images, true);
            self.dropout_state = segkit_core::random::thread_state().unwrap_or(0);
            segkit_core::random::set_thread_state(prev);
            let losses = self.losses.compute(&out?, &batch.labels, ignore as i64)?;
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
        self.optimizer.step(&self.trainable, &grads, lr)?;
        self.iteration += 1;
        let rec = IterLosses::new(self.iteration, lr, total, named, acc);
        self.interval.add(&rec);
        self.history.push(rec.clone());
        Ok(rec)
    }

    /// The losses the run trains with (names and configuration).
    pub fn loss_plan(&self) -> &LossPlan {
        &self.losses
    }

    /// Writes the checkpoint (model, optimizer, position, configs) atomically.
    pub fn save_checkpoint(&self) -> TrainResult<PathBuf> {
        let (bytes, path) = self.checkpoint_bytes()?;
        checkpoint::write_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// The checkpoint's bytes and its path (tests write them with a failing writer).
    #[doc(hidden)]
    pub fn checkpoint_bytes(&self) -> TrainResult<(Vec<u8>, PathBuf)> {
        let mut tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(k, v)| (format!("model.{k}"), v.as_tensor().detach()))
            .collect();
        let (opt, steps) = self.optimizer.state_tensors();
        tensors.extend(opt.into_iter().map(|(k, t)| (format!("optim.{k}"), t)));
        let (epoch, pos) = self.order.position();
        let state = State {
            iteration: self.iteration,
            epoch,
            pos,
            samples_seen: self.samples_seen,
            dropout_state: self.dropout_state,
            adam_steps: steps,
            interval: self.interval.to_state(),
            train_len: self.train_set.len(),
        };
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), checkpoint::FORMAT.to_string());
        meta.insert("iteration".to_string(), self.iteration.to_string());
        meta.insert("state".to_string(), checkpoint::to_json(&state)?);
        meta.insert("train_config".to_string(), checkpoint::to_json(&self.cfg)?);
        meta.insert(
            "model_config".to_string(),
            checkpoint::to_json(&self.model_cfg)?,
        );
        let bytes = checkpoint::to_bytes(&tensors, &meta)?;
        Ok((bytes, self.cfg.output_dir.join(CHECKPOINT_FILE)))
    }

    /// Writes the final weights (`model.safetensors`, mmseg keys) and `config.json`.
    pub fn save_model(&self, dir: &Path) -> TrainResult<PathBuf> {
        let path = dir.join(MODEL_FILE);
        let w: Vec<(String, Tensor)> = self.weights()?.into_iter().collect();
        checkpoint::save(&path, &w, &BTreeMap::new())?;
        let tagged = segkit_models::ModelConfig::from(self.model_cfg.clone());
        let cfg = serde_json::to_string_pretty(&tagged).map_err(|e| TrainError::Io {
            path: dir.join(CONFIG_FILE),
            reason: e.to_string(),
        })?;
        checkpoint::write_atomic(&dir.join(CONFIG_FILE), format!("{cfg}\n").as_bytes())?;
        Ok(path)
    }

    /// Trains until `until` iterations are done (at most `iterations`), evaluating,
    /// checkpointing and logging at the configured intervals. Returns the last evaluation
    /// (if one ran).
    pub fn train_until(&mut self, until: usize) -> TrainResult<Option<EvalResult>> {
        let total = self.cfg.iterations;
        let until = until.min(total);
        checkpoint::ensure_dir(&self.cfg.output_dir)?;
        for p in checkpoint::remove_stale_temps(&self.cfg.output_dir, &RUN_FILES) {
            progress_note(
                self.quiet,
                &format!("removed {} (left by an interrupted run)", p.display()),
            );
        }
        let log_path = self.cfg.output_dir.join(LOG_FILE);
        let mut log = MetricsLog::open(
            &log_path,
            if self.iteration > 0 || self.cfg.output_dir.join(CHECKPOINT_FILE).exists() {
                Some(self.iteration)
            } else {
                None
            },
        )?;
        let progress = Progress::new(self.iteration, total, self.cfg.log_interval, self.quiet);
        if self.iteration > 0 {
            progress.message(&format!(
                "resuming `{}` at iteration {}/{total}",
                self.model_cfg.name, self.iteration
            ));
        }
        let mut last_eval = None;
        let started = Instant::now();
        while self.iteration < until {
            let t0 = Instant::now();
            let rec = self.step()?;
            let it = self.iteration;
            progress.update(it, rec.loss, rec.lr);
            let li = self.cfg.log_interval.max(1);
            if it % li == 0 || it == total {
                let mut record = serde_json::Map::new();
                record.insert("type".into(), "train".into());
                record.insert("iter".into(), it.into());
                record.insert("lr".into(), rec.lr.into());
                record.extend(self.interval.means());
                record.insert("last_loss".into(), rec.loss.into());
                record.insert("sec_per_iter".into(), t0.elapsed().as_secs_f64().into());
                record.insert("elapsed".into(), started.elapsed().as_secs_f64().into());
                log.write(&serde_json::Value::Object(record))?;
                self.interval = Interval::default();
            }
            let eval_now =
                (self.cfg.eval_interval > 0 && it % self.cfg.eval_interval == 0) || it == total;
            if eval_now {
                let r = self.evaluate()?;
                progress.message(&format!(
                    "iter {it}: val aAcc {:.2} mIoU {:.2} mAcc {:.2} ({} images)",
                    100.0 * r.aacc,
                    100.0 * r.miou,
                    100.0 * r.macc,
                    r.num_images
                ));
                log.write(&serde_json::json!({
                    "type": "val",
                    "iter": it,
                    "aAcc": r.aacc,
                    "mIoU": r.miou,
                    "mAcc": r.macc,
                }))?;
                last_eval = Some(r);
            }
            let ck_int = if self.cfg.checkpoint_interval > 0 {
                self.cfg.checkpoint_interval
            } else {
                self.cfg.eval_interval
            };
            if (ck_int > 0 && it % ck_int == 0) || it == total || it == until {
                self.save_checkpoint()?;
            }
        }
        Ok(last_eval)
    }

    /// Trains to the end, then writes the final model and returns the summary.
    pub fn run(&mut self) -> TrainResult<TrainSummary> {
        let start_iter = self.iteration;
        let t0 = Instant::now();
        let last = self.train_until(self.cfg.iterations)?;
        let secs = t0.elapsed().as_secs_f64();
        let eval = match last {
            Some(e) => e,
            None => self.evaluate()?,
        };
        let model_path = self.save_model(&self.cfg.output_dir.clone())?;
        let summary = TrainSummary {
            iterations: self.iteration,
            final_loss: self.history.last().map_or(f64::NAN, |r| r.loss),
            iters_per_sec: if secs > 0.0 {
                (self.iteration - start_iter) as f64 / secs
            } else {
                0.0
            },
            eval,
            model_path,
        };
        let j = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Io {
            path: self.cfg.output_dir.join(SUMMARY_FILE),
            reason: e.to_string(),
        })?;
        checkpoint::write_atomic(&self.cfg.output_dir.join(SUMMARY_FILE), j.as_bytes())?;
        Ok(summary)
    }
}
