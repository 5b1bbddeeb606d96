//! `cargo xtask bench`: segkit vs PyTorch, side by side, in one run.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{python, root, run_cmd};

mod groups;
mod peak;
mod train;
use train::TrainArgs;

const CASES: &[&str] = &[
    "resnet50",
    "resnet50_os8",
    "danet_r50-d8",
    "pspnet_r50-d8",
    "fastfcn_jpu_psp",
    "fastfcn_jpu_aspp",
    "fastfcn_jpu_enc",
    "swin_t",
    "pixel_decoder",
    "oneformer_swin_t",
    "gscnn_wrn38",
    "gscnn_r101-d8",
    "conv3x3_256",
    "resize_bilinear",
    "grid_sample",
    "roi_align",
    "panet_r50_fpn",
    "torchvision_maskrcnn",
    "e2e_pspnet_cityscapes",
    "e2e_oneformer_panoptic",
    "resnet50_b8",
    "pspnet_r50-d8_b8",
    "train_pspnet_r50-d8",
    "train_danet_r50-d8",
    "train_fastfcn_r50-d32_jpu_psp",
    "train_demo_b8",
    "train_pspnet_r50-d8_cityscapes",
    "train_oneformer_swin_t",
];

/// Seconds to wait before starting each measured process (`--settle`, default 5). A process
/// started right after a large one exits runs slower on these VMs: ResNet-50 (segkit, median of
/// 5) right after a 1.6 GB process exited took 261-381 ms, 5 s later 258-342 ms, slower in 8 of
/// 10 alternating pairs, ~10% on average (docs/PERFORMANCE.md, tenth section). Without the
/// pause every segkit case started right after the previous case's PyTorch process (0.9-3 GB).
static SETTLE_SECS: AtomicU64 = AtomicU64::new(5);

fn settle() {
    std::thread::sleep(Duration::from_secs(SETTLE_SECS.load(Ordering::Relaxed)));
}

/// What every table's rows share: the thread count and the two sides' programs.
pub struct Sides<'a> {
    /// `--threads`, given to both sides.
    pub threads: &'a str,
    /// `target/release/segkit`.
    pub segkit: &'a Path,
    /// The venv's Python.
    pub py: &'a Path,
    /// The repository root (the PyTorch scripts live under `tests/parity/`).
    pub root: &'a Path,
}

impl Sides<'_> {
    /// A PyTorch-side script of `tests/parity/`.
    pub fn script(&self, name: &str) -> std::path::PathBuf {
        self.root.join("tests/parity").join(name)
    }
}

