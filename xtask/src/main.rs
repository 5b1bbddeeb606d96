//! Maintainer tasks for segkit: `cargo xtask <task>`.
//!
//! - `fixtures`: make the Python venv (git-ignored `.venv/`), install the pinned reference
//!   implementations (tests/parity/requirements.txt) and regenerate every parity fixture by
//!   running `tests/parity/gen_*.py`.
//! - `bench`: segkit and PyTorch side by side, same shapes, same thread count, each case in a
//!   fresh process, medians and the segkit/PyTorch ratios printed.
//! - `convert`: an mmseg checkpoint -> safetensors, checked against a segkit preset.
//! - `download NAME..`: a checkpoint of `weights/registry.toml` into `weights/NAME/` (mmseg
//!   model-zoo URLs with resume and sha256; Hugging Face repos through the hub cache), with
//!   `--convert` running the entry's converter.
//! - `list`: the registry with what is present and verified.
//! - `make-demo-data`: the demo dataset (Fashion-MNIST canvases) into `target/demo-data`.
//! - `train-demo`: trains segkit's demo model on this CPU into `crates/segkit/demo/`.
//! - `gscnn-demo`: Gated-SCNN with / without the shape stream on the demo canvases
//!   (docs/gscnn_training.md).
//! - `panet-demo`: PANet's demo instance model (`segkit-demo-panet`) trained, evaluated (box
//!   and mask AP) and written to `crates/segkit/demo/panet/` (docs/panet.md).
//! - `pssl-demo`: PSSL end to end (classifier ensemble, labels, pre-training vs baselines) on
//!   Fashion-MNIST single-item images and the demo canvases (docs/pssl_demo.md).
//! - `oneformer-demo`: OneFormer trained jointly and semantic-only on the demo canvases' COCO
//!   panoptic ground truth, PQ / AP / mIoU of both (docs/TRAINING.md).
//!
//! Only xtask touches the network (PyPI through pip, the model zoo, the Hugging Face hub).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod convert;
mod demo;
mod demo_data;
mod download;
mod fixtures;
mod gscnn_demo;
mod list;
mod oneformer_demo;
mod panet_demo;
mod pssl_demo;
mod registry;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, failing with its name when it fails.
fn run_cmd(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let st = cmd
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {st}"))
    }
}

/// The venv's python, creating the venv and installing the pinned requirements if needed.
fn python(install: bool) -> Result<PathBuf, String> {
    let root = root();
    let venv = root.join(".venv");
    let py = venv.join("bin").join("python");
    if !py.exists() {
        eprintln!("xtask: creating {}", venv.display());
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    if install || !venv.join(".segkit-installed").exists() {
        let req = root.join("tests/parity/requirements.txt");
        eprintln!("xtask: installing {}", req.display());
        run_cmd(
            Command::new(&py)
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(&req),
        )?;
        std::fs::write(venv.join(".segkit-installed"), b"ok")
            .map_err(|e| format!("cannot mark venv: {e}"))?;
    }
    Ok(py)
}

const USAGE: &str = "usage: cargo xtask <list | download NAME.. [--force] [--convert] | \
                     convert IN.pth OUT.safetensors --preset NAME | fixtures [NAME..] | \
                     bench [--runs N] [--heavy-runs N] [--train-runs N] [--size S] [--batch B] \
                     [--threads T] [--settle SECONDS] [--cases a,b,..] | make-demo-data [--out DIR] | \
                     train-demo [--iterations N] | gscnn-demo [--iterations N] | \
                     panet-demo [--iterations N] .. | oneformer-demo [--iterations N] .. | \
                     pssl-demo [--train N] [--pretrain-iters N] [--finetune-iters N] ..>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("fixtures") => fixtures::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("convert") => convert::run(&args[1..]),
        Some("download") => download::run(&args[1..]),
        Some("list") => list::run(&args[1..]),
        Some("make-demo-data") => demo::run_make_data(&args[1..]),
        Some("train-demo") => demo::run_train(&args[1..]),
        Some("gscnn-demo") => gscnn_demo::run(&args[1..]),
        Some("pssl-demo") => pssl_demo::run(&args[1..]),
        Some("panet-demo") => panet_demo::run(&args[1..]),
        Some("oneformer-demo") => oneformer_demo::run(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
