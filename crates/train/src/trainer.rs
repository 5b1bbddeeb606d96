//! The training loop.
//!
//! Each iteration: `accumulate` batches of `batch_size` samples (data order, pipeline,
//! collation), the segmentor's training forward pass (`forward_t(x, true)`: batch statistics,
//! running-statistics updates, dropout), the decode head's logits (and the auxiliary head's)
//! bilinearly resized to the labels and scored with mmseg's cross-entropy (ignore 255, mean
//! over all pixels; auxiliary weight 0.4), `backward`, gradients summed over the accumulated
//! batches (each loss divided by `accumulate`), then one optimizer step at the scheduled
//! learning rate.
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
use segkit_data::{Sample, SegDataset};
use segkit_losses::CrossEntropyLoss;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::config::TrainConfig;
use crate::data::{collate, open_dataset, DataOrder, Limited, SampleRng, Split};
use crate::eval::{detached_copy, evaluate, EvalResult};
use crate::optim::Optimizer;
use crate::progress::{MetricsLog, Progress};
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

/// Loss sums since the last log record.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Interval {
    loss: f64,
    decode: f64,
    aux: f64,
    count: usize,
}

/// What a checkpoint's metadata stores besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    iteration: usize,
    epoch: u64,
    pos: usize,
    samples_seen: u64,
    dropout_state: u64,
    adam_steps: BTreeMap<String, u64>,
    /// The interval's loss sums as f64 bit patterns (exact through JSON), then the count.
    interval_bits: [u64; 3],
    interval_count: usize,
    train_len: usize,
}

/// The losses of one iteration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IterLosses {
    /// Iteration number (1-based: the number of optimizer steps taken).
    pub iter: usize,
    /// Learning rate of the step.
    pub lr: f64,
    /// Total loss (decode + weighted auxiliary), averaged over accumulated batches.
    pub loss: f64,
    /// Decode-head cross-entropy.
    pub loss_decode: f64,
    /// Auxiliary-head cross-entropy, times its weight.
    pub loss_aux: f64,
}

/// The result of [`Trainer::run`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Iterations done in total.
    pub iterations: usize,
    /// Loss of the last iteration.
    pub final_loss: f64,
    /// Iterations per second over this session.
    pub iters_per_sec: f64,
    /// The final evaluation.
    pub eval: EvalResult,
    /// The final weights.
    pub model_path: PathBuf,
}

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

fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// Deterministic initial values of one parameter: mmseg's initialisation (Kaiming-normal
/// `fan_out` convolutions, BatchNorm 1 / 0, the classifier `conv_seg` N(0, 0.01), zero bias,
/// the last BatchNorm of each residual block zero as `zero_init_residual`).
fn init_value(name: &str, shape: &[usize], seed: u64, zero_gamma: &str) -> TrainResult<Tensor> {
    let dev = Device::Cpu;
    let n: usize = shape.iter().product();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut rng = SampleRng::for_sample(seed ^ h, 0x1417);
    let mut normal = |std: f64| -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            // Box-Muller.
            let u1 = rng.uniform().max(f64::MIN_POSITIVE);
            let u2 = rng.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            v.push((std * r * t.cos()) as f32);
            if v.len() < n {
                v.push((std * r * t.sin()) as f32);
            }
        }
        v
    };
    let data: Vec<f32> = if name.ends_with(".running_var") {
        vec![1.0; n]
    } else if name.ends_with(".running_mean") {
        vec![0.0; n]
    } else if shape.len() == 1 {
        let gamma = name.ends_with(".weight");
        let zero = name.starts_with("backbone.layer") && name.ends_with(zero_gamma);
        vec![if gamma && !zero { 1.0 } else { 0.0 }; n]
    } else if name.contains("conv_seg.") || shape.len() == 2 {
        normal(0.01)
    } else {
        // Kaiming normal, mode fan_out, ReLU gain: std = sqrt(2 / (out * kh * kw)).
        let fan_out = shape[0] * shape[2..].iter().product::<usize>();
        normal((2.0 / fan_out.max(1) as f64).sqrt())
    };
    Ok(Tensor::from_vec(data, shape, &dev)?)
}

