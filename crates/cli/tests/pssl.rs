//! `segkit pssl generate` end to end: a run killed (SIGKILL) mid-way and started again writes
//! byte-identical labels to an uninterrupted run, and leaves no temporary file; every label
//! reads back with its class and deciles 0..=9.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use segkit::models::classifier::{Classifier, ClassifierConfig};
use segkit::models::ModelConfig;
use segkit::train::pssl::PsslLabel;

const IMAGES: usize = 40;

fn write_model(dir: &Path, name: &str, depth: usize, width: usize) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let cfg = ClassifierConfig::resnet(name, depth, width, 10);
    let vm = VarMap::new();
    Classifier::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    vm.save(d.join("model.safetensors")).unwrap();
    let json = ModelConfig::Classifier(Box::new(cfg)).to_json_pretty();
    std::fs::write(d.join("config.json"), json).unwrap();
    d
}

fn write_images(dir: &Path) -> (PathBuf, PathBuf) {
    let imgs = dir.join("images");
    std::fs::create_dir_all(&imgs).unwrap();
    let mut lines = String::new();
    for i in 0..IMAGES {
        let img = image::RgbImage::from_fn(40, 40, |x, y| {
            let v = ((x * 7 + y * 13 + i as u32 * 31) % 255) as u8;
            image::Rgb([v, v.wrapping_mul(3), 255 - v])
        });
        let name = format!("img_{i:03}.png");
        img.save(imgs.join(&name)).unwrap();
        lines.push_str(&format!("{name} {}\n", i % 10));
    }
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, lines).unwrap();
    (imgs, labels)
}

fn command(models: &[PathBuf], imgs: &Path, labels: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segkit"));
    c.args([
        "pssl",
        "generate",
        "--quiet",
        "--samples",
        "12",
        "--batch",
        "6",
        "--models",
    ]);
    c.args(models);
    c.arg("--images")
        .arg(imgs)
        .arg("--labels")
        .arg(labels)
        .arg("--out")
        .arg(out);
    c
}

fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v.into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect()
}

#[test]
fn killed_and_restarted_run_writes_identical_labels() {
    let dir = tempfile::tempdir().unwrap();
    let models = vec![
        write_model(dir.path(), "r18_w8", 18, 8),
        write_model(dir.path(), "r34_w4", 34, 4),
    ];
    let (imgs, labels) = write_images(dir.path());

    let full = dir.path().join("full");
    let st = command(&models, &imgs, &labels, &full).status().unwrap();
    assert!(st.success());
    let want = pngs(&full);
    assert_eq!(want.len(), IMAGES);

    let resumed = dir.path().join("resumed");
    let mut child = command(&models, &imgs, &labels, &resumed).spawn().unwrap();
    let t0 = Instant::now();
    while pngs(&resumed).len() < 3 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let partial = pngs(&resumed).len();
    assert!(
        (3..IMAGES).contains(&partial),
        "killed after {partial} of {IMAGES} labels"
    );

    let st = command(&models, &imgs, &labels, &resumed).status().unwrap();
    assert!(st.success());
    let got = pngs(&resumed);
    assert_eq!(got.len(), IMAGES);
    for (a, b) in want.iter().zip(&got) {
        assert_eq!(a.file_name(), b.file_name());
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{}",
            b.display()
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&resumed)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    for (i, p) in want.iter().enumerate() {
        let l = PsslLabel::read(p).unwrap();
        assert_eq!((l.width, l.height, l.class), (40, 40, (i % 10) as u32));
        assert!(l.deciles.iter().all(|d| *d <= 9));
        // About a tenth of the pixels are in D9 (ties aside).
        let d9 = l.deciles.iter().filter(|d| **d == 9).count();
        assert!(d9 > 0 && d9 <= 1600 / 10 + 1, "{d9}");
    }
}

#[test]
fn bad_labels_file_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let models = vec![write_model(dir.path(), "m", 18, 4)];
    let (imgs, _) = write_images(dir.path());
    let labels = dir.path().join("bad.txt");
    std::fs::write(&labels, "img_000.png 1\nimg_001.png x\n").unwrap();
    let o = command(&models, &imgs, &labels, &dir.path().join("o"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("bad.txt") && e.contains("line 2"), "{e}");
}
