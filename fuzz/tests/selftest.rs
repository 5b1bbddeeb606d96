//! The supervisor catches every kind of failure, saves the input and fails the run: a panic,
//! an abort, a stack overflow, a hang and memory exhaustion, each raised on purpose by the
//! `selftest` target (`SEGKIT_FUZZ_SELFTEST`).

use std::process::Command;

#[test]
fn every_failure_is_caught_and_saved() {
    let exe = env!("CARGO_BIN_EXE_segkit-fuzz");
    let dir = std::env::temp_dir().join(format!("segkit-fuzz-selftest-{}", std::process::id()));
    // A hang is declared after 2 s without progress here (10 s by default).
    for (mode, seconds, says) in [
        ("panic", "3", "worker died"),
        ("abort", "3", "worker died"),
        ("overflow", "3", "worker died"),
        ("memory", "6", "memory"),
        ("hang", "5", "hang"),
    ] {
        let out = dir.join(mode);
        let r = Command::new(exe)
            .args(["run", "--seconds", seconds, "--out"])
            .arg(&out)
            .arg("selftest")
            .env("SEGKIT_FUZZ_SELFTEST", mode)
            .env("SEGKIT_FUZZ_HANG_SECS", "2")
            .output()
            .expect("run segkit-fuzz");
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert_eq!(r.status.code(), Some(1), "{mode}: {stdout}");
        assert!(stdout.contains(says), "{mode}: {stdout}");
        let saved = out.join("crashes/selftest-0.bin");
        assert!(saved.is_file(), "{mode}: no saved input: {stdout}");
        let why = std::fs::read_to_string(out.join("crashes/selftest-0.txt")).unwrap_or_default();
        if mode == "panic" {
            assert!(why.contains("selftest panic"), "{why}");
        }
        if mode == "overflow" {
            assert!(why.contains("overflowed its stack"), "{why}");
        }
    }
    // Without a failure mode the target accepts nothing and the run passes.
    let r = Command::new(exe)
        .args(["run", "--seconds", "1", "--out"])
        .arg(dir.join("none"))
        .arg("selftest")
        .env_remove("SEGKIT_FUZZ_SELFTEST")
        .output()
        .expect("run segkit-fuzz");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stdout));
    let _ = std::fs::remove_dir_all(&dir);
}
