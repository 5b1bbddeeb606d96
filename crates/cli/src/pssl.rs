//! `segkit pssl generate`: PSSL pseudo labels from an ensemble of classifiers' explanations
//! (see `docs/pssl.md`). Resumable (labels already written are skipped, each written
//! atomically), parallel over images, with a progress bar.

use std::path::PathBuf;

use candle_core::Device;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use segkit::train::pssl::explain::Explainer;
use segkit::train::pssl::generate::{generate, load_classifier, read_jobs};
use segkit::train::pssl::{ChannelReduce, IntegratedGradients, NoiseLevel, SmoothGrad};

use crate::CliError;

/// `segkit pssl ...`.
#[derive(Args, Debug)]
pub struct PsslArgs {
    #[command(subcommand)]
    command: PsslCommand,
}

#[derive(Subcommand, Debug)]
enum PsslCommand {
    /// Write one label PNG (consensus deciles 0..9 + the class in a `pssl-class` text chunk)
    /// per image of the labels file.
    Generate(GenerateArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Method {
    Smoothgrad,
    IntegratedGradients,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Reduce {
    Max,
    Sum,
}

/// Arguments of `segkit pssl generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Classifier directories (`config.json` with `"type": "Classifier"` + `model.safetensors`).
    #[arg(long, num_args = 1.., required = true)]
    models: Vec<PathBuf>,
    /// The image directory.
    #[arg(long)]
    images: PathBuf,
    /// The labels file: `NAME CLASS` per line, NAME relative to --images.
    #[arg(long)]
    labels: PathBuf,
    /// The output directory (labels `NAME` with extension `.png`).
    #[arg(long)]
    out: PathBuf,
    /// The explanation method.
    #[arg(long, value_enum, default_value_t = Method::Smoothgrad)]
    method: Method,
    /// SmoothGrad's noisy copies per image / integrated gradients' steps (>= 1).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    samples: u64,
    /// SmoothGrad's noise: a fraction of each image's (normalised) value range.
    #[arg(long, default_value_t = 0.15)]
    noise: f64,
    /// Noisy copies per forward / backward pass (>= 1).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Channel reduction of the attribution.
    #[arg(long, value_enum, default_value_t = Reduce::Max)]
    reduce: Reduce,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Runs `segkit pssl ...`.
pub fn run(a: PsslArgs) -> Result<(), CliError> {
    match a.command {
        PsslCommand::Generate(g) => run_generate(g),
    }
}

fn run_generate(a: GenerateArgs) -> Result<(), CliError> {
    if !(a.noise >= 0.0 && a.noise.is_finite()) {
        return Err(CliError::Usage(format!(
            "--noise must be >= 0, got {}",
            a.noise
        )));
    }
    for input in a.models.iter().chain([&a.images, &a.labels]) {
        if a.out == *input {
            return Err(CliError::WouldOverwrite {
                output: a.out.clone(),
                input: input.clone(),
                role: "input".into(),
            });
        }
    }
    let dev = Device::Cpu;
    let tr = |e: segkit::train::TrainError| CliError::from(segkit::Error::from(e));
    let models = a
        .models
        .iter()
        .map(|d| load_classifier(d, &dev))
        .collect::<Result<Vec<_>, _>>()
        .map_err(tr)?;
    let jobs = read_jobs(&a.labels, &a.images).map_err(tr)?;
    let explainer: Box<dyn Explainer> = match a.method {
        Method::Smoothgrad => Box::new(SmoothGrad {
            samples: a.samples as usize,
            noise: NoiseLevel::Fraction(a.noise),
            batch: a.batch as usize,
        }),
        Method::IntegratedGradients => Box::new(IntegratedGradients {
            steps: a.samples as usize,
        }),
    };
    let reduce = match a.reduce {
        Reduce::Max => ChannelReduce::Max,
        Reduce::Sum => ChannelReduce::Sum,
    };
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(jobs.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
        {
            b.set_style(style);
        }
        b
    };
    let progress = |done: usize, _total: usize| bar.set_position(done as u64);
    let (written, skipped) = generate(
        &models,
        explainer.as_ref(),
        reduce,
        &jobs,
        &a.out,
        &dev,
        &progress,
    )
    .map_err(tr)?;
    bar.finish_and_clear();
    if !a.quiet {
        eprintln!(
            "{written} labels written, {skipped} already there, in {}",
            a.out.display()
        );
    }
    Ok(())
}
