//! `segkit`: the command-line tool.
//!
//! - `segkit infer`: segment images with a model (default `segkit-demo`) and write class
//!   maps, colour maps, overlays and JSON summaries.
//! - `segkit dump`: run a preset (or a JSON config) with a checkpoint on an input tensor and
//!   write every output to a safetensors file — the tool for checking a port against PyTorch.
//! - `segkit bench`: time one benchmark case (used by `cargo xtask bench`).
//! - `segkit train`: train a segmentor from a training config (`docs/TRAINING.md`).
//! - `segkit eval`: evaluate weights on a dataset (aAcc, mIoU, per-class IoU; JSON).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod alloc;
mod bench;
mod dump;
mod error;
mod infer;
mod infer_outputs;
mod outputs;
mod presets;
mod pssl;
mod train;

pub use error::CliError;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "segkit",
    version,
    about = "Image segmentation building blocks on candle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment images: class map, colour map, overlay and JSON (with COCO RLE) per image.
    Infer(infer::InferArgs),
    /// Run a model on an input tensor and write every output to a safetensors file.
    Dump(dump::DumpArgs),
    /// Time one benchmark case and print a JSON line (see `cargo xtask bench`).
    Bench(bench::BenchArgs),
    /// Train a segmentor from a training config (JSON).
    Train(train::TrainArgs),
    /// Evaluate weights on a dataset: aAcc, mIoU, per-class IoU (printed and written as JSON).
    Eval(train::EvalArgs),
    /// PSSL pseudo labels from an ensemble of classifiers' explanations.
    Pssl(pssl::PsslArgs),
}

/// SIGINT / SIGTERM: wait for a file write in progress to finish (no temporary file is
/// left, the target is either the new file or the previous one), then exit with 128 + the
/// signal's number, as the default action's status would read in a shell.
fn exit_cleanly_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return; // the default actions stay
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _no_more_writes = segkit::train::checkpoint::block_writes();
            eprintln!("interrupted (signal {sig}); no write was left half-done");
            std::process::exit(128 + sig);
        }
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exit_cleanly_on_signals();
    // Inference keeps freed memory longer than training does (see `alloc`).
    let inference = match &cli.command {
        Command::Infer(_) | Command::Dump(_) | Command::Eval(_) => true,
        Command::Bench(a) => !bench::is_training_case(a),
        Command::Train(_) | Command::Pssl(_) => false,
    };
    if inference {
        alloc::tune_for_inference();
    }
    let r = match cli.command {
        Command::Infer(a) => infer::run(a),
        Command::Dump(a) => dump::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run_train(a),
        Command::Eval(a) => train::run_eval(a),
        Command::Pssl(a) => pssl::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every message of the chain once (a checkpoint error: the model and file, then
            // the key that did not fit).
            eprintln!("error: {}", segkit_core::error::Report(&e));
            ExitCode::FAILURE
        }
    }
}
