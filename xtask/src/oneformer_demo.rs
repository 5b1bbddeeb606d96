//! `cargo xtask oneformer-demo`: fine-tunes a small OneFormer on the demo canvases' panoptic
//! ground truth twice under the same budget — joint training (`tasks` panoptic + instance +
//! semantic) and semantic-only — and evaluates both on the held-out canvases with PQ, mask AP
//! and mIoU (the three tasks' post-processed outputs; docs/TRAINING.md records the numbers).
//!
//! `oneformer-demo [--iterations N] [--batch N] [--data DIR] [--val N] [--out FILE]
//! [--backbone demo-r18|swin]`: makes the demo data if missing (as `make-demo-data`), converts both splits to the COCO panoptic
//! layout ([`crate::demo_data::coco_panoptic`]: every item a thing segment of its class, the
//! background one stuff segment), writes one training config per run (`train.json`, the
//! `segkit train` input: `segkit train target/oneformer-demo/joint/train.json` repeats a run)
//! and trains it through segkit-train's `Trainer` — the code `segkit train` runs. The results
//! (JSON) go to `--out` (default `target/oneformer-demo/results.json`) and a Markdown table to
//! stdout; each run's checkpoint, metrics log and model (`segkit infer --model DIR`) are in
//! `joint/` and `semantic/` next to `--out`. `--skip-train` reads runs finished earlier
//! (`segkit train` on their `train.json`) instead of training. The joint run's model is
//! then stored as `f16` in `--model-out` (default `crates/segkit/demo/oneformer/`, the
//! registry's `segkit-demo-oneformer`; `--no-model`: not stored), evaluated as stored and
//! described in its `metrics.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use segkit::models::encoder_decoder::demo::{
    demo_config as demo_segmentor_config, FASHION_CLASSES,
};
use segkit::models::oneformer::OneFormerBackboneConfig;
use segkit::models::BackboneConfig;
use segkit::models::OneFormerConfig;
use segkit::train::{TrainConfig, TrainSummary, Trainer};

use crate::demo_data as demo;

const USAGE: &str = "usage: cargo xtask oneformer-demo [--iterations N] [--batch N] [--data DIR] \
                     [--val N] [--out FILE] [--backbone demo-r18|swin] [--model-out DIR | \
                     --no-model] [--skip-train]";

/// Where the joint run's model is stored by default: the `segkit` package's embedded
/// `segkit-demo-oneformer`.
const DEMO_MODEL_DIR: &str = "crates/segkit/demo/oneformer";

/// The demo segmentor's weights (the package's embedded demo model), whose backbone the
/// `demo-r18` OneFormer starts from.
const DEMO_SEGMENTOR: &str = "crates/segkit/demo/model.safetensors";

/// The OneFormer's backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoBackbone {
    /// The demo segmentor's ResNetV1c-18 (width 16, deep stem of 8) at output stride 32,
    /// fine-tuned from the demo model's backbone weights (`pretrained`, prefix `backbone.`).
    DemoR18,
    /// Swin at a sixth of Swin-T's width, from scratch.
    Swin,
}

impl DemoBackbone {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "demo-r18" => Ok(Self::DemoR18),
            "swin" => Ok(Self::Swin),
            _ => Err(format!(
                "--backbone: `{s}` is not demo-r18 or swin; {USAGE}"
            )),
        }
    }
}

/// Iterations of each run.
const ITERATIONS: usize = 600;

