//! `segkit`: the command-line tool.
//!
//! - `segkit dump`: run a preset (or a JSON config) with a checkpoint on an input tensor and
//!   write every output to a safetensors file — the tool for checking a port against PyTorch.
//! - `segkit bench`: time one benchmark case (used by `cargo xtask bench`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod dump;
mod error;
mod presets;

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
    /// Run a model on an input tensor and write every output to a safetensors file.
    Dump(dump::DumpArgs),
    /// Time one benchmark case and print a JSON line (see `cargo xtask bench`).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Dump(a) => dump::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
