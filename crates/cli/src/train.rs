//! `segkit train` and `segkit eval`: the training loop and the evaluation of weights on a
//! dataset, both driven by a training config file (see `docs/TRAINING.md`).

use std::path::PathBuf;

use candle_core::Device;
use clap::Args;
use segkit::train::data::Limited;
use segkit::train::{evaluate, open_dataset, Split, TrainConfig, Trainer};
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
    /// Evaluate only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Where to write the results as JSON. Default: `eval.json` in the config's output
    /// directory.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// candle's element-wise CPU ops spin on their own thread pool, which next to segkit's rayon
/// kernels wastes most of a small machine's time: keep them on the calling thread unless the
/// user chose otherwise. Called before any tensor op (the pool is created lazily).
fn single_threaded_candle_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn load_config(path: &PathBuf) -> Result<TrainConfig, CliError> {
    TrainConfig::load(path).map_err(|e| CliError::Usage(e.to_string()))
}

fn train_err(e: segkit::train::TrainError) -> CliError {
    CliError::Usage(e.to_string())
}

/// Runs `segkit train`.
pub fn run_train(a: TrainArgs) -> Result<(), CliError> {
    single_threaded_candle_pool();
    let cfg = load_config(&a.config)?;
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
            eprintln!(
                "done: {} iterations, final loss {:.4}, {:.2} it/s; val aAcc {:.2} mIoU {:.2}; \
                 weights {}",
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
    single_threaded_candle_pool();
    let cfg = load_config(&a.config)?;
    let model_cfg = cfg.segmentor_config().map_err(train_err)?;
    let model = EncoderDecoder::from_checkpoint(&model_cfg, &a.weights, &Device::Cpu)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let split = match &a.split {
        Some(s) => Split::Named(s),
        None => Split::Val,
    };
    let mut dataset = open_dataset(&cfg.dataset, split, &model_cfg.meta).map_err(train_err)?;
    if let Some(n) = a.limit {
        dataset = Box::new(Limited::new(dataset, n));
    }
    let r = evaluate(&model, dataset.as_ref(), a.batch_size, |_, _| {}).map_err(train_err)?;
    print!("{}", r.table());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let out = a.out.unwrap_or_else(|| cfg.output_dir.join("eval.json"));
    let json = serde_json::to_string_pretty(&r).map_err(|e| CliError::Usage(e.to_string()))?;
    segkit::train::checkpoint::write_atomic(&out, format!("{json}\n").as_bytes())
        .map_err(train_err)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
