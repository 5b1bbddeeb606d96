//! End-to-end tests of `segkit train` and `segkit eval`: a short run on a toy dataset, clear
//! one-line errors for missing / corrupt dataset files and bad configs, and the committed demo
//! model reproducing its recorded mIoU on the committed validation subset (and, when Debian's
//! Fashion-MNIST files are installed, on the same canvases generated here).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use segkit::models::encoder_decoder::demo;
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

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A tiny model (ResNet-18 at width 4, PSP head of 8 channels, 3 classes) as a JSON config.
fn tiny_model_json() -> serde_json::Value {
    let mut c = demo::demo_config();
    c.name = "tiny".into();
    let segkit::BackboneConfig::ResNet(r) = &mut c.backbone else {
        unreachable!("the demo preset has a ResNet backbone")
    };
    r.base_channels = 4;
    r.stem = segkit::backbones::Stem::Deep { width: 4 };
    for h in [Some(&mut c.decode_head), c.auxiliary_head.as_mut()]
        .into_iter()
        .flatten()
    {
        let b = h.base_mut();
        b.channels = 8;
        b.num_classes = 3;
    }
    c.meta.classes = vec!["bg".into(), "a".into(), "b".into()];
    c.meta.palette = vec![[0, 0, 0], [255, 0, 0], [0, 255, 0]];
    c.data_preprocessor.size = Some([32, 32]);
    serde_json::to_value(&c).unwrap()
}

fn write_config(dir: &Path, root: &Path, model: serde_json::Value, extra: &str) -> PathBuf {
    let cfg = format!(
        r#"{{
            "model": {model},
            "dataset": {{"type": "Custom", "root": {root}}},
            "optimizer": {{"type": "AdamW", "lr": 0.005}},
            "iterations": 4, "batch_size": 2, "log_interval": 1,
            "output_dir": "out"{extra}
        }}"#,
        model = model,
        root = serde_json::to_string(&root).unwrap(),
    );
    let p = dir.join("train.json");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn tiny_spec() -> serde_json::Value {
    serde_json::json!({"type": "Config", "config": tiny_model_json()})
}

