//! End-to-end: `segkit train` trains a Gated-SCNN from a training config (the small demo
//! network, all four losses, the edge ground truth made per batch), stops, resumes to the
//! end, and `segkit infer` runs the output directory, writing the class map and the edge map.
//! The same config without the shape stream trains with the segmentation loss alone.

use std::path::Path;
use std::process::{Command, Output};

use segkit::train::data::write_toy_dataset;

fn segkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(args)
        .output()
        .expect("run segkit")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The training config of the docs' worked example at toy size: 4 classes, 32 x 32 images.
fn write_config(dir: &Path, shape_stream: bool) -> std::path::PathBuf {
    let cfg = serde_json::json!({
        "model": {
            "type": "Gscnn",
            "preset": "gscnn_demo_r18-w16",
            "shape_stream": shape_stream,
            "meta": {
                "classes": ["bg", "c1", "c2", "c3"],
                "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
            },
            "boundary_tolerances": [{"pixels": 1}, {"pixels": 2}]
        },
        "dataset": {"type": "Custom", "root": "data"},
        "pipeline": [{"type": "RandomFlip", "prob": 0.5}],
        "optimizer": {"type": "AdamW", "lr": 0.001},
        "iterations": 4,
        "batch_size": 2,
        "log_interval": 1,
        "val_limit": 2,
        "seed": 5,
        "output_dir": if shape_stream { "run" } else { "run_plain" }
    });
    let path = dir.join(if shape_stream {
        "gscnn.json"
    } else {
        "gscnn_plain.json"
    });
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    path
}

fn train_records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect()
}

#[test]
fn gscnn_trains_resumes_and_infers() {
    let tmp = tempfile::tempdir().unwrap();
    write_toy_dataset(
        &tmp.path().join("data"),
        &[("train", 4), ("val", 2)],
        32,
        4,
        1,
    )
    .unwrap();
    let cfg = write_config(tmp.path(), true);
    let cfg_s = cfg.to_str().unwrap();
    let o = segkit(&["train", "--config", cfg_s, "--quiet", "--stop-at", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stopped at iteration 2"),
        "{}",
        stderr(&o)
    );
    let run = tmp.path().join("run");
    assert!(run.join("checkpoint.safetensors").is_file());
    let o = segkit(&["train", "--config", cfg_s, "--quiet", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("done: 4 iterations"), "{err}");
    assert!(err.contains("bF_1px") && err.contains("bF_2px"), "{err}");
    // The metrics log: every iteration's four named losses, finite, and the final
    // evaluation with mIoU and both boundary F-scores.
    let recs = train_records(&run.join("metrics.jsonl"));
    let train: Vec<_> = recs.iter().filter(|r| r["type"] == "train").collect();
    assert_eq!(
        train
            .iter()
            .map(|r| r["iter"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for r in &train {
        for k in ["seg_loss", "edge_loss", "att_loss", "dual_loss", "loss"] {
            let v = r[k].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite(), "{k} in {r}");
        }
    }
    let val = recs
        .iter()
        .find(|r| r["type"] == "val")
        .expect("a val record");
    for k in ["mIoU", "bF_1px", "bF_2px"] {
        let v = val[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} in {val}");
    }
    // `segkit infer` on the output directory: class map and edge map.
    let img = tmp.path().join("data/images/val");
    let first = std::fs::read_dir(&img)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = tmp.path().join("pred");
    let o = segkit(&[
        "infer",
        "-q",
        "--model",
        run.to_str().unwrap(),
        first.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stem = first.file_stem().unwrap().to_str().unwrap();
    for suffix in ["_classes.png", "_edge.png"] {
        let p = out.join(format!("{stem}{suffix}"));
        let im = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!((im.width(), im.height()), (32, 32), "{suffix}");
    }
}

#[test]
fn gscnn_without_the_shape_stream_trains_with_the_seg_loss() {
    let tmp = tempfile::tempdir().unwrap();
    write_toy_dataset(
        &tmp.path().join("data"),
        &[("train", 4), ("val", 2)],
        32,
        4,
        1,
    )
    .unwrap();
    let cfg = write_config(tmp.path(), false);
    let o = segkit(&["train", "--config", cfg.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = train_records(&tmp.path().join("run_plain/metrics.jsonl"));
    let last = recs
        .iter()
        .rfind(|r| r["type"] == "train")
        .expect("a train record");
    assert!(last["seg_loss"].as_f64().unwrap().is_finite(), "{last}");
    assert!(last.get("edge_loss").is_none(), "{last}");
    let json = std::fs::read_to_string(tmp.path().join("run_plain/config.json")).unwrap();
    assert!(json.contains("\"shape_stream\": false"), "{json}");
}

/// The memory guard knows Gated-SCNN: 1024 x 1024 samples of the demo network (with the
/// shape stream at full resolution) are refused under a 1 GiB limit before anything of that
/// size is allocated, naming the config, the batch size and the transform that sets it.
#[test]
fn gscnn_too_large_for_the_memory_limit_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_toy_dataset(
        &tmp.path().join("data"),
        &[("train", 2), ("val", 1)],
        32,
        4,
        1,
    )
    .unwrap();
    let path = write_config(tmp.path(), true);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["pipeline"] = serde_json::json!([
        {"type": "Resize", "scale": [1024, 1024], "keep_ratio": false}
    ]);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(["train", "--config", path.to_str().unwrap(), "--quiet"])
        .env("SEGKIT_MEMORY_LIMIT", "1G")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("gscnn.json") && err.contains("batch_size 2 x 1024 x 1024"),
        "{err}"
    );
    assert!(err.contains("Resize"), "{err}");
    assert!(!tmp.path().join("run/checkpoint.safetensors").exists());
}
