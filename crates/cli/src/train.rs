//! `segkit train` and `segkit eval`: the training loop and the evaluation of weights on a
//! dataset, both driven by a training config file (see `docs/TRAINING.md`). `segkit train`
//! trains every model family of segkit-train's `Trainer` (encoder-decoder segmentors,
//! Gated-SCNN: `docs/gscnn_training.md`, classifiers, OneFormer, PANet); `segkit eval`
//! evaluates trained weights of each of them on the config's dataset.

use std::path::PathBuf;

use candle_core::Device;
use clap::Args;
use segkit::train::data::Limited;
use segkit::train::{evaluate, evaluate_weights, open_dataset, Split, TrainConfig, Trainer};
use segkit::EncoderDecoder;

use crate::CliError;

/// Arguments of `segkit train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The training config (JSON; relative paths in it are relative to its folder).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the checkpoint in the config's output directory.
    #[arg(long)]
    resume: bool,
    /// Stop after this many iterations in total (the schedule still spans the config's
    /// `iterations`); the checkpoint written there resumes the run.
    #[arg(long)]
    stop_at: Option<usize>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Start afresh even though the output directory holds an earlier run (its checkpoint,
    /// weights and metrics are replaced). Without it such a directory is refused.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
}

/// Arguments of `segkit eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The training config naming the model and the dataset.
    #[arg(long)]
    config: PathBuf,
    /// The weights: a `model.safetensors` written by `segkit train`, or any checkpoint the
    /// model loads (mmseg `.pth`, safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// The split to evaluate. Default: the dataset's validation split.
    #[arg(long)]
    split: Option<String>,
    /// Evaluate only the first N images (N >= 1).
    #[arg(long, value_parser = at_least_one())]
    limit: Option<usize>,
    /// Images per batch (>= 1).
    #[arg(long, default_value_t = 8, value_parser = at_least_one())]
    batch_size: usize,
    /// Where to write the results as JSON. Default: `eval.json` in the config's output
    /// directory.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A count that must be at least 1 (`--batch-size 0` is an error, not a silent 1).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// candle's element-wise CPU pool spins after every op by default, which next to segkit's rayon
/// kernels wastes a small machine's time: segkit-core makes its workers park instead unless the
/// user set `CANDLE_BARRIER_POOL_SPIN_LIMIT` (`segkit_core::runtime`, applied before `main`;
/// this call only makes the dependency explicit).
fn parking_candle_pool() {
    segkit_core::runtime::configure_cpu_threads();
}

fn load_config(path: &PathBuf) -> Result<TrainConfig, CliError> {
    TrainConfig::load(path).map_err(|e| CliError::Usage(e.to_string()))
}

fn train_err(e: segkit::train::TrainError) -> CliError {
    CliError::Usage(e.to_string())
}

/// Runs `segkit train`.
pub fn run_train(a: TrainArgs) -> Result<(), CliError> {
    parking_candle_pool();
    let cfg = load_config(&a.config)?;
    if !a.resume && !a.overwrite {
        let earlier: Vec<&str> = [
            segkit::train::trainer::CHECKPOINT_FILE,
            segkit::train::trainer::MODEL_FILE,
        ]
        .into_iter()
        .filter(|f| cfg.output_dir.join(f).exists())
        .collect();
        if !earlier.is_empty() {
            return Err(CliError::Usage(format!(
                "output directory {} holds an earlier run ({}): continue it with --resume, \
                 replace it with --overwrite, or choose another output_dir in {}",
                cfg.output_dir.display(),
                earlier.join(", "),
                a.config.display()
            )));
        }
    }
    let trainer = if a.resume {
        Trainer::resume(cfg)
    } else {
        Trainer::new(cfg)
    };
    let mut trainer = trainer.map_err(train_err)?.quiet(a.quiet);
    match a.stop_at {
        Some(n) if n < trainer.config().iterations => {
            trainer.train_until(n).map_err(train_err)?;
            eprintln!(
                "stopped at iteration {}; continue with --resume",
                trainer.iteration()
            );
        }
        _ => {
            let s = trainer.run().map_err(train_err)?;
            // A Gated-SCNN's boundary F-scores (`bF_...`), after the mIoU.
            let extra: String = s
                .eval
                .extra
                .iter()
                .map(|(k, v)| format!(" {k} {:.2}", 100.0 * v))
                .collect();
            eprintln!(
                "done: {} iterations, final loss {:.4}, {:.2} it/s; val aAcc {:.2} mIoU \
                 {:.2}{extra}; weights {}",
                s.iterations,
                s.final_loss,
                s.iters_per_sec,
                100.0 * s.eval.aacc,
                100.0 * s.eval.miou,
                s.model_path.display()
            );
        }
    }
    Ok(())
}

/// Runs `segkit eval`.
pub fn run_eval(a: EvalArgs) -> Result<(), CliError> {
    parking_candle_pool();
    let cfg = load_config(&a.config)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| cfg.output_dir.join("eval.json"));
    let inputs = [
        ("--config", a.config.as_path()),
        ("--weights", a.weights.as_path()),
    ];
    crate::outputs::refuse_overwriting_inputs(&out, &inputs)?;
    let split = match &a.split {
        Some(s) => Split::Named(s),
        None => Split::Val,
    };
    let r = match cfg.segmentor_config() {
        // Encoder-decoders: `EncoderDecoder::from_checkpoint` also reads mmseg checkpoints.
        Ok(model_cfg) => {
            let model = EncoderDecoder::from_checkpoint(&model_cfg, &a.weights, &Device::Cpu)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let mut dataset =
                open_dataset(&cfg.dataset, split, &model_cfg.meta).map_err(train_err)?;
            if let Some(n) = a.limit {
                dataset = Box::new(Limited::new(dataset, n));
            }
            evaluate(&model, dataset.as_ref(), a.batch_size, |_, _| {}).map_err(train_err)?
        }
        // Every other family the trainer trains: built and evaluated as in training.
        Err(_) => {
            evaluate_weights(&cfg, &a.weights, split, a.limit, a.batch_size).map_err(train_err)?
        }
    };
    print!("{}", r.table());
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let json = serde_json::to_string_pretty(&r).map_err(|e| CliError::Usage(e.to_string()))?;
    segkit::train::checkpoint::write_atomic(&out, format!("{json}\n").as_bytes())
        .map_err(train_err)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
