//! `cargo xtask panet-demo`: segkit's demo instance model (`segkit-demo-panet`), trained from
//! scratch on this machine's CPU through `segkit train` — convert -> train -> evaluate ->
//! write the model directory (docs/panet.md, "Demo model").
//!
//! `panet-demo [--iterations N] [--batch N] [--data DIR] [--work DIR] [--out DIR] [--val N]
//! [--skip-train]`:
//! 1. makes the demo canvases if missing (`make-demo-data`) and writes both splits as COCO
//!    instance data (`demo_data::coco_instances`) under `WORK/coco`;
//! 2. runs `nice -n 5 segkit train` on `WORK/train.json`: the preset `segkit_demo_panet`
//!    ([`segkit::models::PanetConfig::segkit_demo`]) on the `CocoInstances` dataset with
//!    [`train_settings`], AdamW, warm-up + poly, random flips;
//! 3. stores the trained weights as `f16` in `OUT/model.safetensors` (default
//!    `crates/segkit/demo/panet/`, the registry's `segkit-demo-panet`) with `config.json`,
//!    evaluates THAT model (its weights read back as `f32`) on the first `--val` validation
//!    canvases (default all 500) with segkit-data's pycocotools-equal evaluator (box and mask
//!    AP, AP50, AP75) and writes `OUT/metrics.json` (config, wall time, loss curve, AP).
//!
//! `--skip-train` does steps 1 and 3 on the finished run in `WORK/run` (its wall time is the
//! last logged `elapsed` of its `metrics.jsonl`, the training loop's own clock).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use segkit::models::panet::{PanetTrainConfig, PANET_DEMO_PRESET};
use segkit::models::{Panet, PanetConfig};
use segkit::train::coco_instances::CocoInstancesConfig;
use segkit::train::TrainConfig;

use crate::demo_data::{self as demo, coco_instances::write_coco_instances};

const USAGE: &str = "usage: cargo xtask panet-demo [--iterations N] [--batch N] [--data DIR] \
                     [--work DIR] [--out DIR] [--val N] [--skip-train]";

/// Iterations of the demo run (about 25 minutes on this loaded 2-core machine).
const ITERATIONS: usize = 1200;
/// Images per iteration.
const BATCH: usize = 4;

/// The demo's training settings: the official sampling and losses with sizes for 128 x 128
/// canvases holding 2..5 items — 1000 proposals per image and level before NMS, 300 after,
/// 300 per image collected over the batch, 64 RoIs per image (at most 16 foreground), 256
/// RPN anchors per image as the official code.
pub fn train_settings(num_classes: usize, batch: usize) -> PanetTrainConfig {
    let mut t = PanetTrainConfig::official(num_classes);
    t.pre_nms_top_n = 1000;
    t.post_nms_top_n = 300;
    t.collect_top_n = 300 * batch;
    t.roi_sampler.batch_size_per_image = 64;
    t
}

/// The training config (JSON, as `segkit train` reads it).
fn train_config(coco: &Path, run: &Path, iterations: usize, batch: usize) -> serde_json::Value {
    let k = PanetConfig::segkit_demo().num_classes();
    serde_json::json!({
        "model": {"type": "Panet", "preset": PANET_DEMO_PRESET,
                  "train": train_settings(k, batch)},
        "dataset": {"type": "CocoInstances", "root": coco},
        "pipeline": [{"type": "RandomFlip", "prob": 0.5, "direction": "horizontal"}],
        "optimizer": {"type": "AdamW", "lr": 2e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                      "weight_decay": 1e-4},
        "schedule": {"policy": {"type": "Poly", "power": 0.9, "min_lr": 1e-5},
                     "warmup": {"iters": 100, "start_factor": 0.1}},
        "iterations": iterations,
        "batch_size": batch,
        "eval_interval": 0,
        "val_limit": 100,
        "checkpoint_interval": 500,
        "log_interval": 10,
        "seed": 0,
        "output_dir": run,
    })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// One logged row: the iteration and its named values.
pub(crate) type LogRow = (usize, BTreeMap<String, f64>);

/// The logged training rows of a run: per logged iteration, the named losses (and
/// `elapsed`, the loop's seconds so far).
pub(crate) fn read_losses(log: &Path) -> Result<Vec<LogRow>, String> {
    let text = std::fs::read_to_string(log).map_err(io(log))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v.get("type").and_then(|t| t.as_str()) != Some("train") {
            continue;
        }
        let it = v.get("iter").and_then(|i| i.as_u64()).unwrap_or(0) as usize;
        let losses: BTreeMap<String, f64> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("loss") || *k == "elapsed")
            .filter_map(|(k, x)| x.as_f64().map(|x| (k.clone(), x)))
            .collect();
        out.push((it, losses));
    }
    Ok(out)
}

