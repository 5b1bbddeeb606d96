//! Issue 14's careless-user cases against the binary: no user file is overwritten or deleted
//! (`infer DIR --out DIR`, a failed re-run, `dump --out` = an input, a training run over its
//! own inputs or an earlier run), sizes that cannot fit are refused before the allocation
//! naming the field and the file, and the messages name what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use segkit::train::data::write_toy_dataset;

fn segkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(args)
        .env_remove("SEGKIT_MEMORY_LIMIT")
        .output()
        .expect("run segkit")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit non-zero with exactly one `error: ..` line on stderr; returns that line.
fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(e.starts_with("error: "), "{e}");
    e
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn infer_never_overwrites_an_input_nor_segments_its_own_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let canvas = repo().join("examples/demo_canvas.png");
    std::fs::copy(&canvas, d.join("cat.png")).unwrap();
    // The user's own picture that happens to be named like cat.png's colour map.
    std::fs::copy(&canvas, d.join("cat_color.png")).unwrap();
    let mine = std::fs::read(d.join("cat_color.png")).unwrap();
    let e = one_line_error(&segkit(&["infer", s(d), "--out", s(d), "-q"]));
    assert!(
        e.contains("cat_color.png") && e.contains("would overwrite the input"),
        "{e}"
    );
    assert_eq!(std::fs::read(d.join("cat_color.png")).unwrap(), mine);
    assert_eq!(names(d), ["cat.png", "cat_color.png"]);

    // Without the clash, DIR --out DIR works, and a re-run does not take the first run's
    // outputs as inputs.
    std::fs::rename(d.join("cat_color.png"), d.join("dog.png")).unwrap();
    let o = segkit(&["infer", s(d), "--out", s(d), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = names(d);
    assert_eq!(first.len(), 2 + 2 * 4, "{first:?}");
    let o = segkit(&["infer", s(d), "--out", s(d)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("skipping 6 file(s)"), "{err}");
    assert!(err.contains("segmented 2 image(s)"), "{err}");
    assert_eq!(names(d), first);

    // The user's own file where an output would go, inputs elsewhere: refused, kept.
    let out = d.join("elsewhere");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("cat_overlay.png"), b"my drawing").unwrap();
    let e = one_line_error(&segkit(&[
        "infer",
        s(&d.join("cat.png")),
        "--out",
        s(&out),
        "-q",
    ]));
    assert!(
        e.contains("cat_overlay.png") && e.contains("not written"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("cat_overlay.png")).unwrap(),
        b"my drawing"
    );
    assert_eq!(names(&out), ["cat_overlay.png"]);
}

#[test]
fn infer_rerun_failing_keeps_the_previous_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let canvas = repo().join("examples/demo_canvas.png");
    let o = segkit(&["infer", s(&canvas), "--out", s(&out), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before: Vec<(String, Vec<u8>)> = names(&out)
        .into_iter()
        .map(|n| (n.clone(), std::fs::read(out.join(&n)).unwrap()))
        .collect();
    assert_eq!(before.len(), 4);
    // The re-run's third file cannot be renamed into place (a directory took its name):
    // the two files already replaced are put back as they were.
    std::fs::remove_file(out.join("demo_canvas_overlay.png")).unwrap();
    std::fs::create_dir(out.join("demo_canvas_overlay.png")).unwrap();
    let e = one_line_error(&segkit(&["infer", s(&canvas), "--out", s(&out), "-q"]));
    assert!(e.contains("demo_canvas_overlay.png"), "{e}");
    for (n, bytes) in &before[..] {
        if n != "demo_canvas_overlay.png" {
            assert_eq!(&std::fs::read(out.join(n)).unwrap(), bytes, "{n} changed");
        }
    }
    assert_eq!(names(&out).len(), 4, "{:?}", names(&out));
}

/// An input tensor file holding `input` of `shape`.
fn input_file(path: &Path, shape: &[usize]) {
    let t = candle_core::Tensor::zeros(shape, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    segkit_core::checkpoint::save_safetensors([("input", &t)], path).unwrap();
}

#[test]
fn dump_refuses_to_replace_its_inputs_and_names_the_output_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("x.safetensors");
    input_file(&input, &[1, 3, 32, 32]);
    let weights = d.join("w.safetensors");
    let o = segkit(&[
        "dump",
        "--preset",
        "resnet18",
        "--synthetic",
        "--input",
        s(&input),
        "--out",
        s(&weights),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (input_bytes, weight_bytes) = (std::fs::read(&input).unwrap(), std::fs::read(&weights));
    let dump = |out: &Path| {
        segkit(&[
            "dump",
            "--preset",
            "resnet18",
            "--synthetic",
            "--input",
            s(&input),
            "--out",
            s(out),
        ])
    };
    let e = one_line_error(&dump(&input));
    assert!(
        e.contains("refusing to write") && e.contains("--input"),
        "{e}"
    );
    let e = one_line_error(&dump(&d.join(".").join("x.safetensors")));
    assert!(e.contains("--input"), "{e}");
    let e = one_line_error(&segkit(&[
        "dump",
        "--preset",
        "resnet18",
        "--weights",
        s(&weights),
        "--allow-unused",
        "--input",
        s(&input),
        "--out",
        s(&weights),
    ]));
    assert!(e.contains("--weights"), "{e}");
    assert_eq!(std::fs::read(&input).unwrap(), input_bytes);
    assert_eq!(std::fs::read(&weights).unwrap(), weight_bytes.unwrap());

    // A missing directory names the output path (not a hidden temporary file).
    let missing = d.join("no-such-dir/out.safetensors");
    let e = one_line_error(&dump(&missing));
    assert!(
        e.contains("no-such-dir/out.safetensors")
            && e.contains("does not exist")
            && !e.contains(".out.safetensors"),
        "{e}"
    );
    // A regular file where a directory should be.
    let e = one_line_error(&dump(&input.join("out.safetensors")));
    assert!(e.contains("is a regular file, not a directory"), "{e}");
    assert!(!e.contains("os error"), "{e}");

    // An empty dimension is named.
    let empty = d.join("empty.safetensors");
    input_file(&empty, &[1, 3, 0, 64]);
    let e = one_line_error(&segkit(&[
        "dump",
        "--preset",
        "resnet18",
        "--synthetic",
        "--input",
        s(&empty),
        "--out",
        s(&d.join("o.safetensors")),
    ]));
    assert!(
        e.contains("[1, 3, 0, 64]") && e.contains("height (H) dimension is 0"),
        "{e}"
    );
}

#[test]
fn model_test_resize_beyond_memory_fails_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let demo = repo().join("crates/segkit/demo");
    std::fs::copy(
        demo.join("model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo.join("config.json")).unwrap()).unwrap();
    cfg["test_resize"] = serde_json::json!({"scale": [200000, 100000], "keep_ratio": false});
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    let canvas = repo().join("examples/demo_canvas.png");
    let out = dir.path().join("out");
    let e = one_line_error(&segkit(&[
        "infer",
        s(&canvas),
        "--model",
        s(&model),
        "--out",
        s(&out),
        "-q",
    ]));
    assert!(
        e.contains("test_resize.scale [200000, 100000]")
            && e.contains("memory limit")
            && e.contains(&format!("{}", model.join("config.json").display())),
        "{e}"
    );
    // The TTA ratio alike.
    cfg["test_resize"] = serde_json::Value::Null;
    cfg["tta"] = serde_json::json!({"scale_ratios": [1.0, 3000.0], "flip": false});
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    let e = one_line_error(&segkit(&[
        "infer",
        s(&canvas),
        "--model",
        s(&model),
        "--out",
        s(&out),
        "-q",
    ]));
    assert!(e.contains("tta.scale_ratios[1] = 3000"), "{e}");
}

/// A training config for the demo preset on a toy dataset (11 classes, 32 x 32 images).
fn train_config(dir: &Path, extra: &str) -> PathBuf {
    let data = dir.join("data");
    if !data.exists() {
        write_toy_dataset(&data, &[("train", 4), ("val", 2)], 32, 4, 1).unwrap();
    }
    let text = format!(
        r#"{{"model": {{"type": "Preset", "name": "segkit_demo_r18w16_psp_fashion-128x128"}},
            "dataset": {{"type": "Custom", "root": "data"}},
            "optimizer": {{"type": "SGD", "lr": 0.01}},
            "iterations": 4, "batch_size": 2, "output_dir": "out"{extra}}}"#
    );
    let p = dir.join("train.json");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn absurd_training_sizes_are_refused_naming_the_field_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = s(&d.join("train.json")).to_string();
    let with = |json: &str| {
        let p = train_config(d, "");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let extra: serde_json::Value = serde_json::from_str(json).unwrap();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        std::fs::write(&p, v.to_string()).unwrap();
        segkit(&["train", "--config", s(&p), "--quiet"])
    };
    let e = one_line_error(&with(r#"{"batch_size": 100000}"#));
    assert!(
        e.contains(&cfg) && e.contains("batch_size 100000") && e.contains("memory limit"),
        "{e}"
    );
    for (json, field) in [
        (
            r#"{"pipeline": [{"type": "Resize", "scale": [100000, 100000]}]}"#,
            "pipeline[0] Resize scale [100000, 100000]",
        ),
        (
            r#"{"pipeline": [{"type": "Pad", "size": [100000, 100000]}]}"#,
            "pipeline[0] Pad",
        ),
        (
            r#"{"pipeline": [{"type": "RandomResize", "scale": [512, 512], "ratio_range": [0.5, 400.0]}, {"type": "RandomCrop", "crop_size": [100000, 100000]}]}"#,
            "pipeline[1] RandomCrop crop_size [100000, 100000]",
        ),
    ] {
        let e = one_line_error(&with(json));
        assert!(e.contains(&cfg) && e.contains(field), "{json}: {e}");
    }
    // The limit is overridable: a small one refuses even the normal config.
    let p = train_config(d, "");
    let o = Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(["train", "--config", s(&p), "--quiet"])
        .env("SEGKIT_MEMORY_LIMIT", "1M")
        .output()
        .unwrap();
    let e = one_line_error(&o);
    assert!(e.contains("SEGKIT_MEMORY_LIMIT=1M"), "{e}");
    assert!(
        !d.join("out").exists(),
        "a refused run wrote its output directory"
    );
}

#[test]
fn training_messages_name_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |extra: &str| {
        let cfg = train_config(d, extra);
        segkit(&["train", "--config", s(&cfg), "--quiet"])
    };
    let cfg = s(&d.join("train.json")).to_string();
    let e = one_line_error(&run(r#", "val_limit": 0"#));
    assert!(
        e.contains(&cfg) && e.contains("`val_limit` must be at least 1"),
        "{e}"
    );
    // batch_size 1: the config's path, never a `<train config>` placeholder.
    let p = train_config(d, "");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"batch_size\": 2", "\"batch_size\": 1");
    std::fs::write(&p, text).unwrap();
    let e = one_line_error(&segkit(&["train", "--config", s(&p), "--quiet"]));
    assert!(
        e.contains(&cfg) && e.contains("`batch_size`") && !e.contains("<"),
        "{e}"
    );
    let p = train_config(d, "");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("segkit_demo_r18w16_psp_fashion-128x128", "nope");
    std::fs::write(&p, text).unwrap();
    let e = one_line_error(&segkit(&["train", "--config", s(&p), "--quiet"]));
    assert!(e.contains(&cfg) && e.contains("`model.name`"), "{e}");

    // An output directory that is a regular file.
    let p = train_config(d, "");
    std::fs::write(d.join("out"), b"not a directory").unwrap();
    let e = one_line_error(&segkit(&["train", "--config", s(&p), "--quiet"]));
    assert!(
        e.contains("regular file, not a directory") && !e.contains("os error 17"),
        "{e}"
    );
    std::fs::remove_file(d.join("out")).unwrap();

    // Outputs over inputs: output_dir "." with the training config named config.json.
    std::fs::copy(&p, d.join("config.json")).unwrap();
    let text = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"output_dir\": \"out\"", "\"output_dir\": \".\"");
    std::fs::write(d.join("config.json"), &text).unwrap();
    let e = one_line_error(&segkit(&["train", "--config", s(&d.join("config.json"))]));
    assert!(e.contains("over the training config"), "{e}");
    assert_eq!(
        std::fs::read_to_string(d.join("config.json")).unwrap(),
        text
    );

    // eval: --batch-size 0 and --limit 0 are errors, not a silent 1 or a NaN.
    for flag in ["--batch-size", "--limit"] {
        let o = segkit(&[
            "eval",
            "--config",
            s(&p),
            "--weights",
            s(&d.join("w")),
            flag,
            "0",
        ]);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(flag) && e.contains('0'), "{e}");
    }
}

/// Starts `segkit train` on `cfg` and returns once a checkpoint write is in progress (its
/// temporary file exists), with the child still running.
fn start_and_catch_a_write(cfg: &Path, out: &Path) -> std::process::Child {
    let args = ["train", "--config", s(cfg), "--quiet", "--resume"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(args)
        .stderr(std::fs::File::create(out.with_file_name("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    let tmp = format!(".checkpoint.safetensors.tmp-{}", child.id());
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs() < 120 {
        if out.join(&tmp).exists() {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(out.with_file_name("stderr.txt")).unwrap_or_default();
            panic!("training ended ({status}) before a checkpoint write was caught: {err}");
        }
        std::thread::yield_now();
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no checkpoint write seen in 120 s");
}

fn temps(out: &Path) -> Vec<String> {
    names(out)
        .into_iter()
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn interrupted_checkpoint_writes_leave_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A checkpoint every iteration, many iterations: most of the time is spent writing.
    let cfg = train_config(
        d,
        r#", "checkpoint_interval": 1, "log_interval": 1, "pipeline": []"#,
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"iterations\": 4", "\"iterations\": 100000");
    std::fs::write(&cfg, text).unwrap();
    let out = d.join("out");

    // A first checkpoint, then SIGKILL mid-write of a later one leaves the temporary file ...
    let o = segkit(&["train", "--config", s(&cfg), "--stop-at", "1", "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut child = start_and_catch_a_write(&cfg, &out);
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let left = temps(&out);
    assert!(
        left.iter().any(|n| n.ends_with(&format!(".tmp-{pid}"))),
        "SIGKILL mid-write left no temporary file: {left:?}"
    );
    // ... which the next start removes; it resumes from the last complete checkpoint.
    let mut child = start_and_catch_a_write(&cfg, &out);
    assert!(
        !names(&out)
            .iter()
            .any(|n| n.ends_with(&format!(".tmp-{pid}"))),
        "the dead run's temporary file is still there"
    );

    // SIGTERM and SIGINT mid-write: the write finishes, nothing is left behind.
    for sig in ["TERM", "INT"] {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let st = child.wait().unwrap();
        assert!(!st.success(), "SIG{sig}: {st}");
        assert_eq!(
            temps(&out),
            Vec::<String>::new(),
            "SIG{sig} left a temporary file"
        );
        child = start_and_catch_a_write(&cfg, &out);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // After all that, the checkpoint is whole and a resumed run works (and removes what the
    // last SIGKILL left).
    let text = std::fs::read_to_string(&cfg).unwrap();
    let ck = segkit::train::checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let done: usize = ck.metadata["iteration"].parse().unwrap();
    assert!(done >= 3, "{done}");
    let text = text.replace(
        "\"iterations\": 100000",
        &format!("\"iterations\": {}", done + 1),
    );
    std::fs::write(&cfg, text).unwrap();
    let o = segkit(&["train", "--config", s(&cfg), "--resume", "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(temps(&out), Vec::<String>::new());
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn a_fresh_run_does_not_replace_an_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = train_config(dir.path(), "");
    let o = segkit(&["train", "--config", s(&cfg), "--stop-at", "1", "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = dir.path().join("out/checkpoint.safetensors");
    let before = std::fs::read(&ck).unwrap();
    let e = one_line_error(&segkit(&["train", "--config", s(&cfg), "--quiet"]));
    assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
    assert_eq!(std::fs::read(&ck).unwrap(), before);
}
