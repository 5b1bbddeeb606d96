//! The trainer's checkpoints: what they hold (model, optimizer, position, random streams,
//! configs) and how a run resumes from one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::{Trainer, CHECKPOINT_FILE};
use crate::checkpoint::{self, State};
use crate::data::DataOrder;
use crate::record::Interval;
use crate::{TrainError, TrainResult};

impl Trainer {
    pub(super) fn restore(&mut self, path: &Path, ck: checkpoint::Checkpoint) -> TrainResult<()> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let saved_model: serde_json::Value = ck
            .metadata
            .get("model_config")
            .ok_or_else(|| bad("no model_config in the metadata".into()))
            .and_then(|j| serde_json::from_str(j).map_err(|e| bad(e.to_string())))?;
        let ours: serde_json::Value =
            serde_json::from_str(&self.model.config_json()?).map_err(|e| bad(e.to_string()))?;
        if saved_model != ours {
            let name = saved_model
                .get("name")
                .or_else(|| saved_model.get("net").and_then(|n| n.get("name")))
                .and_then(|n| n.as_str())
                .unwrap_or("?");
            return Err(bad(format!(
                "it was written for model `{name}` with another config than `{}`'s",
                self.model.name()
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
        self.interval =
            Interval::from_state(&state.interval, self.model.loss_names()).map_err(bad)?;
        Ok(())
    }

    /// Writes the checkpoint (model, optimizer, position, configs) atomically.
    pub fn save_checkpoint(&self) -> TrainResult<PathBuf> {
        let (bytes, path) = self.checkpoint_bytes()?;
        checkpoint::write_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// The checkpoint's bytes and its path (tests write them with a failing writer).
    ///
    /// The metadata `state.dropout_state` is the model's random stream (dropout, and
    /// Gated-SCNN's Gumbel noise); `model_config` is [`crate::task::TrainModel::config_json`].
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
        meta.insert("model_config".to_string(), self.model.config_json()?);
        let bytes = checkpoint::to_bytes(&tensors, &meta)?;
        Ok((bytes, self.cfg.output_dir.join(CHECKPOINT_FILE)))
    }

    /// Writes the final weights (`model.safetensors`, the model's keys) and `config.json`
    /// (the tagged model config `segkit infer` reloads).
    pub fn save_model(&self, dir: &Path) -> TrainResult<PathBuf> {
        self.model.save(dir, &self.weights()?)
    }
}
