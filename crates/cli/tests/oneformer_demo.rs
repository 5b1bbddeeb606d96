//! The committed demo OneFormer by name, offline:
//! `segkit infer --model segkit-demo-oneformer --task panoptic examples/demo_canvas.png`
//! resolves the registry entry to `crates/segkit/demo/oneformer/` (f16 weights read as f32;
//! a ResNetV1c-18 backbone at width 16 fine-tuned by `cargo xtask oneformer-demo`) and
//! segments the canvas against its ground truth (`examples/demo_canvas_gt.png`: background,
//! a trouser, a sneaker): the background segment and a Trouser thing segment overlap their
//! ground truth, and the semantic task runs from the same weights.

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

fn gray(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_luma8().into_raw()
}

fn iou(pred: &[u8], gt: &[u8], class: u8) -> f64 {
    let (mut i, mut u) = (0usize, 0usize);
    for (&p, &g) in pred.iter().zip(gt) {
        i += usize::from(p == class && g == class);
        u += usize::from(p == class || g == class);
    }
    i as f64 / u.max(1) as f64
}

#[test]
fn segkit_demo_oneformer_segments_the_demo_canvas() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let canvas = repo.join("examples/demo_canvas.png");
    let gt = gray(&repo.join("examples/demo_canvas_gt.png"));
    let tmp = tempfile::tempdir().unwrap();
    for task in ["panoptic", "semantic"] {
        let out = tmp.path().join(task);
        let o = segkit(&[
            "infer",
            "--model",
            "segkit-demo-oneformer",
            "--task",
            task,
            canvas.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("demo_canvas.json")).unwrap())
                .unwrap();
        assert_eq!(json["task"], task);
        assert_eq!(
            (json["height"].as_u64(), json["width"].as_u64()),
            (Some(128), Some(128))
        );
        let classes = gray(&out.join("demo_canvas_classes.png"));
        assert_eq!(classes.len(), gt.len());
        let acc = classes.iter().zip(&gt).filter(|(p, g)| p == g).count() as f64 / gt.len() as f64;
        assert!(acc > 0.85, "{task}: pixel accuracy {acc}");
        assert!(iou(&classes, &gt, 0) > 0.9, "{task}: background IoU");
        assert!(iou(&classes, &gt, 2) > 0.4, "{task}: trouser IoU");
        if task == "panoptic" {
            let segs = json["segments"].as_array().unwrap();
            let names: Vec<&str> = segs
                .iter()
                .filter_map(|s| s["class_name"].as_str())
                .collect();
            assert!(
                names.contains(&"background") && names.contains(&"Trouser"),
                "{names:?}"
            );
            for s in segs {
                assert_eq!(s["segmentation"]["size"], serde_json::json!([128, 128]));
                assert!(s["score"].as_f64().unwrap() > 0.5, "{s}");
            }
        }
    }
}
