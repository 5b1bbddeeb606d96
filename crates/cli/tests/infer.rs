//! `segkit infer` end to end: the binary on a tiny synthetic segkit model, on the tiny
//! Hugging Face OneFormer fixture, and every failure the command promises to report in one
//! line without leaving files behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use segkit::{EncoderDecoder, SegmentorConfig};
use segkit_core::testing::SyntheticWeights;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

fn tiny_config(num_classes: usize, named: bool) -> String {
    let meta = if named {
        let names: Vec<String> = (0..num_classes).map(|i| format!("\"thing {i}\"")).collect();
        format!(r#", "meta": {{"classes": [{}]}}"#, names.join(", "))
    } else {
        String::new()
    };
    format!(
        r#"{{"name": "tiny", "backbone": {{"type": "ResNet", "depth": 18, "base_channels": 8,
            "stem": {{"type": "Deep", "width": 8}}, "key_style": "Mmseg"}},
            "decode_head": {{"type": "FCNHead", "base": {{"channels": 8,
            "num_classes": {num_classes}}}}}{meta}}}"#
    )
}

/// A segkit model directory: `config.json` + `model.safetensors` (synthetic weights).
fn model_dir(dir: &Path, num_classes: usize, named: bool) -> PathBuf {
    let text = tiny_config(num_classes, named);
    let cfg = SegmentorConfig::from_json(&text).unwrap();
    let rec = SyntheticWeights::default().recording();
    EncoderDecoder::new(&cfg, rec.var_builder(DType::F32, &Device::Cpu)).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let map = rec.recorded();
    segkit_core::checkpoint::save_safetensors(&map, dir.join("model.safetensors")).unwrap();
    let tagged = segkit::ModelConfig::from(cfg).to_json_pretty();
    std::fs::write(dir.join("config.json"), tagged).unwrap();
    dir.to_path_buf()
}

