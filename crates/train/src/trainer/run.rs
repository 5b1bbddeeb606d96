//! The trainer's loop: steps, the metrics log, periodic evaluation and checkpoints, the
//! final model and summary.

use std::time::Instant;

use super::{progress_note, Trainer, CHECKPOINT_FILE, LOG_FILE, RUN_FILES, SUMMARY_FILE};
use crate::checkpoint;
use crate::eval::EvalResult;
use crate::progress::{MetricsLog, Progress};
use crate::record::{Interval, IterLosses, TrainSummary};
use crate::{TrainError, TrainResult};

impl Trainer {
    /// Trains until `until` iterations are done (at most `iterations`), evaluating,
    /// checkpointing and logging at the configured intervals. Returns the last evaluation
    /// (if one ran).
    pub fn train_until(&mut self, until: usize) -> TrainResult<Option<EvalResult>> {
        self.train_until_with(until, |_| {})
    }

    /// [`Trainer::train_until`], calling `observe` with each iteration's losses.
    pub fn train_until_with(
        &mut self,
        until: usize,
        mut observe: impl FnMut(&IterLosses),
    ) -> TrainResult<Option<EvalResult>> {
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
                self.model.name(),
                self.iteration
            ));
        }
        let mut last_eval = None;
        let started = Instant::now();
        while self.iteration < until {
            let t0 = Instant::now();
            let rec = self.step()?;
            observe(&rec);
            let it = self.iteration;
            progress.update(it, rec.loss, rec.lr);
            let li = self.cfg.log_interval.max(1);
            if it.is_multiple_of(li) || it == total {
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
            let eval_now = (self.cfg.eval_interval > 0
                && it.is_multiple_of(self.cfg.eval_interval))
                || it == total;
            if eval_now {
                let r = self.evaluate()?;
                let extra: String = r
                    .extra
                    .iter()
                    .map(|(k, v)| format!(" {k} {:.2}", 100.0 * v))
                    .collect();
                progress.message(&format!(
                    "iter {it}: val aAcc {:.2} mIoU {:.2} mAcc {:.2}{extra} ({} images)",
                    100.0 * r.aacc,
                    100.0 * r.miou,
                    100.0 * r.macc,
                    r.num_images
                ));
                let mut record = serde_json::json!({
                    "type": "val",
                    "iter": it,
                    "aAcc": r.aacc,
                    "mIoU": r.miou,
                    "mAcc": r.macc,
                });
                if let Some(o) = record.as_object_mut() {
                    o.extend(r.extra.iter().map(|(k, v)| (k.clone(), (*v).into())));
                }
                log.write(&record)?;
                last_eval = Some(r);
            }
            let ck_int = if self.cfg.checkpoint_interval > 0 {
                self.cfg.checkpoint_interval
            } else {
                self.cfg.eval_interval
            };
            if (ck_int > 0 && it.is_multiple_of(ck_int)) || it == total || it == until {
                self.save_checkpoint()?;
            }
        }
        Ok(last_eval)
    }

    /// Trains to the end, then writes the final model and returns the summary.
    pub fn run(&mut self) -> TrainResult<TrainSummary> {
        self.run_with(|_| {})
    }

    /// [`Trainer::run`], calling `observe` with each iteration's losses.
    pub fn run_with(&mut self, observe: impl FnMut(&IterLosses)) -> TrainResult<TrainSummary> {
        let start_iter = self.iteration;
        let t0 = Instant::now();
        let last = self.train_until_with(self.cfg.iterations, observe)?;
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
