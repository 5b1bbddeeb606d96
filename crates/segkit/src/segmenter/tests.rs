use candle_core::{DType, Tensor};
use image::RgbImage;
use segkit_core::testing::SyntheticWeights;

use super::*;

const TINY: &str = r#"{"name": "tiny", "backbone": {"type": "ResNet", "depth": 18,
    "base_channels": 8, "stem": {"type": "Deep", "width": 8}, "key_style": "Mmseg"},
    "decode_head": {"type": "FCNHead", "base": {"channels": 8, "num_classes": 4}},
    "meta": {"classes": ["sky", "tree", "road", "car"]}}"#;

/// A segkit model directory (`config.json` + `model.safetensors`) with synthetic weights.
fn write_model_dir(dir: &Path, config: &str) {
    let cfg = crate::SegmentorConfig::from_json(config).unwrap();
    let rec = SyntheticWeights::default().recording();
    EncoderDecoder::new(&cfg, rec.var_builder(DType::F32, &Device::Cpu)).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let map = rec.recorded();
    segkit_core::checkpoint::save_safetensors(&map, dir.join("model.safetensors")).unwrap();
    let tagged = crate::ModelConfig::from(cfg).to_json_pretty();
    std::fs::write(dir.join("config.json"), tagged).unwrap();
}

fn photo() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(45, 31, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 8) as u8, ((x * y) % 256) as u8])
    }))
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

#[test]
fn segkit_model_dir_segments_semantic_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-model");
    write_model_dir(&dir, TINY);
    let seg = Segmenter::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(seg.name(), "tiny-model");
    assert_eq!(seg.architecture(), "EncoderDecoder");
    assert_eq!(seg.classes(), ["sky", "tree", "road", "car"]);
    assert_eq!(seg.palette().len(), 4);
    let out = seg.segment(&photo(), Task::Semantic).unwrap();
    let s = out.semantic();
    assert_eq!((s.height, s.width), (31, 45));
    assert!(s.class_map.iter().all(|&c| c < 4));
    let total: u64 = s.class_areas().iter().map(|a| a.area).sum();
    assert_eq!(total, 31 * 45);
    // The same model through its config.json and through the checkpoint file.
    for p in [dir.join("config.json"), dir.join("model.safetensors")] {
        let again = Segmenter::load(&p, &Device::Cpu).unwrap();
        assert_eq!(again.segment(&photo(), Task::Semantic).unwrap(), out);
    }
    let e = seg.segment(&photo(), Task::Instance).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedTask { supported, .. } if supported == &["semantic"]),
        "{e}"
    );
    assert!(e.to_string().contains("supports: semantic"), "{e}");
}