/// The OneFormer fixture with a class bias that makes every query confident about class 1,
/// so that instance and panoptic post-processing keep segments.
fn confident_oneformer(dir: &Path) -> PathBuf {
    let src = fixture("oneformer/hf_dir_safetensors");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut w =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let bias = [0f32, 12.0, 0.0, 0.0, 0.0, 0.0, 0.0, -10.0];
    w.insert(
        "model.transformer_module.decoder.class_embed.bias".into(),
        Tensor::new(&bias, &Device::Cpu).unwrap(),
    );
    segkit_core::checkpoint::save_safetensors(&w, dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

fn segkit(args: &[&str], weights: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segkit"));
    c.arg("infer").args(args);
    match weights {
        Some(w) => c.env("SEGKIT_WEIGHTS", w),
        None => c.env_remove("SEGKIT_WEIGHTS"),
    };
    c.output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit non-zero with exactly one `error: ..` line on stderr; returns that line.
fn one_line_error(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure; stdout: {:?}",
        o.stdout
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Checks the four outputs of `stem` and returns the JSON and the class ids.
fn check_outputs(
    out: &Path,
    stem: &str,
    (w, h): (u32, u32),
    num_classes: u32,
) -> (Value, Vec<u32>) {
    let classes = image::open(out.join(format!("{stem}_classes.png"))).unwrap();
    assert_eq!((classes.width(), classes.height()), (w, h));
    let ids: Vec<u32> = match &classes {
        image::DynamicImage::ImageLuma8(g) => g.as_raw().iter().map(|&v| v as u32).collect(),
        image::DynamicImage::ImageLuma16(g) => g.as_raw().iter().map(|&v| v as u32).collect(),
        other => panic!("class PNG is {:?}", other.color()),
    };
    let unlabeled = if num_classes <= 255 { 255 } else { 65535 };
    assert!(ids.iter().all(|&c| c < num_classes || c == unlabeled));
    for f in ["color", "overlay"] {
        let img = image::open(out.join(format!("{stem}_{f}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (w, h));
        assert!(matches!(img, image::DynamicImage::ImageRgb8(_)));
    }
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap())
            .unwrap();
    assert_eq!(json["width"], w);
    assert_eq!(json["height"], h);
    for k in ["model", "task", "image", "classes", "files"] {
        assert!(!json[k].is_null(), "{k} missing: {json}");
    }
    // Per-class areas agree with the class PNG.
    for c in json["classes"].as_array().unwrap() {
        let id = c["id"].as_u64().unwrap() as u32;
        let n = ids.iter().filter(|&&v| v == id).count() as u64;
        assert_eq!(c["area"].as_u64().unwrap(), n, "{c}");
        let frac = c["fraction"].as_f64().unwrap();
        assert!((frac - n as f64 / ids.len() as f64).abs() < 1e-9);
        assert!(c["name"].is_string());
    }
    (json, ids)
}

/// The result fields of a `STEM.json` are the library's serialisation of the same
/// segmentation (`serde_json` of [`segkit::Segmentation`]), next to the image information.
fn assert_is_serialisation(json: &Value, out: &segkit::Segmentation) {
    // Through text both ways, so that both sides' floats take the same parse.
    let lib: Value = serde_json::from_str(&serde_json::to_string(out).unwrap()).unwrap();
    let lib = lib.as_object().unwrap();
    for (k, v) in lib {
        assert_eq!(
            &json[k], v,
            "field `{k}` differs from the library's serialisation"
        );
    }
    let mut want: Vec<&str> = lib.keys().map(String::as_str).collect();
    want.extend(["model", "model_source", "image", "files", "class_png"]);
    want.sort();
    let mut got: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    got.sort();
    assert_eq!(got, want);
}

/// Checks COCO RLE entries (`instances` or `segments`) against the class PNG.
fn check_rles(json: &Value, key: &str, ids: &[u32], (w, h): (u32, u32)) -> usize {
    let list = json[key].as_array().unwrap();
    for seg in list {
        let rle = &seg["segmentation"];
        assert_eq!(rle["size"], serde_json::json!([h, w]));
        let mask = segkit::segmenter::Rle::from_compressed(
            rle["counts"].as_str().unwrap(),
            h as usize,
            w as usize,
        )
        .unwrap();
        assert_eq!(mask.area(), seg["area"].as_u64().unwrap());
        let class = seg["class_id"].as_u64().unwrap() as u32;
        for (m, &c) in mask.to_mask().iter().zip(ids) {
            if *m == 1 {
                assert_eq!(c, class);
            }
        }
        assert!(seg["score"].as_f64().unwrap() > 0.0);
        assert!(seg["class_name"].is_string());
        assert_eq!(seg["bbox"].as_array().unwrap().len(), 4);
    }
    list.len()
}

#[test]
fn segkit_model_dir_on_files_dirs_and_globs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(&tmp.path().join("tiny"), 4, true);
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::copy(fixture("oneformer/photo.png"), imgs.join("photo.png")).unwrap();
    std::fs::copy(fixture("oneformer/photo.png"), imgs.join("second.PNG")).unwrap();
    std::fs::write(imgs.join("notes.txt"), "not an image").unwrap();
    let out = tmp.path().join("out").join("nested");
    let astronaut = fixture("images/astronaut.png");
    let o = segkit(
        &[
            "--model",
            s(&model),
            s(&imgs),
            s(&astronaut),
            "--alpha",
            "0.3",
            "--out",
            s(&out),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut expected: Vec<String> = ["photo", "second", "astronaut"]
        .iter()
        .flat_map(|s| {
            [
                format!("{s}.json"),
                format!("{s}_classes.png"),
                format!("{s}_color.png"),
                format!("{s}_overlay.png"),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(files_in(&out), expected);
    let (json, _) = check_outputs(&out, "photo", (128, 96), 4);
    assert_eq!(json["task"], "semantic");
    assert_eq!(json["model"], "tiny");
    let seg = segkit::Segmenter::load(&model, &Device::Cpu).unwrap();
    let photo = segkit::image::open(imgs.join("photo.png")).unwrap();
    assert_is_serialisation(&json, &seg.segment(&photo, segkit::Task::Semantic).unwrap());
    assert!(json["classes"][0]["name"]
        .as_str()
        .unwrap()
        .starts_with("thing "));
    check_outputs(&out, "astronaut", (512, 512), 4);
    // A glob reaches the same images; the results are identical.
    let out2 = tmp.path().join("out2");
    let pattern = format!("{}/*.png", s(&imgs));
    let o = segkit(
        &["-q", "--model", s(&model), &pattern, "--out", s(&out2)],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty());
    assert_eq!(files_in(&out2).len(), 4);
    for f in ["photo_classes.png", "photo_color.png", "photo.json"] {
        let same = std::fs::read(out.join(f)).unwrap() == std::fs::read(out2.join(f)).unwrap();
        assert!(same, "{f} differs");
    }
    // Only the blend differs between alpha 0.3 and the default 0.5.
    let same = std::fs::read(out.join("photo_overlay.png")).unwrap()
        == std::fs::read(out2.join("photo_overlay.png")).unwrap();
    assert!(!same);
}

#[test]
fn default_model_from_segkit_weights_and_16_bit_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("weights");
    // 300 classes without names: class ids need 16 bits.
    model_dir(&weights.join("segkit-demo"), 300, false);
    let out = tmp.path().join("out");
    let photo = fixture("oneformer/photo.png");
    let o = segkit(&[s(&photo), "--out", s(&out)], Some(&weights));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (json, _) = check_outputs(&out, "photo", (128, 96), 300);
    assert_eq!(json["model"], "segkit-demo");
    assert_eq!(json["class_png"]["bits"], 16);
    let classes = image::open(out.join("photo_classes.png")).unwrap();
    assert!(matches!(classes, image::DynamicImage::ImageLuma16(_)));
    assert!(json["classes"][0]["name"]
        .as_str()
        .unwrap()
        .starts_with("class_"));
    // A semantic model asked for instances: one line naming what it supports, no files.
    let out = tmp.path().join("out-instance");
    let o = segkit(
        &[s(&photo), "--task", "instance", "--out", s(&out)],
        Some(&weights),
    );
    let e = one_line_error(&o);
    assert!(e.contains("supports: semantic"), "{e}");
    assert!(!out.exists());
}

#[test]
fn oneformer_hf_dir_panoptic_and_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = fixture("oneformer/photo.png");
    // The fixture as committed: synthetic weights keep no segment at transformers'
    // thresholds, and the outputs say so.
    let hf = fixture("oneformer/hf_dir_safetensors");
    for task in ["panoptic", "instance", "semantic"] {
        let out = tmp.path().join(format!("plain-{task}"));
        let o = segkit(
            &[
                "--model",
                s(&hf),
                "--task",
                task,
                s(&photo),
                "--out",
                s(&out),
            ],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (json, _) = check_outputs(&out, "photo", (128, 96), 7);
        assert_eq!(json["task"], task);
    }
    // A confident variant keeps segments: their RLEs decode onto their class's pixels.
    let hf = confident_oneformer(&tmp.path().join("confident"));
    for (task, key) in [("panoptic", "segments"), ("instance", "instances")] {
        let out = tmp.path().join(task);
        let o = segkit(
            &[
                "--model",
                s(&hf),
                "--task",
                task,
                "--threshold",
                "0.3",
                s(&photo),
                "--out",
                s(&out),
            ],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (json, ids) = check_outputs(&out, "photo", (128, 96), 7);
        let mut opts = segkit::PredictOptions::default();
        opts.instance.threshold = 0.3;
        opts.panoptic.threshold = 0.3;
        let seg = segkit::Segmenter::load(&hf, &Device::Cpu)
            .unwrap()
            .with_predict_options(opts);
        let img = segkit::image::open(&photo).unwrap();
        let task_arg = if task == "panoptic" {
            segkit::Task::Panoptic
        } else {
            segkit::Task::Instance
        };
        assert_is_serialisation(&json, &seg.segment(&img, task_arg).unwrap());
        let n = check_rles(&json, key, &ids, (128, 96));
        assert!(n >= 1, "{task}: {json}");
        let covered: u64 = json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["area"].as_u64().unwrap())
            .sum();
        assert_eq!(
            covered + json["unlabeled_area"].as_u64().unwrap(),
            128 * 96,
            "{task}"
        );
        if task == "panoptic" {
            // Labels thing_0.. are no dataset segkit knows: `isthing` is unknown.
            assert!(json[key][0]["isthing"].is_null());
        }
    }
}

#[test]
fn failures_are_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(&tmp.path().join("tiny"), 4, true);
    let photo = fixture("oneformer/photo.png");
    let out = tmp.path().join("out");
    let run = |args: &[&str]| {
        let mut all = vec!["--model", s(&model), "--out", s(&out)];
        all.extend_from_slice(args);
        let o = segkit(&all, None);
        let e = one_line_error(&o);
        assert!(!out.exists(), "{e}: output directory created");
        e
    };
    // A missing input.
    let missing = tmp.path().join("missing.png");
    let e = run(&[s(&photo), s(&missing)]);
    assert!(
        e.contains("missing.png") && e.contains("does not exist"),
        "{e}"
    );
    // A text file named .png.
    let fake = tmp.path().join("fake.png");
    std::fs::write(&fake, "hello, I am text").unwrap();
    let e = run(&[s(&photo), s(&fake)]);
    assert!(e.contains("fake.png") && e.contains("not an image"), "{e}");
    // A glob matching nothing, an empty directory.
    let e = run(&[&format!("{}/*.jpg", s(tmp.path()))]);
    assert!(e.contains("no file matches"), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = run(&[s(&empty)]);
    assert!(e.contains("no .png"), "{e}");
    // Bad alpha, bad device.
    let e = run(&[s(&photo), "--alpha", "2"]);
    assert!(e.contains("--alpha"), "{e}");
    if !cfg!(feature = "cuda") {
        let e = run(&[s(&photo), "--device", "cuda"]);
        assert!(e.contains("--features cuda"), "{e}");
    }

    // Unknown model names list the valid ones.
    let o = segkit(
        &["--model", "no-such-model", s(&photo), "--out", s(&out)],
        None,
    );
    let e = one_line_error(&o);
    assert!(
        e.contains("no-such-model")
            && e.contains("segkit-demo")
            && e.contains("pspnet_r50-d8_ade20k-512x512"),
        "{e}"
    );
    assert!(!out.exists());

    // Corrupt model directories.
    let corrupt = tmp.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("config.json"), "{ not json").unwrap();
    let o = segkit(&["--model", s(&corrupt), s(&photo), "--out", s(&out)], None);
    let e = one_line_error(&o);
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );
    let truncated = tmp.path().join("truncated");
    model_dir(&truncated, 4, true);
    let bytes = std::fs::read(truncated.join("model.safetensors")).unwrap();
    std::fs::write(
        truncated.join("model.safetensors"),
        &bytes[..bytes.len() / 3],
    )
    .unwrap();
    let o = segkit(
        &["--model", s(&truncated), s(&photo), "--out", s(&out)],
        None,
    );
    let e = one_line_error(&o);
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(!out.exists());

    // Unwritable outputs: a file, a path under a file, a read-only directory.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for bad in [file.clone(), file.join("sub")] {
        let o = segkit(&["--model", s(&model), s(&photo), "--out", s(&bad)], None);
        let e = one_line_error(&o);
        assert!(e.contains("a-file") && e.contains("not a directory"), "{e}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    let ro = tmp.path().join("read-only");
    std::fs::create_dir_all(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&ro, perm).unwrap();
    // Root ignores permissions: check only where the directory really is read-only.
    if std::fs::write(ro.join("probe"), "x").is_err() {
        let o = segkit(
            &["--model", s(&model), s(&photo), "--out", s(&ro.join("out"))],
            None,
        );
        let e = one_line_error(&o);
        assert!(e.contains("not writable"), "{e}");
        assert!(files_in(&ro).is_empty());
    } else {
        segkit_core::testing::skip(
            "`segkit infer --out` into a read-only directory",
            "running as root, which may write into read-only directories",
        );
    }
}

#[test]
fn a_failure_mid_run_names_the_image_and_leaves_none_of_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(&tmp.path().join("tiny"), 4, true);
    let good = fixture("oneformer/photo.png");
    // A PNG whose header is intact but whose pixel data is cut off: it passes the up-front
    // check and fails when decoded.
    let bytes = std::fs::read(&good).unwrap();
    let broken = tmp.path().join("broken.png");
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let out = tmp.path().join("out");
    let o = segkit(
        &["--model", s(&model), s(&good), s(&broken), "--out", s(&out)],
        None,
    );
    let e = one_line_error(&o);
    assert!(
        e.contains("image 2/2") && e.contains("broken.png") && e.contains("1 earlier"),
        "{e}"
    );
    assert_eq!(
        files_in(&out),
        [
            "photo.json",
            "photo_classes.png",
            "photo_color.png",
            "photo_overlay.png"
        ]
    );
}