#[test]
fn train_then_eval_a_toy_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_toy_dataset(&data, &[("train", 8), ("val", 3)], 32, 3, 1).unwrap();
    let cfg = write_config(dir.path(), &data, tiny_spec(), "");
    let c = cfg.to_str().unwrap();
    // Stop half-way, then resume to the end.
    let o = segkit(&["train", "--config", c, "--stop-at", "2", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stopped at iteration 2"),
        "{}",
        stderr(&o)
    );
    let o = segkit(&["train", "--config", c, "--resume", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("out");
    for f in [
        "model.safetensors",
        "config.json",
        "metrics.jsonl",
        "checkpoint.safetensors",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let iters: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("\"train\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["iter"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(iters, vec![1, 2, 3, 4]);
    let json = dir.path().join("eval.json");
    let o = segkit(&[
        "eval",
        "--config",
        c,
        "--weights",
        out.join("model.safetensors").to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("mIoU") && stdout.contains("bg"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["num_images"], 3);
    assert!(r["aAcc"].as_f64().unwrap() > 0.0);
    assert_eq!(r["iou"].as_array().unwrap().len(), 3);
}

fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    let e = stderr(o);
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(e.starts_with("error: "), "{e}");
    e
}

#[test]
fn clear_errors_for_missing_and_corrupt_data_and_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    // A dataset folder that does not exist.
    let missing = dir.path().join("no-such-data");
    let cfg = write_config(dir.path(), &missing, tiny_spec(), "");
    let e = one_line_error(&segkit(&["train", "--config", cfg.to_str().unwrap()]));
    assert!(e.contains("no-such-data"), "{e}");

    // A corrupt image, named by the error (in training and in evaluation).
    let data = dir.path().join("data");
    write_toy_dataset(&data, &[("train", 4), ("val", 2)], 32, 3, 2).unwrap();
    let bad = data.join("images/val/00001.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    let cfg = write_config(dir.path(), &data, tiny_spec(), "");
    let weights = dir.path().join("w.safetensors");
    let e = one_line_error(&segkit(&[
        "eval",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
    ]));
    assert!(e.contains("w.safetensors"), "{e}");
    let o = segkit(&["train", "--config", cfg.to_str().unwrap(), "--quiet"]);
    let e = one_line_error(&o);
    assert!(e.contains("images/val/00001.png"), "{e}");
    // An annotation missing for an image.
    std::fs::remove_file(data.join("annotations/train/00002.png")).unwrap();
    let e = one_line_error(&segkit(&["train", "--config", cfg.to_str().unwrap()]));
    assert!(e.contains("annotations/train/00002.png"), "{e}");

    // Configs: an unknown optimizer, an unknown field, an unknown preset, a missing file.
    let p = dir.path().join("bad.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("AdamW", "Adam");
    std::fs::write(&p, text).unwrap();
    let e = one_line_error(&segkit(&["train", "--config", p.to_str().unwrap()]));
    assert!(
        e.contains("bad.json") && e.contains("AdamW") && e.contains("SGD"),
        "{e}"
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"iterations\"", "\"iters\"");
    std::fs::write(&p, text).unwrap();
    let e = one_line_error(&segkit(&["train", "--config", p.to_str().unwrap()]));
    assert!(e.contains("iters"), "{e}");
    let cfg2 = write_config(
        dir.path(),
        &data,
        serde_json::json!({"type": "Preset", "name": "nope"}),
        "",
    );
    let e = one_line_error(&segkit(&["train", "--config", cfg2.to_str().unwrap()]));
    assert!(e.contains("segkit_demo_r18w16_psp_fashion-128x128"), "{e}");
    let e = one_line_error(&segkit(&["train", "--config", "/no/such/train.json"]));
    assert!(e.contains("/no/such/train.json"), "{e}");
}

/// `segkit eval` of the committed model on `dir` (a `custom` root with a `val` split).
fn eval_demo(dir: &Path, work: &Path) -> serde_json::Value {
    let cfg = write_config(
        work,
        dir,
        serde_json::json!({"type": "Preset", "name": demo::DEMO_PRESET}),
        "",
    );
    let out = work.join("eval.json");
    let weights = repo().join("crates/segkit/demo/model.safetensors");
    let o = segkit(&[
        "eval",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

fn recorded() -> serde_json::Value {
    let m = repo().join("crates/segkit/demo/metrics.json");
    serde_json::from_slice(&std::fs::read(&m).expect("crates/segkit/demo/metrics.json")).unwrap()
}

#[test]
fn committed_demo_model_reproduces_its_fixture_miou() {
    let work = tempfile::tempdir().unwrap();
    let r = eval_demo(&repo().join("tests/fixtures/demo_val"), work.path());
    let want = &recorded()["fixture_subset"];
    assert_eq!(r["num_images"], want["num_images"]);
    // Exactly: the same predictions give the same pixel counts and the same f64 metrics.
    assert_eq!(
        r["mIoU"], want["mIoU"],
        "mIoU {} vs recorded {}",
        r["mIoU"], want["mIoU"]
    );
    assert_eq!(r["aAcc"], want["aAcc"]);
    assert_eq!(r["iou"], want["iou"]);
}

/// A Gated-SCNN trained two iterations (`segkit_train::gscnn::train_gscnn_into`, all four
/// losses) into a model directory that `segkit infer` runs: class map and edge map written.
#[test]
fn gscnn_trained_model_infers_class_and_edge_maps() {
    use segkit::train::config::{LrPolicy, OptimizerConfig, ScheduleConfig, TransformConfig};
    use segkit::train::gscnn::{demo_net, train_gscnn_into, GscnnRunConfig};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_toy_dataset(&data, &[("train", 4), ("val", 2)], 32, 4, 1).unwrap();
    let k = 4;
    let cfg = GscnnRunConfig {
        name: "toy".into(),
        net: demo_net(k, true).unwrap(),
        loss: segkit::losses::JointEdgeSegLoss::gscnn(k),
        edge_target: segkit::data::edges::EdgeTargetConfig::gscnn(k),
        dataset: segkit::train::DatasetConfig::Custom {
            root: data.clone(),
            train_split: "train".into(),
            val_split: "val".into(),
            ignore_index: 255,
        },
        meta: segkit::models::DatasetMeta {
            classes: (0..k).map(|i| format!("c{i}")).collect(),
            palette: vec![[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]],
        },
        pipeline: vec![TransformConfig::RandomFlip {
            prob: 0.5,
            direction: segkit::data::augment::FlipDirection::Horizontal,
        }],
        optimizer: OptimizerConfig::Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        },
        schedule: ScheduleConfig {
            policy: LrPolicy::Poly {
                power: 0.9,
                min_lr: 1e-4,
            },
            warmup: None,
        },
        iterations: 2,
        batch_size: 2,
        seed: 1,
        val_limit: Some(2),
        boundary_tolerances: vec![segkit::data::metrics::BoundaryTolerance::Pixels(1)],
    };
    let model = tmp.path().join("model");
    let mut names = Vec::new();
    train_gscnn_into(&cfg, &model, |_, rec| {
        assert!(rec.values().all(|v| v.is_finite()), "{rec:?}");
        names = rec.keys().cloned().collect();
    })
    .unwrap();
    assert_eq!(
        names,
        ["att_loss", "dual_loss", "edge_loss", "loss", "seg_loss"]
    );
    let out = tmp.path().join("out");
    let img = data.join("images/val");
    let first = std::fs::read_dir(&img)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = segkit(&[
        "infer",
        "-q",
        "--model",
        model.to_str().unwrap(),
        first.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stem = first.file_stem().unwrap().to_str().unwrap();
    for suffix in ["_classes.png", "_edge.png", ".json"] {
        assert!(out.join(format!("{stem}{suffix}")).is_file(), "{suffix}");
    }
}
