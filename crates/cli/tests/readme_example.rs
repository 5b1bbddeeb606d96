//! The README's main command, `segkit infer examples/demo_canvas.png --out DIR`, with the
//! default (committed demo) model, and the figure the README gives for it.

use std::path::Path;
use std::process::Command;

/// The README's main command: `segkit infer examples/demo_canvas.png --out DIR` with the
/// default (committed demo) model. The example comes with ground truth; the image's mIoU over
/// its ground-truth classes must be the README's figure.
#[test]
fn readme_main_command_segments_the_bundled_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_segkit"))
        .current_dir(&root)
        .args(["infer", "examples/demo_canvas.png", "--out"])
        .arg(out.path())
        .output()
        .expect("run segkit");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "demo_canvas_classes.png",
        "demo_canvas_color.png",
        "demo_canvas_overlay.png",
        "demo_canvas.json",
    ] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    let pred = image::open(out.path().join("demo_canvas_classes.png"))
        .unwrap()
        .to_luma8();
    let gt = image::open(root.join("examples/demo_canvas_gt.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(pred.dimensions(), gt.dimensions());
    let mut ious = Vec::new();
    for c in 0..=255u8 {
        let (mut inter, mut union, mut in_gt) = (0u64, 0u64, false);
        for (p, g) in pred.pixels().zip(gt.pixels()) {
            let (a, b) = (p.0[0] == c, g.0[0] == c);
            in_gt |= b;
            inter += u64::from(a && b);
            union += u64::from(a || b);
        }
        if in_gt {
            ious.push(inter as f64 / union as f64);
        }
    }
    let miou = ious.iter().sum::<f64>() / ious.len() as f64;
    // The figure the README gives for this command, to its one decimal of a percent.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let key = "the command's mIoU against it (";
    let at = readme
        .find(key)
        .unwrap_or_else(|| panic!("README.md no longer says `{key}`: update this test"));
    let rest = &readme[at + key.len()..];
    let claimed: f64 = rest[..rest.find('%').unwrap()].parse().unwrap();
    eprintln!(
        "example mIoU {:.3}% over {} classes; README {claimed}%",
        miou * 100.0,
        ious.len()
    );
    assert!(
        (miou * 100.0 - claimed).abs() <= 0.05,
        "example mIoU {}% but the README says {claimed}%",
        miou * 100.0
    );
}
