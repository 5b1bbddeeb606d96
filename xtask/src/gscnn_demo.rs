//! `cargo xtask gscnn-demo`: Gated-SCNN with and without its shape stream, trained on the
//! demo canvases under the same budget, compared by mIoU and boundary F-score
//! (docs/gscnn_training.md records the numbers).
//!
//! `gscnn-demo [--iterations N] [--data DIR] [--val N] [--out FILE]`: makes the demo data if
//! missing (as `make-demo-data`), then trains `segkit_train::gscnn::demo_net` twice (shape
//! stream on: all four official losses with the edge ground truth made on the fly; off: the
//! segmentation loss alone), same seed, data order, optimizer and iterations, evaluates both
//! on the validation canvases and writes the results (JSON) to `--out`
//! (default `target/gscnn-demo/results.json`), printing a Markdown table. Both runs go through
//! segkit-train's `Trainer` (`train_gscnn_into`): each run's checkpoint, metrics log and model
//! (`segkit infer --model DIR`) are in `gscnn/` and `no_shape_stream/` next to `--out`.

use std::path::PathBuf;
use std::time::Instant;

use segkit::data::edges::EdgeTargetConfig;
use segkit::data::metrics::BoundaryTolerance;
use segkit::losses::JointEdgeSegLoss;
use segkit::models::encoder_decoder::demo::{FASHION_CLASSES, FASHION_PALETTE};
use segkit::train::gscnn::{demo_net, train_gscnn_into, GscnnRunConfig, GscnnRunResult};

use crate::demo_data as demo;

const USAGE: &str =
    "usage: cargo xtask gscnn-demo [--iterations N] [--data DIR] [--val N] [--out FILE]";

/// Iterations of each run (batch 8).
const ITERATIONS: usize = 600;

fn run_config(
    data: &std::path::Path,
    shape_stream: bool,
    iterations: usize,
    val: usize,
) -> Result<GscnnRunConfig, String> {
    let k = FASHION_CLASSES.len();
    // The demo model's recipe (data, flips, AdamW, warm-up + poly, batch 8, seed 0): the
    // comparison trains under the same budget as the committed demo model.
    let recipe = demo::demo_train_config(data, std::path::Path::new(""), iterations);
    Ok(GscnnRunConfig {
        name: if shape_stream {
            "gscnn"
        } else {
            "no_shape_stream"
        }
        .into(),
        net: demo_net(k, shape_stream).map_err(|e| e.to_string())?,
        loss: JointEdgeSegLoss::gscnn(k),
        edge_target: EdgeTargetConfig::gscnn(k),
        dataset: recipe.dataset,
        meta: segkit::models::DatasetMeta {
            classes: FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
            palette: FASHION_PALETTE.to_vec(),
        },
        pipeline: recipe.pipeline,
        optimizer: recipe.optimizer,
        schedule: recipe.schedule,
        iterations,
        batch_size: recipe.batch_size,
        seed: recipe.seed,
        val_limit: Some(val),
        // At 128 x 128 every official fraction of the diagonal (0.0005 .. 0.005) is 1 px.
        boundary_tolerances: vec![
            BoundaryTolerance::Pixels(1),
            BoundaryTolerance::Pixels(2),
            BoundaryTolerance::Pixels(3),
        ],
    })
}

fn table(results: &[GscnnRunResult]) -> String {
    let mut s = String::from(
        "| run | parameters | mIoU | aAcc | boundary F (1 px) | (2 px) | (3 px) | train s |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let f: Vec<String> = r
            .boundary_f
            .iter()
            .map(|(_, v)| format!("{:.2}", 100.0 * v))
            .collect();
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {} | {:.0} |\n",
            r.name,
            r.parameters,
            100.0 * r.miou,
            100.0 * r.aacc,
            f.join(" | "),
            r.train_seconds
        ));
    }
    s
}

/// Runs `cargo xtask gscnn-demo`.
pub fn run(args: &[String]) -> Result<(), String> {
    // candle's element-wise pool parks between ops (segkit_core::runtime; already applied
    // before `main` on Linux, this call makes the dependency explicit).
    segkit::core::runtime::configure_cpu_threads();
    let root = crate::root();
    let mut data = root.join("target/demo-data");
    let mut out = root.join("target/gscnn-demo/results.json");
    let (mut iterations, mut val) = (ITERATIONS, 500);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut next = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--iterations" => iterations = next()?.parse().map_err(|_| USAGE.to_string())?,
            "--val" => val = next()?.parse().map_err(|_| USAGE.to_string())?,
            "--data" => data = PathBuf::from(next()?),
            "--out" => out = PathBuf::from(next()?),
            s => return Err(format!("unknown argument `{s}`; {USAGE}")),
        }
    }
    if !data.join("images/val").is_dir() || !data.join("images/train").is_dir() {
        let src = PathBuf::from(demo::FASHION_MNIST_DIR);
        eprintln!("xtask: composing the demo canvases into {}", data.display());
        demo::make_demo_data(&src, &data, 4000, 500)
            .map_err(|e| format!("{e} (Fashion-MNIST: {})", demo::FASHION_MNIST_INSTALL))?;
    }
    let mut results = Vec::new();
    for shape in [true, false] {
        let cfg = run_config(&data, shape, iterations, val)?;
        let t = Instant::now();
        eprintln!("xtask: training `{}` ({iterations} iterations)", cfg.name);
        let run_dir = out
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(&cfg.name);
        let (r, _) = train_gscnn_into(&cfg, &run_dir, |i, rec| {
            if i % 50 == 0 || i == iterations {
                let l: Vec<String> = rec.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                eprintln!(
                    "  iter {i} ({:.0} s): {}",
                    t.elapsed().as_secs_f64(),
                    l.join(", ")
                );
            }
        })
        .map_err(|e| e.to_string())?;
        eprintln!(
            "xtask: `{}`: mIoU {:.2}, boundary F {:?}",
            r.name,
            100.0 * r.miou,
            r.boundary_f
        );
        results.push(r);
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&out, format!("{json}\n")).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{}", table(&results));
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}
