//! Every input a fuzz run ever crashed on, kept under fuzz/regressions/<target>/, replayed
//! through its target: each must now be handled (accepted or refused with an error) without a
//! panic, an abort or a stack overflow.
//!
//! - image/alloc-*.bin (segkit-fuzz campaign, seed 2026): PNG and JPEG headers declaring up
//!   to 37 TB of pixels made the `image` crate abort on the allocation ("memory allocation of
//!   37060199157312 bytes failed"); segkit_data::image now refuses a decoded size over 1 GiB
//!   before the decoder allocates it.

use std::path::Path;
use std::process::Command;

#[test]
fn saved_crashes_are_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut n = 0;
    for target in std::fs::read_dir(&root).expect("fuzz/regressions") {
        let target = target.expect("entry").path();
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut files: Vec<_> = std::fs::read_dir(&target)
            .expect("target folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        n += files.len();
        let out = Command::new(env!("CARGO_BIN_EXE_segkit-fuzz"))
            .arg("replay")
            .arg(&name)
            .args(&files)
            .output()
            .expect("run segkit-fuzz replay");
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Each file was run to its end: one line per file.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            files.len()
        );
    }
    assert!(n >= 4, "expected the saved inputs under {}", root.display());
}