fn field(json: &str, key: &str) -> Option<f64> {
    let k = format!("\"{key}\":");
    let i = json.find(&k)? + k.len();
    let rest = json[i..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Runs one case's segkit side and PyTorch side, each with `threads` threads, and returns the
/// JSON line each printed last; when either printed none, prints a failure row of a
/// `columns`-column table (the case, both errors, then blank cells) and returns `None`.
fn run_sides(
    case: &str,
    segkit: &mut Command,
    torch: &mut Command,
    threads: &str,
    columns: usize,
) -> Result<Option<(String, String)>, String> {
    settle();
    let s = segkit
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .map_err(|e| format!("segkit bench {case}: {e}"))?;
    settle();
    let t = torch
        .env("SEGKIT_BENCH_THREADS", threads)
        .env("OMP_NUM_THREADS", threads)
        .env("MKL_NUM_THREADS", threads)
        .output()
        .map_err(|e| format!("torch bench {case}: {e}"))?;
    match (last_json(&s.stdout), last_json(&t.stdout)) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        _ => {
            println!(
                "| {case} | failed: {} | {} |{}",
                String::from_utf8_lossy(&s.stderr).trim(),
                String::from_utf8_lossy(&t.stderr)
                    .lines()
                    .last()
                    .unwrap_or(""),
                " |".repeat(columns.saturating_sub(3))
            );
            Ok(None)
        }
    }
}

fn last_json(out: &[u8]) -> Option<String> {
    String::from_utf8_lossy(out)
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .map(str::to_string)
}

/// Cases whose PyTorch side runs another model than segkit's (torchvision's Mask R-CNN next to
/// segkit's PANet): their work is PyTorch's only.
const OTHER_MODEL: &[&str] = &["torchvision_maskrcnn"];

/// The last four cells of an inference row: the case's work (counted on the PyTorch side),
/// segkit's rate and both sides' share of the FP32 peak (`-` where the work was not counted
/// or is under 0.5 GFLOP, as for the resampling ops, whose time is memory traffic).
fn work_cells(gflop: Option<f64>, (sm, tm): (f64, f64), peak: Option<f64>, case: &str) -> String {
    let Some(g) = gflop.filter(|&g| g >= 0.5) else {
        return "- | - | - | -".to_string();
    };
    let share = |ms: f64| match peak {
        Some(p) if p > 0.0 => format!("{:.0}%", 100.0 * g / (ms / 1e3) / p),
        _ => "-".to_string(),
    };
    if OTHER_MODEL.contains(&case) {
        return format!("{g:.1} | - | - | {}", share(tm));
    }
    format!(
        "{g:.1} | {:.0} | {} | {}",
        g / (sm / 1e3),
        share(sm),
        share(tm)
    )
}

/// The inference table: this CPU's measured FP32 peak, then one row per case (segkit and
/// PyTorch side by side, time, memory, the case's work and both sides' share of the peak).
fn inference_table(cases: &[String], runs: &str, sides: &Sides<'_>) -> Result<(), String> {
    let (threads, segkit, py) = (sides.threads, sides.segkit, sides.py);
    let script = sides.script("bench_torch.py");
    let peak = peak::fp32_peak(threads.parse().unwrap_or(1));
    match peak {
        Some((g, isa)) => println!(
            "FP32 peak of {threads} threads, measured (12 chains of {isa} FMAs per thread): {g:.1} GFLOP/s"
        ),
        None => println!("FP32 peak: not measured (no AVX2 + FMA on this CPU)"),
    }
    println!(
        "| case | segkit ms | PyTorch ms | time ratio | segkit peak MB | PyTorch peak MB | peak ratio | segkit fwd MB | PyTorch fwd MB | GFLOP | segkit GFLOP/s | segkit % of peak | PyTorch % of peak |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for case in cases {
        let Some((sj, tj)) = run_sides(
            case,
            Command::new(segkit).args(["bench", case, "--runs", runs]),
            Command::new(py)
                .arg(&script)
                .args([case.as_str(), "--runs", runs]),
            threads,
            13,
        )?
        else {
            continue;
        };
        let g = |j: &str, k| field(j, k).unwrap_or(f64::NAN);
        let (sm, tm) = (g(&sj, "median_ms"), g(&tj, "median_ms"));
        let (sp, tp) = (g(&sj, "peak_rss_mb"), g(&tj, "peak_rss_mb"));
        let (sf, tf) = (g(&sj, "forward_mb"), g(&tj, "forward_mb"));
        println!(
            "| {case} | {sm:.1} | {tm:.1} | {:.2}x | {sp:.0} | {tp:.0} | {:.2}x | {sf:.0} | {tf:.0} | {} |",
            sm / tm,
            sp / tp,
            work_cells(field(&tj, "gflop"), (sm, tm), peak.map(|p| p.0), case)
        );
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut runs = "9".to_string();
    let mut threads = "2".to_string();
    let mut heavy_runs = "3".to_string();
    let mut train = TrainArgs::default();
    let mut cases: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().cloned().ok_or("--runs needs a value")?,
            "--threads" => threads = it.next().cloned().ok_or("--threads needs a value")?,
            "--settle" => {
                let v = it.next().ok_or("--settle needs a value (seconds)")?;
                let secs = v
                    .parse::<u64>()
                    .map_err(|_| format!("--settle: {v:?} is not a whole number of seconds"))?;
                SETTLE_SECS.store(secs, Ordering::Relaxed);
            }
            "--heavy-runs" => {
                heavy_runs = it.next().cloned().ok_or("--heavy-runs needs a value")?
            }
            "--size" => train.size = Some(it.next().cloned().ok_or("--size needs a value")?),
            "--batch" => train.batch = Some(it.next().cloned().ok_or("--batch needs a value")?),
            "--train-runs" => {
                train.runs = it.next().cloned().ok_or("--train-runs needs a value")?
            }
            "--cases" => {
                cases = it
                    .next()
                    .ok_or("--cases needs a value")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            o => return Err(format!("unknown bench option {o}")),
        }
    }
    let root = root();
    run_cmd(
        Command::new("cargo")
            .args(["build", "--release", "-p", "segkit-cli"])
            .current_dir(&root),
    )?;
    let py = python(false)?;
    let segkit = root.join("target/release/segkit");
    println!(
        "threads: {threads}, timed runs per case: {runs} (median), each case in a fresh process"
    );
    let (train_cases, cases): (Vec<String>, Vec<String>) =
        cases.into_iter().partition(|c| c.starts_with("train_"));
    let (heavy, cases): (Vec<String>, Vec<String>) =
        cases.into_iter().partition(|c| groups::is_heavy(c));
    let sides = Sides {
        threads: &threads,
        segkit: &segkit,
        py: &py,
        root: &root,
    };
    if !cases.is_empty() {
        inference_table(&cases, &runs, &sides)?;
    }
    if !heavy.is_empty() {
        groups::run(&heavy, &heavy_runs, &sides)?;
    }
    if !train_cases.is_empty() {
        train::run(&train_cases, &train, &sides)?;
    }
    println!("ratios are segkit / PyTorch: below 1.00x means segkit is faster or smaller");
    if !cases.is_empty() {
        println!(
            "GFLOP = one run's matmul and convolution work as torch.utils.flop_counter counts it \
         (2 per multiply-add, convolutions as direct ones); % of peak = that work per second \
         over the measured FP32 peak (- where a case does under 0.5 GFLOP)"
        );
    }
    println!("peak = process peak RSS during the timed runs (weights and runtime included);");
    println!(
        "fwd = that peak minus the RSS just before the first run (memory the forward passes add)"
    );
    Ok(())
}
