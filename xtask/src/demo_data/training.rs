//! The demo training run: its config ([`demo_train_config`]) and its record
//! ([`finish_demo`] -> [`DemoReport`]).

use std::path::{Path, PathBuf};

use segkit::models::encoder_decoder::demo::{demo_config, DEMO_PRESET};
use segkit::train::{TrainError, TrainResult};

/// The training config of the demo run: AdamW (lr 3e-3, weight decay 0.01, no decay on norms
/// and biases), 100 warm-up iterations from 0.1, poly decay to 1e-5, batch 8, random flips,
/// six evaluations over the run on the whole validation split.
pub fn demo_train_config(
    data: &Path,
    output_dir: &Path,
    iterations: usize,
) -> segkit::train::TrainConfig {
    use segkit::train::config::*;
    TrainConfig {
        model: ModelSpec::Preset {
            name: DEMO_PRESET.to_string(),
        },
        dataset: DatasetConfig::Custom {
            root: data.to_path_buf(),
            train_split: "train".into(),
            val_split: "val".into(),
            ignore_index: 255,
        },
        pipeline: vec![TransformConfig::RandomFlip {
            prob: 0.5,
            direction: segkit::data::augment::FlipDirection::Horizontal,
        }],
        optimizer: OptimizerConfig::AdamW {
            lr: 3e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            decay_norm_and_bias: false,
        },
        paramwise_cfg: None,
        clip_grad: None,
        schedule: ScheduleConfig {
            policy: LrPolicy::Poly {
                power: 0.9,
                min_lr: 1e-5,
            },
            warmup: Some(WarmupConfig {
                iters: 100,
                start_factor: 0.1,
            }),
        },
        iterations,
        batch_size: 8,
        accumulate: 1,
        aux_loss_weight: Some(0.4),
        eval_interval: (iterations / 6).max(1),
        checkpoint_interval: 0,
        log_interval: 10,
        eval_batch_size: Some(8),
        val_limit: None,
        seed: 0,
        load_from: None,
        pretrained: Vec::new(),
        output_dir: output_dir.to_path_buf(),
        source: None,
    }
}

/// Writes a value as pretty JSON (atomically).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> TrainResult<()> {
    let s = serde_json::to_string_pretty(value).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    segkit::train::checkpoint::write_atomic(path, format!("{s}\n").as_bytes())
}

/// What `crates/segkit/demo/metrics.json` records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DemoReport {
    /// The preset.
    pub preset: String,
    /// The training config of the run.
    pub train_config: segkit::train::TrainConfig,
    /// Training canvases.
    pub train_canvases: usize,
    /// Loss of the last iteration.
    pub final_loss: f64,
    /// Mean loss over the last 100 iterations.
    pub final_loss_mean100: f64,
    /// Iterations per second of the run.
    pub iters_per_sec: f64,
    /// Wall-clock seconds of the training loop (evaluations included).
    pub train_seconds: f64,
    /// Size of `model.safetensors` in bytes.
    pub model_bytes: u64,
    /// Number of model parameters (BatchNorm statistics excluded).
    pub parameters: usize,
    /// Held-out validation results (canvases of Fashion-MNIST's `t10k` items).
    pub val: segkit::train::EvalResult,
    /// Results on the committed subset `tests/fixtures/demo_val` (its first canvases), which
    /// `segkit eval` reproduces exactly.
    pub fixture_subset: segkit::train::EvalResult,
}

/// The logged training loss and validation mIoU of a run's `metrics.jsonl`:
/// `(iteration, loss)` and `(iteration, mIoU)` points.
#[allow(clippy::type_complexity)]
pub fn read_curve(path: &Path) -> TrainResult<(Vec<(f64, f64)>, Vec<(f64, f64)>)> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (mut loss, mut miou) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let it = v.get("iter").and_then(|i| i.as_f64()).unwrap_or(0.0);
        match v.get("type").and_then(|t| t.as_str()) {
            Some("train") => {
                if let Some(l) = v.get("loss").and_then(|l| l.as_f64()) {
                    loss.push((it, l));
                }
            }
            Some("val") => {
                if let Some(m) = v.get("mIoU").and_then(|l| l.as_f64()) {
                    miou.push((it, m));
                }
            }
            _ => {}
        }
    }
    Ok((loss, miou))
}

fn copy(from: &Path, to: &Path) -> TrainResult<()> {
    let bytes = std::fs::read(from).map_err(|e| TrainError::Io {
        path: from.to_path_buf(),
        reason: e.to_string(),
    })?;
    segkit::train::checkpoint::write_atomic(to, &bytes)
}

