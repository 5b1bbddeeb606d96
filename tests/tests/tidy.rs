//! Repository hygiene checks, run as ordinary tests (as rust-analyzer's tidy tests).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn library_crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("src/lib.rs").exists())
        .collect();
    v.sort();
    v
}

#[test]
fn library_crates_deny_missing_docs() {
    let crates = library_crates();
    assert!(crates.len() >= 2, "expected library crates under crates/");
    for c in crates {
        let lib = std::fs::read_to_string(c.join("src/lib.rs")).unwrap();
        assert!(
            lib.contains("#![deny(missing_docs)]"),
            "{} lacks #![deny(missing_docs)]",
            c.display()
        );
    }
}

#[test]
fn no_large_tracked_files() {
    let out = match Command::new("git")
        .arg("ls-files")
        .current_dir(root())
        .output()
    {
        Ok(o) if o.status.success() => o,
        _ => return, // not a git checkout (e.g. a source tarball): nothing to check
    };
    for f in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(m) = std::fs::metadata(root().join(f)) {
            assert!(
                m.len() <= 5 * 1024 * 1024,
                "{f} is over 5 MiB ({} bytes)",
                m.len()
            );
        }
    }
}

#[test]
fn formatted() {
    let ok = Command::new("cargo")
        .args(["fmt", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("rustfmt not installed; skipping the format check");
        return;
    }
    let o = Command::new("cargo")
        .args(["fmt", "--all", "--", "--check", "-l"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "run `cargo fmt --all`; unformatted files:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
