//! The committed demo instance model by name, offline:
//! `segkit infer --model segkit-demo-panet --task instance examples/demo_canvas.png` resolves
//! the registry entry to `crates/segkit/demo/panet/` (f16 weights read as f32) and writes the
//! 16-bit instance map and the JSON of instances, with at least one detection of a
//! Fashion-MNIST class on the demo canvas.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn segkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(args)
        .env_remove("SEGKIT_WEIGHTS")
        .output()
        .unwrap()
}

#[test]
fn segkit_demo_panet_detects_items_on_the_demo_canvas() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let canvas = repo.join("examples/demo_canvas.png");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = segkit(&[
        "infer",
        "--model",
        "segkit-demo-panet",
        "--task",
        "instance",
        canvas.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo_canvas.json")).unwrap())
            .unwrap();
    assert_eq!(json["task"], "instance");
    let inst = json["instances"].as_array().unwrap();
    assert!(!inst.is_empty(), "no detection on the demo canvas");
    let classes = segkit::models::encoder_decoder::demo::FASHION_CLASSES;
    for (k, i) in inst.iter().enumerate() {
        assert_eq!(i["id"], k + 1);
        let c = i["class_id"].as_u64().unwrap() as usize;
        assert!((1..classes.len()).contains(&c), "{i}");
        assert_eq!(i["class_name"], classes[c]);
        assert_eq!(i["segmentation"]["size"], serde_json::json!([128, 128]));
    }
    let best = inst[0]["score"].as_f64().unwrap();
    assert!(best > 0.3, "top score {best}");
    let ids = match image::open(out.join("demo_canvas_instances.png")).unwrap() {
        image::DynamicImage::ImageLuma16(g) => g,
        other => panic!("instance map is {:?}", other.color()),
    };
    assert_eq!(ids.dimensions(), (128, 128));
    assert!(ids.as_raw().iter().any(|&v| v > 0), "no instance pixel");
    assert!(ids.as_raw().iter().all(|&v| (v as usize) <= inst.len()));
}