/// The demo dataset at `root` in the `custom` layout (splits `train` and `val`).
fn custom_dataset(root: &Path) -> segkit::train::DatasetConfig {
    segkit::train::DatasetConfig::Custom {
        root: root.to_path_buf(),
        train_split: "train".into(),
        val_split: "val".into(),
        ignore_index: 255,
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Copies the run's model and config files from `run` to `out`.
fn copy_model_files(run: &Path, out: &Path) -> TrainResult<()> {
    use segkit::train::trainer::{CONFIG_FILE, MODEL_FILE};
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    copy(&run.join(MODEL_FILE), &out.join(MODEL_FILE))?;
    copy(&run.join(CONFIG_FILE), &out.join(CONFIG_FILE))
}

/// Replaces the committed subset under `fixture` with the first `n` canvases (images and
/// annotations) of `data`'s validation split.
fn copy_fixture_subset(data: &Path, fixture: &Path, n: usize) -> TrainResult<()> {
    for sub in ["images", "annotations"] {
        let dir = fixture.join(sub).join("val");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for i in 0..n {
            let name = format!("{i:05}.png");
            copy(&data.join(sub).join("val").join(&name), &dir.join(&name))?;
        }
    }
    Ok(())
}

/// The run's `summary.json` (`Null` when it cannot be read).
fn read_summary(run: &Path) -> serde_json::Value {
    std::fs::read_to_string(run.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A number of the run's summary (NaN when it is missing).
fn summary_f64(summary: &serde_json::Value, key: &str) -> f64 {
    summary
        .get(key)
        .and_then(|v| v.as_f64())
        .unwrap_or(f64::NAN)
}

/// The last `elapsed` seconds the log at `path` records (NaN when there is none).
fn elapsed_seconds(path: &Path) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| v.get("elapsed").and_then(|e| e.as_f64()))
        })
        .unwrap_or(f64::NAN)
}

/// The number of parameters in the checkpoint at `path`, BatchNorm statistics excluded.
fn parameter_count(path: &Path) -> TrainResult<usize> {
    let weights = segkit::core::checkpoint::StateDict::load(path)?;
    Ok(weights
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(_, t)| t.elem_count())
        .sum())
}

/// `cfg` with its run's paths relative to the repository (`out/../..`) when they are inside it.
fn repo_relative(cfg: &segkit::train::TrainConfig, out: &Path) -> segkit::train::TrainConfig {
    let mut recorded = cfg.clone();
    if let Some(repo) = out.parent().and_then(Path::parent) {
        let rel = |p: &mut PathBuf| {
            if let Ok(r) = p.strip_prefix(repo) {
                *p = r.to_path_buf();
            }
        };
        rel(&mut recorded.output_dir);
        if let segkit::train::DatasetConfig::Custom { root, .. } = &mut recorded.dataset {
            rel(root);
        }
    }
    recorded
}

/// After the demo run of `cfg`: copies the model and its config to `out`, evaluates it on the
/// whole validation split and on its first `n_fixture` canvases (copied to `fixture`), and
/// writes `out/metrics.json` and `out/curve.png`.
pub fn finish_demo(
    cfg: &segkit::train::TrainConfig,
    data: &Path,
    out: &Path,
    fixture: &Path,
    n_fixture: usize,
) -> TrainResult<DemoReport> {
    use segkit::train::trainer::{LOG_FILE, MODEL_FILE};
    use segkit::train::{evaluate, open_dataset, Split};
    let run = &cfg.output_dir;
    copy_model_files(run, out)?;
    let model_cfg = demo_config();
    let model = segkit::EncoderDecoder::from_checkpoint(
        &model_cfg,
        out.join(MODEL_FILE),
        &candle_core::Device::Cpu,
    )?;
    let meta = &model_cfg.meta;
    let val = open_dataset(&custom_dataset(data), Split::Val, meta)?;
    let val_result = evaluate(&model, val.as_ref(), 8, |_, _| {})?;
    // The committed subset: the first canvases of the validation split.
    copy_fixture_subset(data, fixture, n_fixture)?;
    let sub = open_dataset(&custom_dataset(fixture), Split::Val, meta)?;
    let sub_result = evaluate(&model, sub.as_ref(), 8, |_, _| {})?;
    let (loss, miou) = read_curve(&run.join(LOG_FILE))?;
    segkit::train::plot::save_png(
        &segkit::train::plot::training_curve(&loss, &miou),
        &out.join("curve.png"),
    )?;
    let summary = read_summary(run);
    let last: Vec<f64> = loss.iter().rev().take(10).map(|p| p.1).collect();
    let secs = elapsed_seconds(&run.join(LOG_FILE));
    let parameters = parameter_count(&out.join(MODEL_FILE))?;
    let report = DemoReport {
        preset: DEMO_PRESET.to_string(),
        train_config: repo_relative(cfg, out),
        train_canvases: open_dataset(&custom_dataset(data), Split::Train, meta)?.len(),
        final_loss: summary_f64(&summary, "final_loss"),
        final_loss_mean100: last.iter().sum::<f64>() / last.len().max(1) as f64,
        iters_per_sec: summary_f64(&summary, "iters_per_sec"),
        train_seconds: secs,
        model_bytes: std::fs::metadata(out.join(MODEL_FILE))
            .map(|m| m.len())
            .unwrap_or(0),
        parameters,
        val: val_result,
        fixture_subset: sub_result,
    };
    write_json(&out.join("metrics.json"), &report)?;
    Ok(report)
}