/// The demo's OneFormer: `backbone` ([`DemoBackbone::DemoR18`]: the demo segmentor's
/// ResNetV1c-18 with strides 1 / 2 / 2 / 2 and no dilation, channels 16 / 32 / 64 / 128;
/// [`DemoBackbone::Swin`]: Swin at a sixth of Swin-T's width, embed 16, depths 2 / 2 / 2 / 2,
/// heads 1 / 2 / 4 / 8, window 7), pixel decoder and transformer decoder at width 64 (2
/// deformable-attention encoder layers, 16 queries, 4 decoder layers = 3 auxiliary, dropout
/// 0.1), a one-layer text mapper of width 64 with context length 16, the 11 demo classes
/// (background stuff, the 10 Fashion-MNIST classes things), 128 x 128 input, 2048 points per
/// mask in the loss.
pub fn demo_config(backbone: DemoBackbone) -> OneFormerConfig {
    let mut c = OneFormerConfig::ade20k_swin_tiny();
    c.name = "segkit-demo-oneformer".into();
    match backbone {
        DemoBackbone::Swin => {
            if let OneFormerBackboneConfig::Swin(s) = &mut c.backbone {
                s.embed_dim = 16;
                s.depths = vec![2, 2, 2, 2];
                s.num_heads = vec![1, 2, 4, 8];
                s.drop_path_rate = 0.0;
            }
        }
        DemoBackbone::DemoR18 => {
            let BackboneConfig::ResNet(mut r) = demo_segmentor_config().backbone else {
                unreachable!("the demo segmentor is a ResNet")
            };
            // Output stride 32 (OneFormer's four levels at strides 4..32): the dilated
            // stages' 3x3 convolutions hold the same tensors with stride 2 and no dilation.
            (r.strides, r.dilations) = ([1, 2, 2, 2], [1, 1, 1, 1]);
            (r.contract_dilation, r.multi_grid) = (false, None);
            c.backbone = OneFormerBackboneConfig::ResNet(r);
        }
    }
    let p = &mut c.pixel_decoder;
    (p.conv_dim, p.mask_dim) = (64, 64);
    (p.encoder_layers, p.encoder_feedforward_dim) = (2, 128);
    p.dropout = 0.0;
    let d = &mut c.decoder;
    (d.num_queries, d.hidden_dim, d.num_attention_heads) = (16, 64, 4);
    (d.dim_feedforward, d.decoder_layers, d.query_dec_layers) = (256, 4, 1);
    d.num_labels = FASHION_CLASSES.len();
    d.dropout = 0.1;
    (d.conv_dim, d.mask_dim) = (None, None);
    let t = &mut c.text_mapper;
    (t.text_encoder_width, t.text_encoder_num_layers) = (64, 1);
    (t.text_encoder_n_ctx, t.hidden_dim) = (4, 64);
    t.text_encoder_context_length = 16;
    c.labels = FASHION_CLASSES.iter().map(|s| s.to_string()).collect();
    c.loss = segkit::losses::OneFormerLossConfig {
        num_points: 2048,
        ..segkit::losses::OneFormerLossConfig::oneformer(FASHION_CLASSES.len())
    };
    c.preprocess.shortest_edge = demo::DEMO_SIZE;
    c.preprocess.longest_edge = demo::DEMO_SIZE;
    c
}

/// The training config of one run (`tasks`), as JSON: AdamW lr 1e-3, weight decay 0.05
/// (biases decayed as OneFormer), OneFormer's parameter groups and clipping at 0.01, 50
/// warm-up iterations, poly 0.9, flips, seed 0. `DemoR18`: the backbone starts from the demo
/// segmentor's (`pretrained`) with OneFormer's backbone multiplier 0.1; `Swin`: from scratch
/// at 1x.
fn train_json(
    coco: &Path,
    out: &Path,
    tasks: &[&str],
    iterations: usize,
    batch: usize,
    val: usize,
    backbone: DemoBackbone,
) -> serde_json::Value {
    let things: Vec<usize> = (1..FASHION_CLASSES.len()).collect();
    let (pretrained, multiplier) = match backbone {
        DemoBackbone::DemoR18 => (
            serde_json::json!([{"path": crate::root().join(DEMO_SEGMENTOR),
                                "prefix": "backbone.",
                                "to": "model.pixel_level_module.encoder."}]),
            0.1,
        ),
        DemoBackbone::Swin => (serde_json::json!([]), 1.0),
    };
    serde_json::json!({
        "model": {"type": "OneFormer", "config": demo_config(backbone), "tasks": tasks,
                  "thing_classes": things, "backbone_multiplier": multiplier},
        "pretrained": pretrained,
        "dataset": {"type": "CocoPanoptic", "root": coco},
        "pipeline": [{"type": "RandomFlip", "prob": 0.5}],
        "optimizer": {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.05,
                      "decay_norm_and_bias": true},
        "schedule": {"policy": {"type": "Poly", "power": 0.9, "min_lr": 1e-6},
                     "warmup": {"iters": iterations.div_ceil(12).min(50), "start_factor": 0.1}},
        "iterations": iterations, "batch_size": batch, "log_interval": 10,
        "eval_batch_size": 1, "val_limit": val, "seed": 0, "output_dir": out
    })
}

/// One run's results.
#[derive(Debug, serde::Serialize)]
struct RunResult {
    name: String,
    tasks: Vec<String>,
    iterations: usize,
    pq: f64,
    sq: f64,
    rq: f64,
    ap: f64,
    ap50: f64,
    miou: f64,
    aacc: f64,
    final_loss: f64,
    train_seconds: f64,
    model_bytes: u64,
}