/// Mean of each loss over the logged iterations in `range`.
fn mean_losses(log: &[LogRow], range: std::ops::RangeInclusive<usize>) -> BTreeMap<String, f64> {
    let rows: Vec<_> = log.iter().filter(|(i, _)| range.contains(i)).collect();
    let mut m: BTreeMap<String, f64> = BTreeMap::new();
    for (_, l) in &rows {
        for (k, v) in l.iter().filter(|(k, _)| k.starts_with("loss")) {
            *m.entry(k.clone()).or_default() += v / rows.len() as f64;
        }
    }
    m
}

/// Stores the run's weights as `f16` in `out` with the model config; returns (bytes,
/// parameters).
pub(crate) fn write_model(run: &Path, out: &Path) -> Result<(u64, usize), String> {
    use segkit::train::trainer::{CONFIG_FILE, MODEL_FILE};
    std::fs::create_dir_all(out).map_err(io(out))?;
    let src = run.join(MODEL_FILE);
    let w = candle_core::safetensors::load(&src, &Device::Cpu).map_err(|e| e.to_string())?;
    let mut half = std::collections::HashMap::new();
    let mut params = 0;
    for (k, t) in w {
        params += t.elem_count();
        half.insert(k, t.to_dtype(DType::F16).map_err(|e| e.to_string())?);
    }
    let dst = out.join(MODEL_FILE);
    candle_core::safetensors::save(&half, &dst).map_err(|e| e.to_string())?;
    std::fs::copy(run.join(CONFIG_FILE), out.join(CONFIG_FILE)).map_err(io(out))?;
    Ok((std::fs::metadata(&dst).map_err(io(&dst))?.len(), params))
}

/// Box and mask AP of the model stored in `out` on the first `val` validation canvases.
fn evaluate(out: &Path, coco: &Path, val: usize) -> Result<segkit::train::EvalResult, String> {
    use segkit::train::trainer::{CONFIG_FILE, MODEL_FILE};
    let cfg_text = std::fs::read_to_string(out.join(CONFIG_FILE)).map_err(io(out))?;
    let segkit::models::ModelConfig::Panet(cfg) =
        segkit::models::ModelConfig::from_json(&cfg_text).map_err(|e| e.to_string())?
    else {
        return Err(format!("{}: not a PANet config", out.display()));
    };
    let w = candle_core::safetensors::load(out.join(MODEL_FILE), &Device::Cpu)
        .map_err(|e| e.to_string())?;
    let w: std::collections::HashMap<String, Tensor> = w
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| e.to_string())?;
    let vb = candle_nn::VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
    let model = Panet::new(&cfg, vb).map_err(|e| e.to_string())?;
    let ds = CocoInstancesConfig {
        root: coco.to_path_buf(),
        train_split: "train".into(),
        val_split: "val".into(),
    }
    .open("val")
    .map_err(|e| e.to_string())?;
    let ds = segkit::train::data::Limited::new(Box::new(ds), val);
    let mut meta = cfg.meta.clone();
    meta.classes.remove(0);
    segkit::train::panet::evaluate_panet(&model, cfg.num_classes() - 1, &meta, &ds)
        .map_err(|e| e.to_string())
}

/// Builds the `segkit` binary and runs `nice -n 5 segkit train --config CONFIG`.
fn train(root: &Path, config: &Path, iterations: usize, batch: usize) -> Result<(), String> {
    eprintln!("xtask: building the segkit binary");
    crate::run_cmd(Command::new(env!("CARGO")).current_dir(root).args([
        "build",
        "--release",
        "-p",
        "segkit-cli",
        "--bin",
        "segkit",
    ]))?;
    eprintln!(
        "xtask: training ({iterations} iterations, batch {batch}) with {}",
        config.display()
    );
    crate::run_cmd(
        Command::new("nice")
            .args(["-n", "5"])
            .arg(root.join("target/release/segkit"))
            .args(["train", "--config"])
            .arg(config),
    )
}

