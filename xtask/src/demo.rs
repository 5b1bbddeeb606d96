//! `cargo xtask make-demo-data` and `cargo xtask train-demo`: segkit's demo model, trained
//! from scratch on this machine's CPU.
//!
//! - `make-demo-data [--out DIR] [--train N] [--val N]`: composes the Fashion-MNIST canvas
//!   dataset (`segkit::train::demo`) from the Debian package `dataset-fashion-mnist` into
//!   `target/demo-data` (git-ignored): `images|annotations|instances/{train,val}/NNNNN.png`,
//!   4000 training canvases from Fashion-MNIST's training items and 500 validation canvases
//!   from its held-out `t10k` items.
//! - `train-demo [--iterations N] [--data DIR] [--work DIR]`: builds the `segkit` binary, runs
//!   `nice segkit train` on the demo preset (the data is made first if missing), then writes
//!   `crates/segkit/demo/{model.safetensors, config.json, metrics.json, curve.png}` and the
//!   16-canvas validation subset `tests/fixtures/demo_val/` with its mIoU recorded in
//!   `metrics.json` (which `segkit eval` must reproduce exactly; see crates/cli/tests/train.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::demo_data::{self as demo, DemoReport};

const USAGE_DATA: &str = "usage: cargo xtask make-demo-data [--out DIR] [--train N] [--val N]";
const USAGE_TRAIN: &str =
    "usage: cargo xtask train-demo [--iterations N] [--data DIR] [--work DIR]";

/// Training canvases.
const N_TRAIN: usize = 4000;
/// Validation canvases.
const N_VAL: usize = 500;
/// Canvases of the committed validation subset.
const N_FIXTURE: usize = 16;
/// Iterations of the demo run (batch 8): about 20 minutes on 2 cores (2.8 it/s measured).
const ITERATIONS: usize = 3200;

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a String, String> {
    it.next().ok_or_else(|| format!("{flag} needs a value"))
}

fn number(s: &str, flag: &str) -> Result<usize, String> {
    s.parse()
        .map_err(|_| format!("{flag} needs a number, got `{s}`"))
}

fn fashion_dir() -> Result<PathBuf, String> {
    let dir = PathBuf::from(demo::FASHION_MNIST_DIR);
    let needed = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ];
    if let Some(missing) = needed.iter().find(|f| !dir.join(f).is_file()) {
        return Err(format!(
            "Fashion-MNIST not found ({} is missing); install it with:\n    {}",
            dir.join(missing).display(),
            demo::FASHION_MNIST_INSTALL
        ));
    }
    Ok(dir)
}

fn make_data(out: &Path, n_train: usize, n_val: usize) -> Result<(), String> {
    let src = fashion_dir()?;
    eprintln!(
        "xtask: composing {n_train} training and {n_val} validation canvases into {}",
        out.display()
    );
    let t = std::time::Instant::now();
    demo::make_demo_data(&src, out, n_train, n_val).map_err(|e| e.to_string())?;
    eprintln!("xtask: done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `cargo xtask make-demo-data`.
pub fn run_make_data(args: &[String]) -> Result<(), String> {
    let mut out = crate::root().join("target/demo-data");
    let (mut n_train, mut n_val) = (N_TRAIN, N_VAL);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(value(&mut it, a)?),
            "--train" => n_train = number(value(&mut it, a)?, a)?,
            "--val" => n_val = number(value(&mut it, a)?, a)?,
            s => return Err(format!("unknown argument `{s}`; {USAGE_DATA}")),
        }
    }
    make_data(&out, n_train, n_val)
}

/// Runs `cargo xtask train-demo`.
pub fn run_train(args: &[String]) -> Result<(), String> {
    // candle's element-wise pool parks between ops (segkit_core::runtime; already applied
    // before `main` on Linux, this call makes the dependency explicit).
    segkit::core::runtime::configure_cpu_threads();
    let root = crate::root();
    let mut data = root.join("target/demo-data");
    let mut work = root.join("target/demo-train");
    let mut iterations = ITERATIONS;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => iterations = number(value(&mut it, a)?, a)?,
            "--data" => data = PathBuf::from(value(&mut it, a)?),
            "--work" => work = PathBuf::from(value(&mut it, a)?),
            s => return Err(format!("unknown argument `{s}`; {USAGE_TRAIN}")),
        }
    }
    if !data.join("images/val").is_dir() || !data.join("images/train").is_dir() {
        make_data(&data, N_TRAIN, N_VAL)?;
    }
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let config = work.join("train.json");
    let cfg = demo::demo_train_config(&data, &work.join("run"), iterations);
    demo::write_json(&config, &cfg).map_err(|e| e.to_string())?;
    eprintln!("xtask: building the segkit binary");
    crate::run_cmd(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "segkit-cli",
        "--bin",
        "segkit",
    ]))?;
    let exe = root.join("target/release/segkit");
    eprintln!(
        "xtask: training ({iterations} iterations) with {}",
        config.display()
    );
    crate::run_cmd(
        Command::new("nice")
            .args(["-n", "10"])
            .arg(&exe)
            .args(["train", "--config"])
            .arg(&config),
    )?;
    let out = root.join("crates/segkit/demo");
    let fixture = root.join("tests/fixtures/demo_val");
    let report: DemoReport =
        demo::finish_demo(&cfg, &data, &out, &fixture, N_FIXTURE).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: held-out mIoU {:.2} (aAcc {:.2}) on {} validation canvases; fixture subset mIoU \
         {:.2}; wrote {}",
        100.0 * report.val.miou,
        100.0 * report.val.aacc,
        report.val.num_images,
        100.0 * report.fixture_subset.miou,
        out.display()
    );
    Ok(())
}