fn table(results: &[RunResult]) -> String {
    let mut s = String::from(
        "| run | tasks | PQ | SQ | RQ | mask AP | AP50 | mIoU | aAcc | train s |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            r.name,
            r.tasks.join(" + "),
            r.pq,
            r.sq,
            r.rq,
            r.ap,
            r.ap50,
            r.miou,
            r.aacc,
            r.train_seconds
        ));
    }
    s
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// One run's results from its training summary and wall time.
fn result_of(name: &str, tasks: &[&str], summary: &TrainSummary, seconds: f64) -> RunResult {
    let e = &summary.eval;
    let x = |k: &str| 100.0 * e.extra.get(k).copied().unwrap_or(f64::NAN);
    let model_bytes = std::fs::metadata(&summary.model_path).map_or(0, |m| m.len());
    RunResult {
        name: name.into(),
        tasks: tasks.iter().map(|s| s.to_string()).collect(),
        iterations: summary.iterations,
        pq: x("PQ"),
        sq: x("SQ"),
        rq: x("RQ"),
        ap: x("AP"),
        ap50: x("AP50"),
        miou: 100.0 * e.miou,
        aacc: 100.0 * e.aacc,
        final_loss: summary.final_loss,
        train_seconds: seconds,
        model_bytes,
    }
}

