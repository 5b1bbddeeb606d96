//! End-to-end tests of the `segkit` binary: `segkit dump` on a checkpoint written by
//! `torch.save(model.state_dict())` reproduces torchvision's C5, and bad input fails with one
//! clear line and a non-zero exit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use segkit_core::testing::synthetic_input;
use segkit_tests::{assert_sampled_close, fixture_path, load_fixture};

fn segkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(args)
        .output()
        .expect("run segkit")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn gunzip(src: &Path, dst: &Path) {
    let mut d = flate2::read::GzDecoder::new(std::fs::File::open(src).expect("open fixture"));
    let mut buf = Vec::new();
    d.read_to_end(&mut buf).expect("gunzip");
    std::fs::write(dst, buf).expect("write");
}

fn write_input(dir: &Path) -> PathBuf {
    let x = synthetic_input("input", (1, 3, 97, 129), &Device::Cpu).unwrap();
    let p = dir.join("input.safetensors");
    candle_core::safetensors::save(&[("input", x)].into_iter().collect(), &p).unwrap();
    p
}

#[test]
fn dump_torchvision_resnet50_pth_matches_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("resnet50.pth");
    gunzip(&fixture_path("dump/resnet50_torchvision.pth.gz"), &pth);
    let input = write_input(dir.path());
    let out = dir.path().join("out.safetensors");
    let o = segkit(&[
        "dump",
        "--preset",
        "resnet50",
        "--weights",
        pth.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "segkit dump failed: {}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    for k in ["c2", "c3", "c4", "c5"] {
        assert!(got.contains_key(k), "missing output {k}");
    }
    let f = load_fixture("dump/resnet50_torchvision_c5.safetensors");
    assert_sampled_close("c5", &got["c5"], &f);
}

#[test]
fn dump_list_names_presets() {
    let o = segkit(&["dump", "--list"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for p in ["resnet50", "resnet101", "resnet50d_os8", "resnetv1c50_d8"] {
        assert!(s.lines().any(|l| l.starts_with(p)), "--list lacks {p}: {s}");
    }
}

#[test]
fn unknown_preset_lists_valid_ones() {
    let o = segkit(&[
        "dump",
        "--preset",
        "resnet51",
        "--synthetic",
        "--input",
        "x",
        "--out",
        "y",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("unknown preset `resnet51`") && e.contains("resnet50"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
}

#[test]
fn bad_checkpoints_fail_cleanly_and_keep_outputs_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"user data").unwrap();
    let truncated = dir.path().join("truncated.pth");
    let full = dir.path().join("full.pth");
    gunzip(&fixture_path("dump/resnet50_torchvision.pth.gz"), &full);
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let cases: [(&str, &Path, &str); 4] = [
        ("resnet50", &truncated, "truncated.pth"),
        ("resnet50", &text, "notes.pth"),
        ("resnet50", &dir.path().join("missing.pth"), "missing.pth"),
        // A ResNet-50 checkpoint is not a ResNet-101: a missing key is named.
        ("resnet101", &full, "layer3.6"),
    ];
    for (preset, ckpt, needle) in cases {
        let o = segkit(&[
            "dump",
            "--preset",
            preset,
            "--weights",
            ckpt.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{preset} {needle} should fail");
        assert!(e.contains(needle), "error should name {needle}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"user data",
            "output clobbered"
        );
    }
}

#[test]
fn bad_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("model.json");
    std::fs::write(&cfg, r#"{"type": "VGG", "depth": 50}"#).unwrap();
    let o = segkit(&[
        "dump",
        "--config",
        cfg.to_str().unwrap(),
        "--synthetic",
        "--input",
        "x",
        "--out",
        "y",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("model.json") && e.contains("ResNet"), "{e}");
}

/// `segkit dump` on a directory written by transformers' `save_pretrained` reproduces
/// transformers' OneFormer logits (fixture: tests/parity/gen_oneformer.py), and writes the
/// instance post-processing with its segments JSON.
#[test]
fn dump_oneformer_hf_dir_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let x = synthetic_input("oneformer.hfdir", (1, 3, 45, 70), &Device::Cpu).unwrap();
    let input = dir.path().join("input.safetensors");
    candle_core::safetensors::save(&[("input", x)].into_iter().collect(), &input).unwrap();
    let out = dir.path().join("out.safetensors");
    let hf = fixture_path("oneformer/hf_dir_safetensors");
    let o = segkit(&[
        "dump",
        "--weights",
        hf.to_str().unwrap(),
        "--task",
        "instance",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let want = load_fixture("oneformer/hf_dir_outputs.safetensors");
    assert_sampled_close("class_queries_logits", &got["class_queries_logits"], &want);
    assert_sampled_close("masks_queries_logits", &got["masks_queries_logits"], &want);
    assert_eq!(got["segmentation"].dims(), &[1, 45, 70]);
    let segs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert!(segs.is_array());
    // A bad task name is one clear line and writes nothing.
    let out2 = dir.path().join("out2.safetensors");
    let o = segkit(&[
        "dump",
        "--weights",
        hf.to_str().unwrap(),
        "--task",
        "depth",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("semantic"), "{}", stderr(&o));
    assert!(!out2.exists());
}
