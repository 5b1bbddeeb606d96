//! PANet through the `segkit` binary: `infer` on a PANet model directory picks the model's
//! task (instance) by itself and writes the class map, colours, overlay, the 16-bit
//! instance-id map and the JSON of instances (class id and name, score, box, COCO RLE);
//! `dump` writes every intermediate (N2..N6, proposals, box head outputs, detections, mask
//! logits).
//!
//! The model is the full-size ResNet-50 PANet with candle's default initialisation (no
//! parity here: tests/tests/panet_model.rs has it), a 64-pixel test scale to keep it fast, and
//! a score threshold of 0 so that the random network's detections are kept.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use segkit::models::panet::PanetConfig;
use segkit::ModelConfig;
use serde_json::Value;

fn segkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(args)
        .env_remove("SEGKIT_WEIGHTS")
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// `config.json` + `model.safetensors` of a randomly initialised PANet.
fn model_dir(dir: &Path) -> PathBuf {
    let mut cfg = PanetConfig::r50_fpn_2x_coco();
    cfg.name = "panet-test".into();
    cfg.input.scale = 64;
    cfg.input.max_size = 96;
    cfg.roi_heads.detection.score_thresh = 0.0;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    segkit::models::Panet::new(&cfg, vb).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    vm.save(dir.join("model.safetensors")).unwrap();
    let json = ModelConfig::Panet(Box::new(cfg)).to_json_pretty();
    std::fs::write(dir.join("config.json"), json).unwrap();
    dir.to_path_buf()
}

#[test]
fn infer_writes_instances_and_dump_writes_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(&tmp.path().join("panet"));
    let (w, h) = (45u32, 37u32);
    let px: Vec<u8> = (0..w * h * 3).map(|i| ((i * 53) % 251) as u8).collect();
    let photo = tmp.path().join("street.png");
    image::RgbImage::from_raw(w, h, px)
        .unwrap()
        .save(&photo)
        .unwrap();
    let out = tmp.path().join("out");
    ok(segkit(&[
        "infer",
        "--model",
        s(&model),
        s(&photo),
        "--out",
        s(&out),
        "--quiet",
    ]));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("street.json")).unwrap()).unwrap();
    assert_eq!(json["task"], "instance", "the model's own task by default");
    assert_eq!(json["files"]["instances"], "street_instances.png");
    let inst = json["instances"].as_array().unwrap();
    // (Detectron keeps every detection scoring at least the 100th score, so ties keep more.)
    assert!(!inst.is_empty());
    let ids = match image::open(out.join("street_instances.png")).unwrap() {
        image::DynamicImage::ImageLuma16(g) => g,
        other => panic!("instance map is {:?}", other.color()),
    };
    assert_eq!(ids.dimensions(), (w, h));
    for (k, i) in inst.iter().enumerate() {
        assert_eq!(i["id"], k + 1);
        let class = i["class_id"].as_u64().unwrap();
        assert!((1..=80).contains(&class), "{i}");
        assert!(i["class_name"].is_string());
        assert_eq!(i["bbox"].as_array().unwrap().len(), 4);
        assert_eq!(i["segmentation"]["size"], serde_json::json!([h, w]));
    }
    // Every pixel of the id map names an instance of the JSON (or none).
    assert!(ids.as_raw().iter().all(|&v| (v as usize) <= inst.len()));
    // A semantic task is refused in one line naming the supported one.
    let o = segkit(&[
        "infer",
        "--model",
        s(&model),
        "--task",
        "semantic",
        s(&photo),
        "--out",
        s(&tmp.path().join("sem")),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("instance"), "{err}");
    assert!(!tmp.path().join("sem").exists());

    // dump on a padded blob.
    let x = Tensor::zeros((1, 3, 64, 96), DType::F32, &Device::Cpu).unwrap();
    let input = tmp.path().join("blob.safetensors");
    candle_core::safetensors::save(&[("input", x)].into_iter().collect(), &input).unwrap();
    let dump = tmp.path().join("dump.safetensors");
    ok(segkit(&[
        "dump",
        "--config",
        s(&model.join("config.json")),
        "--weights",
        s(&model.join("model.safetensors")),
        "--input",
        s(&input),
        "--out",
        s(&dump),
    ]));
    let got = candle_core::safetensors::load(&dump, &Device::Cpu).unwrap();
    for k in [
        "n2",
        "n3",
        "n4",
        "n5",
        "n6",
        "proposals",
        "proposal_scores",
        "cls_score",
        "bbox_pred",
        "boxes",
        "scores",
        "classes",
        "mask_logits",
        "masks",
    ] {
        assert!(got.contains_key(k), "dump has no `{k}`");
    }
    assert_eq!(got["n2"].dims(), [1, 256, 16, 24]);
    assert_eq!(got["n6"].dims(), [1, 256, 1, 2]);
    let d = got["boxes"].dims()[0];
    assert_eq!(got["mask_logits"].dims(), [d, 81, 28, 28]);
    assert_eq!(got["masks"].dims(), [d, 64, 96]);
}