/// Trains one run from its config file; returns its results.
fn train_run(name: &str, tasks: &[&str], cfg_path: &Path) -> Result<RunResult, String> {
    let cfg = TrainConfig::load(cfg_path).map_err(|e| e.to_string())?;
    let iterations = cfg.iterations;
    let t = Instant::now();
    eprintln!("xtask: training `{name}` ({iterations} iterations)");
    let mut trainer = Trainer::new(cfg).map_err(|e| e.to_string())?;
    let summary = trainer
        .run_with(|rec| {
            if rec.iter % 50 == 0 || rec.iter == iterations {
                eprintln!(
                    "  iter {} ({:.0} s): loss {:.4}",
                    rec.iter,
                    t.elapsed().as_secs_f64(),
                    rec.loss
                );
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(result_of(name, tasks, &summary, t.elapsed().as_secs_f64()))
}

/// The results of a run finished earlier (`segkit train` on its `train.json`): its
/// `summary.json`, whose iteration count must be `iterations`, its model evaluated again on
/// the first `val` validation canvases (with this build's metrics) and the wall time the
/// training loop logged last (`elapsed` in `metrics.jsonl`).
fn finished_run(
    name: &str,
    tasks: &[&str],
    run_dir: &Path,
    iterations: usize,
    val: usize,
) -> Result<RunResult, String> {
    use segkit::train::trainer::{LOG_FILE, SUMMARY_FILE};
    let path = run_dir.join(SUMMARY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut summary: TrainSummary =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let cfg = TrainConfig::load(run_dir.join("train.json")).map_err(|e| e.to_string())?;
    summary.eval = segkit::train::evaluate_weights(
        &cfg,
        &summary.model_path,
        segkit::train::Split::Val,
        Some(val),
        1,
    )
    .map_err(|e| e.to_string())?;
    if summary.iterations != iterations {
        return Err(format!(
            "{}: the run did {} iterations, not --iterations {iterations}",
            path.display(),
            summary.iterations
        ));
    }
    let log = crate::panet_demo::read_losses(&run_dir.join(LOG_FILE))?;
    let seconds = log
        .last()
        .and_then(|(_, v)| v.get("elapsed").copied())
        .unwrap_or(f64::NAN);
    Ok(result_of(name, tasks, &summary, seconds))
}

/// Stores the joint run's weights as the demo model in `model_out` (`f16`, with its
/// `config.json`), evaluates THAT model (its weights read back as `f32`, through
/// `segkit_train::evaluate_weights`) on the first `val` validation canvases and writes
/// `metrics.json` (both runs' results, the stored model's figures, parameters and bytes).
fn install(
    joint: &Path,
    model_out: &Path,
    results: &[RunResult],
    val: usize,
) -> Result<(), String> {
    use segkit::train::{evaluate_weights, Split};
    let (bytes, params) = crate::panet_demo::write_model(joint, model_out)?;
    let cfg = TrainConfig::load(joint.join("train.json")).map_err(|e| e.to_string())?;
    let weights = model_out.join(segkit::train::trainer::MODEL_FILE);
    let e =
        evaluate_weights(&cfg, &weights, Split::Val, Some(val), 1).map_err(|e| e.to_string())?;
    let x = |k: &str| 100.0 * e.extra.get(k).copied().unwrap_or(f64::NAN);
    let report = serde_json::json!({
        "model": "segkit-demo-oneformer",
        "weights_dtype": "f16",
        "parameters": params,
        "bytes": bytes,
        "validation_canvases": e.num_images,
        "stored_model": {"PQ": x("PQ"), "SQ": x("SQ"), "RQ": x("RQ"), "AP": x("AP"),
                         "AP50": x("AP50"), "mIoU": 100.0 * e.miou, "aAcc": 100.0 * e.aacc},
        "runs": results,
        "train_config": cfg,
    });
    // Paths inside the repository recorded relative to it.
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| e.to_string())?
        .replace(&format!("{}/", crate::root().display()), "");
    write(&model_out.join("metrics.json"), &format!("{text}\n"))?;
    eprintln!(
        "xtask: stored model {} ({params} parameters, {bytes} bytes): PQ {:.2}, AP {:.2}, \
         mIoU {:.2}",
        model_out.display(),
        x("PQ"),
        x("AP"),
        100.0 * e.miou
    );
    Ok(())
}

/// Runs `cargo xtask oneformer-demo`.
pub fn run(args: &[String]) -> Result<(), String> {
    let root = crate::root();
    let mut data = root.join("target/demo-data");
    let mut out = root.join("target/oneformer-demo/results.json");
    let (mut iterations, mut batch, mut val) = (ITERATIONS, 4, 500);
    let mut backbone = DemoBackbone::DemoR18;
    let mut model_out = Some(root.join(DEMO_MODEL_DIR));
    let mut skip_train = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut next = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--iterations" => iterations = next()?.parse().map_err(|_| USAGE.to_string())?,
            "--batch" => batch = next()?.parse().map_err(|_| USAGE.to_string())?,
            "--val" => val = next()?.parse().map_err(|_| USAGE.to_string())?,
            "--data" => data = PathBuf::from(next()?),
            "--out" => out = PathBuf::from(next()?),
            "--backbone" => backbone = DemoBackbone::parse(next()?)?,
            "--model-out" => model_out = Some(PathBuf::from(next()?)),
            "--no-model" => model_out = None,
            "--skip-train" => skip_train = true,
            s => return Err(format!("unknown argument `{s}`; {USAGE}")),
        }
    }
    if !data.join("images/val").is_dir() || !data.join("images/train").is_dir() {
        let src = PathBuf::from(demo::FASHION_MNIST_DIR);
        eprintln!("xtask: composing the demo canvases into {}", data.display());
        demo::make_demo_data(&src, &data, 4000, 500)
            .map_err(|e| format!("{e} (Fashion-MNIST: {})", demo::FASHION_MNIST_INSTALL))?;
    }
    // Absolute: the configs written below name the data by this path, and a relative path in
    // a config resolves against the config's own directory.
    let out = std::path::absolute(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let dir = out.parent().unwrap_or(Path::new(".")).to_path_buf();
    let coco = dir.join("coco_panoptic");
    for split in ["train", "val"] {
        if !coco
            .join(format!("annotations/panoptic_{split}2017.json"))
            .is_file()
        {
            let s = demo::coco_panoptic::write_coco_panoptic(&data, &coco, split)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "xtask: {split}: {} canvases, {} thing segments -> {}",
                s.images,
                s.things,
                s.json.display()
            );
        }
    }
    let runs: [(&str, &[&str]); 2] = [
        ("joint", &["panoptic", "instance", "semantic"]),
        ("semantic", &["semantic"]),
    ];
    let mut results = Vec::new();
    for (name, tasks) in runs {
        let run_dir = dir.join(name);
        let cfg = train_json(&coco, &run_dir, tasks, iterations, batch, val, backbone);
        let cfg_path = run_dir.join("train.json");
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?;
        write(&cfg_path, &format!("{text}\n"))?;
        let r = if skip_train {
            finished_run(name, tasks, &run_dir, iterations, val)?
        } else {
            train_run(name, tasks, &cfg_path)?
        };
        eprintln!(
            "xtask: `{name}`: PQ {:.2}, AP {:.2}, mIoU {:.2} ({:.0} s)",
            r.pq, r.ap, r.miou, r.train_seconds
        );
        results.push(r);
    }
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    write(&out, &format!("{json}\n"))?;
    println!("{}", table(&results));
    eprintln!("xtask: wrote {}", out.display());
    if let Some(m) = &model_out {
        install(&dir.join("joint"), m, &results, val)?;
    }
    Ok(())
}