/// The training set, the validation set and the ignore index.
type Datasets = (Box<dyn SegDataset>, Box<dyn SegDataset>, u8);

fn open_datasets(cfg: &TrainConfig, model_cfg: &SegmentorConfig) -> TrainResult<Datasets> {
    let train = open_dataset(&cfg.dataset, Split::Train, &model_cfg.meta)?;
    let mut val = open_dataset(&cfg.dataset, Split::Val, &model_cfg.meta)?;
    if let Some(n) = cfg.val_limit {
        val = Box::new(Limited::new(val, n));
    }
    let k = model_cfg.num_classes();
    let n = train.info().classes.len();
    if n != k {
        return Err(TrainError::Config {
            path: PathBuf::from("<train config>"),
            reason: format!(
                "the dataset has {n} classes but model `{}` predicts {k}",
                model_cfg.name
            ),
        });
    }
    if train.is_empty() {
        return Err(TrainError::Config {
            path: PathBuf::from("<train config>"),
            reason: "the training split has no samples".into(),
        });
    }
    let ignore = train.info().ignore_index;
    Ok((train, val, ignore))
}

/// Checks that every label is a class or the ignore index, naming the file otherwise.
fn check_labels(s: &Sample, k: usize, ignore: u8) -> TrainResult<()> {
    if let Some(sem) = &s.semantic {
        if let Some(&v) = sem.iter().find(|&&v| v != ignore && v as usize >= k) {
            return Err(segkit_data::Error::BadFile {
                path: s.path.clone(),
                reason: format!(
                    "label value {v} is neither a class (0..{k}) nor the ignore index {ignore}"
                ),
            }
            .into());
        }
    }
    Ok(())
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
        cfg.validate().map_err(|reason| TrainError::Config {
            path: PathBuf::from("<train config>"),
            reason,
        })?;
        let model_cfg = cfg.segmentor_config()?;
        if cfg.batch_size < 2 {
            return Err(TrainError::Config {
                path: PathBuf::from("<train config>"),
                reason: "batch_size must be at least 2: BatchNorm in training needs more than one \
                         value per channel (PSP's 1x1 pyramid level has one per sample)"
                    .into(),
            });
        }
        let device = Device::Cpu;
        let (train_set, val_set, ignore) = open_datasets(&cfg, &model_cfg)?;
        let _ = ignore;
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
        let trainable = params
            .iter()
            .filter(|(k, _)| !is_buffer(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut t = Self {
            order: DataOrder::new(cfg.seed, train_set.len(), 0, 0),
            optimizer: Optimizer::new(&cfg.optimizer),
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
        let zero_gamma = match &self.model_cfg.backbone {
            BackboneConfig::ResNet(r) => match r.layout() {
                Ok((_, true)) => ".bn3.weight",
                _ => ".bn2.weight",
            },
        };
        for (name, var) in &self.params {
            var.set(&init_value(name, var.dims(), self.cfg.seed, zero_gamma)?)?;
        }
        if let Some(path) = &self.cfg.load_from {
            let sd = segkit_core::checkpoint::StateDict::load(path).map_err(|e| {
                TrainError::Checkpoint {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            for (name, var) in &self.params {
                let t = sd.get(name).ok_or_else(|| TrainError::Checkpoint {
                    path: path.clone(),
                    reason: format!("no tensor `{name}`"),
                })?;
                if t.dims() != var.dims() {
                    return Err(TrainError::Checkpoint {
                        path: path.clone(),
                        reason: format!(
                            "`{name}` has shape {:?}, the model needs {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    });
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
        self.interval = Interval {
            loss: f64::from_bits(state.interval_bits[0]),
            decode: f64::from_bits(state.interval_bits[1]),
            aux: f64::from_bits(state.interval_bits[2]),
            count: state.interval_count,
        };
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
        let ce = CrossEntropyLoss::mmseg();
        let acc = self.cfg.accumulate;
        let ignore = self.train_set.info().ignore_index;
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        let (mut l_all, mut l_dec, mut l_aux) = (0f64, 0f64, 0f64);
        for _ in 0..acc {
            let samples = self.load_batch()?;
            let batch = collate(
                &samples,
                &self.model_cfg.data_preprocessor,
                self.model_cfg.data_preprocessor.size,
                ignore,
                &self.device,
            )?;
            let (_, _, h, w) = batch.images.dims4()?;
            let prev = segkit_core::random::thread_state();
            segkit_core::random::set_thread_state(Some(self.dropout_state));
            let out = self.model.forward_t(&batch.images, true);
            self.dropout_state = segkit_core::random::thread_state().unwrap_or(0);
            segkit_core::random::set_thread_state(prev);
            let out = out?;
            let ac = self.model_cfg.align_corners();
            let up = |t: &Tensor| segkit_core::ops::resize_bilinear(t, (h, w), ac);
            let dec = ce.forward(&up(&out.logits)?, &batch.labels)?;
            let mut loss = dec.clone();
            let mut aux_v = 0.0;
            if let (Some(a), true) = (&out.aux_logits, self.cfg.aux_loss_weight != 0.0) {
                let aux = (ce.forward(&up(a)?, &batch.labels)? * self.cfg.aux_loss_weight)?;
                aux_v = aux.to_scalar::<f32>()? as f64;
                loss = (loss + aux)?;
            }
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(TrainError::Diverged {
                    iteration: self.iteration + 1,
                    loss: lv,
                });
            }
            l_all += lv;
            l_dec += dec.to_scalar::<f32>()? as f64;
            l_aux += aux_v;
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
        let n = acc as f64;
        let rec = IterLosses {
            iter: self.iteration,
            lr,
            loss: l_all / n,
            loss_decode: l_dec / n,
            loss_aux: l_aux / n,
        };
        self.interval.loss += rec.loss;
        self.interval.decode += rec.loss_decode;
        self.interval.aux += rec.loss_aux;
        self.interval.count += 1;
        self.history.push(rec);
        Ok(rec)
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
            interval_bits: [
                self.interval.loss.to_bits(),
                self.interval.decode.to_bits(),
                self.interval.aux.to_bits(),
            ],
            interval_count: self.interval.count,
            train_len: self.train_set.len(),
        };
        let json = |v: &dyn erased::Json| v.to_json();
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), checkpoint::FORMAT.to_string());
        meta.insert("iteration".to_string(), self.iteration.to_string());
        meta.insert("state".to_string(), json(&state)?);
        meta.insert("train_config".to_string(), json(&self.cfg)?);
        meta.insert("model_config".to_string(), json(&self.model_cfg)?);
        let bytes = checkpoint::to_bytes(&tensors, &meta)?;
        Ok((bytes, self.cfg.output_dir.join(CHECKPOINT_FILE)))
    }

    /// Writes the final weights (`model.safetensors`, mmseg keys) and `config.json`.
    pub fn save_model(&self, dir: &Path) -> TrainResult<PathBuf> {
        let path = dir.join(MODEL_FILE);
        let w = self.weights()?;
        segkit_core::checkpoint::save_safetensors(&w, &path)?;
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
        std::fs::create_dir_all(&self.cfg.output_dir).map_err(|e| TrainError::Io {
            path: self.cfg.output_dir.clone(),
            reason: e.to_string(),
        })?;
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
                let c = self.interval.count.max(1) as f64;
                log.write(&serde_json::json!({
                    "type": "train",
                    "iter": it,
                    "lr": rec.lr,
                    "loss": self.interval.loss / c,
                    "loss_decode": self.interval.decode / c,
                    "loss_aux": self.interval.aux / c,
                    "last_loss": rec.loss,
                    "sec_per_iter": t0.elapsed().as_secs_f64(),
                    "elapsed": started.elapsed().as_secs_f64(),
                }))?;
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
            path: self.cfg.output_dir.join("summary.json"),
            reason: e.to_string(),
        })?;
        checkpoint::write_atomic(&self.cfg.output_dir.join("summary.json"), j.as_bytes())?;
        Ok(summary)
    }
}

mod erased {
    use crate::{TrainError, TrainResult};

    /// Object-safe JSON serialisation for the checkpoint metadata.
    pub(super) trait Json {
        fn to_json(&self) -> TrainResult<String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> TrainResult<String> {
            serde_json::to_string(self).map_err(|e| TrainError::Io {
                path: std::path::PathBuf::from("<checkpoint metadata>"),
                reason: e.to_string(),
            })
        }
    }
}