/// Runs `cargo xtask panet-demo`.
pub fn run(args: &[String]) -> Result<(), String> {
    // candle's element-wise pool parks between ops (segkit_core::runtime; already applied
    // before `main` on Linux, this call makes the dependency explicit).
    segkit::core::runtime::configure_cpu_threads();
    let root = crate::root();
    let mut data = root.join("target/demo-data");
    let mut work = root.join("target/panet-demo");
    let mut out = root.join("crates/segkit/demo/panet");
    let (mut iterations, mut batch, mut val) = (ITERATIONS, BATCH, 500);
    let mut skip_train = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut next = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
        };
        let num = |s: &String| s.parse::<usize>().map_err(|_| USAGE.to_string());
        match a.as_str() {
            "--iterations" => iterations = num(next()?)?,
            "--batch" => batch = num(next()?)?,
            "--val" => val = num(next()?)?,
            "--data" => data = PathBuf::from(next()?),
            "--work" => work = PathBuf::from(next()?),
            "--out" => out = PathBuf::from(next()?),
            "--skip-train" => skip_train = true,
            s => return Err(format!("unknown argument `{s}`; {USAGE}")),
        }
    }
    if !data.join("instances/val").is_dir() || !data.join("instances/train").is_dir() {
        eprintln!("xtask: composing the demo canvases into {}", data.display());
        demo::make_demo_data(&PathBuf::from(demo::FASHION_MNIST_DIR), &data, 4000, 500)
            .map_err(|e| format!("{e} (Fashion-MNIST: {})", demo::FASHION_MNIST_INSTALL))?;
    }
    let coco = work.join("coco");
    for split in ["train", "val"] {
        let s = write_coco_instances(&data, &coco, split).map_err(|e| e.to_string())?;
        eprintln!(
            "xtask: {split}: {} canvases, {} instances -> {}",
            s.images,
            s.annotations,
            s.json.display()
        );
    }
    let run_dir = work.join("run");
    let cfg = train_config(&coco, &run_dir, iterations, batch);
    TrainConfig::from_json(&cfg.to_string()).map_err(|e| e.to_string())?;
    let config = work.join("train.json");
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?;
    std::fs::write(&config, format!("{text}\n")).map_err(io(&config))?;
    let log_path = run_dir.join(segkit::train::trainer::LOG_FILE);
    if !skip_train {
        train(&root, &config, iterations, batch)?;
    }
    let log = read_losses(&log_path)?;
    let train_seconds = log.last().and_then(|(_, l)| l.get("elapsed").copied());
    let (bytes, params) = write_model(&run_dir, &out)?;
    let t = Instant::now();
    let r = evaluate(&out, &coco, val)?;
    let eval_seconds = t.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "preset": PANET_DEMO_PRESET,
        "train_config": cfg,
        "train_seconds": train_seconds,
        "note": "trained with nice -n 5, one thread, on a 2-core machine shared with other jobs",
        "eval_seconds": eval_seconds,
        "model_bytes": bytes,
        "parameters": params,
        "weights_dtype": "f16",
        "losses_first_50_iterations": mean_losses(&log, 0..=50),
        "losses_last_100_iterations": mean_losses(&log, iterations.saturating_sub(100)..=iterations),
        "loss_curve": log.iter().filter(|(i, _)| i % 100 == 0).collect::<Vec<_>>(),
        "val": r,
    });
    let path = out.join("metrics.json");
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&path, format!("{text}\n")).map_err(io(&path))?;
    println!(
        "| | AP | AP50 | AP75 |\n|---|---|---|---|\n| box | {:.2} | {:.2} | {:.2} |\n\
         | mask | {:.2} | {:.2} | {:.2} |",
        100.0 * r.extra["bbox_AP"],
        100.0 * r.extra["bbox_AP50"],
        100.0 * r.extra["bbox_AP75"],
        100.0 * r.extra["AP"],
        100.0 * r.extra["AP50"],
        100.0 * r.extra["AP75"]
    );
    eprintln!(
        "xtask: trained in {:.0} s, {params} parameters, {bytes} bytes; wrote {}",
        train_seconds.unwrap_or(f64::NAN),
        out.display()
    );
    Ok(())
}