#[test]
fn bad_model_dirs_are_typed() {
    let tmp = tempfile::tempdir().unwrap();
    // No config.json.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = Segmenter::load(&empty, &Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::BadModel { .. }), "{e}");
    // A config that is not JSON.
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir_all(&garbage).unwrap();
    std::fs::write(garbage.join("config.json"), "{not json").unwrap();
    let e = Segmenter::load(&garbage, &Device::Cpu).unwrap_err();
    assert!(
        matches!(e, Error::BadModel { .. }) && e.to_string().contains("config.json"),
        "{e}"
    );
    // Another model type.
    std::fs::write(garbage.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let e = Segmenter::load(&garbage, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("bert"), "{e}");
    // A valid config without weights, then with truncated weights, then with weights of
    // another class count.
    let dir = tmp.path().join("m");
    write_model_dir(&dir, TINY);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = Segmenter::load(&dir, &Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = Segmenter::load(&dir, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("no weights file"), "{e}");
    let other = tmp.path().join("other");
    write_model_dir(
        &other,
        &TINY
            .replace("\"num_classes\": 4", "\"num_classes\": 5")
            .replace(
                r#""meta": {"classes": ["sky", "tree", "road", "car"]}"#,
                r#""meta": {}"#,
            ),
    );
    std::fs::copy(
        other.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let e = Segmenter::load(&dir, &Device::Cpu).unwrap_err();
    // The error names the model and file; its source, printed after it, the key.
    let text = segkit_core::error::Report(&e).to_string();
    assert!(text.contains("decode_head.conv_seg.weight"), "{text}");
    // Paths that do not exist and unknown names.
    let e = Segmenter::load(tmp.path().join("nope"), &Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::BadModel { .. }), "{e}");
    let e = Segmenter::load("no-such-model", &Device::Cpu).unwrap_err();
    assert!(
        matches!(&e, Error::UnknownModel { not_downloaded, present, .. }
            if not_downloaded.iter().chain(present).any(|n| n == DEFAULT_MODEL)),
        "{e}"
    );
}

#[test]
fn oneformer_hf_dir_does_every_task() {
    let seg = Segmenter::load(fixture("oneformer/hf_dir_safetensors"), &Device::Cpu).unwrap();
    assert_eq!(seg.architecture(), "OneFormer");
    assert_eq!(seg.classes().len(), 7);
    assert_eq!(seg.thing_classes(), None);
    let img = crate::image::open(fixture("oneformer/photo.png")).unwrap();
    for task in Task::ALL {
        let out = seg.segment(&img, task).unwrap();
        assert_eq!(out.task(), task);
        assert_eq!((out.height(), out.width()), (96, 128));
        let sem = out.semantic();
        assert_eq!(sem.class_map.len(), 96 * 128);
        match &out {
            Segmentation::Semantic(s) => assert!(s.class_map.iter().all(|&c| c < 7)),
            Segmentation::Instance(r) => {
                for i in &r.instances {
                    let n = r.segment_map.iter().filter(|&&v| v == i.id).count() as u64;
                    assert_eq!(i.area, n);
                    assert_eq!(i.mask.area(), n);
                    assert!(i.class_id < 7 && i.score > 0.0);
                }
            }
            Segmentation::Panoptic(r) => {
                let covered: u64 = r.segments.iter().map(|s| s.area).sum();
                let nonzero = r.segment_map.iter().filter(|&&v| v != 0).count() as u64;
                assert_eq!(covered, nonzero);
                assert_eq!(sem.unlabeled_area(), 96 * 128 - nonzero);
            }
        }
    }
}

#[test]
fn devices() {
    assert!(matches!(device("cpu"), Ok(Device::Cpu)));
    assert!(matches!(device(" CPU "), Ok(Device::Cpu)));
    let e = device("tpu").unwrap_err().to_string();
    assert!(e.contains("cpu, cuda"), "{e}");
    if !cfg!(feature = "cuda") {
        let e = device("cuda").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
    assert!(device("cuda:x").is_err());
}

#[test]
fn registry_entries_with_a_preset_build_it_from_the_directory_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("danet_r50-d8_cityscapes-512x1024");
    std::fs::create_dir_all(&dir).unwrap();
    // A downloaded .pth next to a converted .safetensors: the safetensors is read.
    std::fs::write(dir.join("danet-2bfa2293.pth"), b"not read").unwrap();
    let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    segkit_core::checkpoint::save_safetensors(
        [("decode_head.conv_seg.bias", &t)],
        dir.join("danet-2bfa2293.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.join(".verified"), b"").unwrap();
    let entry = registry::find_model("danet_r50-d8_cityscapes-512x1024").unwrap();
    let e = Segmenter::load_dir(&dir, Some(&entry), &Device::Cpu).unwrap_err();
    match &e {
        Error::Checkpoint {
            model, checkpoint, ..
        } => {
            assert_eq!(model, "danet_r50-d8_cityscapes-512x1024");
            assert!(checkpoint.ends_with("danet-2bfa2293.safetensors"), "{e}");
        }
        other => panic!("{other}"),
    }
    // Without a registry entry the directory is not a model.
    let e = Segmenter::load_dir(&dir, None, &Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::BadModel { .. }), "{e}");
}

/// The compiled-in demo model equals the one on disk: same class map on the bundled example.
#[test]
fn embedded_default_equals_the_committed_demo_model() {
    let img = crate::image::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo_canvas.png"),
    )
    .unwrap();
    let disk = Segmenter::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("demo"),
        &Device::Cpu,
    )
    .unwrap();
    let embedded = Segmenter::load_embedded_default(&Device::Cpu).unwrap();
    assert_eq!(embedded.name(), DEFAULT_MODEL);
    assert_eq!(embedded.classes(), disk.classes());
    let a = disk.segment(&img, Task::Semantic).unwrap();
    let b = embedded.segment(&img, Task::Semantic).unwrap();
    assert_eq!(a.semantic().class_map, b.semantic().class_map);
}
