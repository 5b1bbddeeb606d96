//! `segkit train` in classification mode and on PSSL labels, end to end through the binary:
//! a narrow ResNet-18 learns a separable two-class image folder to 100 % top-1 accuracy; a run
//! stopped and resumed ends with byte-identical weights; the trained classifier labels its
//! images with `segkit pssl generate`; a segmentor trains a few iterations on those labels with
//! PSSL's weighted cross-entropy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use segkit::models::classifier::ClassifierConfig;
use segkit::models::encoder_decoder::demo;

fn segkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(args)
        .output()
        .expect("run segkit")
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `root/{train,val}/{dark,bright}/NNN.png`: 32x32 images, dark (about 40) or bright (about
/// 200) with a deterministic texture; 16 per class for training, 6 for validation.
fn write_image_folder(root: &Path) {
    for (split, count) in [("train", 16), ("val", 6)] {
        for (class, base) in [("bright", 190u32), ("dark", 30)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let salt = i + if split == "val" { 100 } else { 0 };
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let t = (x * 7 + y * 13 + salt * 31) % 41;
                    let v = (base + t) as u8;
                    image::Rgb([v, v.saturating_sub((x % 5) as u8 * 3), v])
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

fn classifier_json() -> serde_json::Value {
    let mut c = ClassifierConfig::resnet("tiny_r18_w4", 18, 4, 2);
    c.classes = vec!["bright".into(), "dark".into()];
    let mut v = serde_json::to_value(&c).unwrap();
    v["type"] = "Classifier".into();
    v
}

fn write_train_config(dir: &Path, name: &str, out: &str) -> PathBuf {
    let cfg = serde_json::json!({
        "model": classifier_json(),
        "dataset": {"type": "ImageFolder", "root": "data"},
        "optimizer": {"type": "AdamW", "lr": 0.002},
        "iterations": 60, "batch_size": 8, "log_interval": 10,
        "checkpoint_interval": 20, "seed": 7,
        "output_dir": out
    });
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    p
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn classifier_trains_resumes_and_labels_pssl_for_a_segmentor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_image_folder(&dir.join("data"));

    // 1. Classification through `segkit train`: 100 % top-1 on the held-out images.
    let cfg = write_train_config(dir, "classify.json", "cls");
    ok(
        segkit(&["train", "--quiet", "--config", cfg.to_str().unwrap()]),
        "segkit train (classifier)",
    );
    let out = dir.join("cls");
    let s = summary(&out);
    assert_eq!(s["eval"]["num_images"], 12, "{s}");
    assert_eq!(s["eval"]["aAcc"], 1.0, "{s}");
    assert_eq!(s["eval"]["extra"]["top1"], 1.0, "{s}");
    // `segkit eval` on the saved weights gives the trainer's final evaluation.
    let eval_json = dir.join("eval_cls.json");
    let weights = out.join("model.safetensors");
    ok(
        segkit(&[
            "eval",
            "--config",
            cfg.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            eval_json.to_str().unwrap(),
        ]),
        "segkit eval (classifier)",
    );
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();
    assert_eq!(e, s["eval"], "segkit eval vs the trainer's evaluation");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["type"], "Classifier");
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "train")
        .map(|v| v["loss_ce"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 6, "{log}");
    assert!(losses[5] < 0.5 * losses[0], "{losses:?}");

    // 2. Stopped at iteration 25 (checkpoint there) and resumed: the same weights, bit for bit.
    let cfg2 = write_train_config(dir, "classify2.json", "cls2");
    let c2 = cfg2.to_str().unwrap();
    ok(
        segkit(&["train", "--quiet", "--config", c2, "--stop-at", "25"]),
        "segkit train --stop-at",
    );
    assert!(!dir.join("cls2/model.safetensors").exists());
    ok(
        segkit(&["train", "--quiet", "--config", c2, "--resume"]),
        "segkit train --resume",
    );
    let a = std::fs::read(out.join("model.safetensors")).unwrap();
    let b = std::fs::read(dir.join("cls2/model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed weights differ from the uninterrupted run's"
    );
    assert_eq!(summary(&dir.join("cls2"))["final_loss"], s["final_loss"]);

    // 3. PSSL labels from the trained classifier.
    let mut list = String::new();
    for (c, class) in ["bright", "dark"].iter().enumerate() {
        for i in 0..16 {
            list.push_str(&format!("{class}/{i:03}.png {c}\n"));
        }
    }
    std::fs::write(dir.join("list.txt"), list).unwrap();
    let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
    ok(
        segkit(&[
            "pssl",
            "generate",
            "--quiet",
            "--samples",
            "4",
            "--batch",
            "4",
            "--models",
            &p("cls"),
            "--images",
            &p("data/train"),
            "--labels",
            &p("list.txt"),
            "--out",
            &p("pssl"),
        ]),
        "segkit pssl generate",
    );
    pssl_segmentation_run(dir);
}

/// The demo segmentor reduced to 3 classes (background first, then the two image classes)
/// trains 4 iterations on the PSSL labels with the weighted cross-entropy.
fn pssl_segmentation_run(dir: &Path) {
    let mut m = demo::demo_config();
    m.name = "tiny_pssl".into();
    for h in [Some(&mut m.decode_head), m.auxiliary_head.as_mut()]
        .into_iter()
        .flatten()
    {
        h.base_mut().num_classes = 3;
    }
    m.meta.classes = vec!["background".into(), "bright".into(), "dark".into()];
    m.meta.palette = vec![[0, 0, 0], [255, 0, 0], [0, 255, 0]];
    m.data_preprocessor.size = None;
    let cfg = serde_json::json!({
        "model": {"type": "Config", "config": m},
        "dataset": {"type": "Pssl", "images": "data/train", "labels": "pssl",
                    "list": "list.txt", "background": "First"},
        "optimizer": {"type": "SGD", "lr": 0.01},
        "iterations": 4, "batch_size": 4, "log_interval": 1, "val_limit": 4,
        "output_dir": "seg"
    });
    let path = dir.join("pssl.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    ok(
        segkit(&["train", "--quiet", "--config", path.to_str().unwrap()]),
        "segkit train (PSSL)",
    );
    let log = std::fs::read_to_string(dir.join("seg/metrics.jsonl")).unwrap();
    let n = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "train")
        .inspect(|v| {
            let l = v["decode.loss_ce"].as_f64().unwrap();
            assert!(l.is_finite() && l > 0.0, "{v}");
        })
        .count();
    assert_eq!(n, 4, "{log}");
    // The saved model records the weighted cross-entropy (background 0.1, classes 1.0).
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("seg/config.json")).unwrap())
            .unwrap();
    for head in ["decode_head", "auxiliary_head"] {
        let ce = &saved["losses"][head][0]["losses"][0];
        let w: Vec<f32> = serde_json::from_value(ce["class_weight"].clone()).unwrap();
        assert_eq!(w, [0.1, 1.0, 1.0], "{saved}");
        assert_eq!(ce["avg_non_ignore"], true);
    }
}
