//! "No environment variable is needed for full speed": a process started without
//! `CANDLE_BARRIER_POOL_SPIN_LIMIT` or `CANDLE_NUM_THREADS` gets segkit-core's default (candle's
//! element-wise pool with one worker per core besides the caller, each parking right after
//! every op instead of spinning), and values the user sets win. Checked on the `segkit`
//! binary, as a user runs it, through `segkit bench`'s JSON line: what segkit-core's runtime
//! decided before anything was built (`candle_pool`) and the number of workers candle's
//! element-wise pool really has after the case ran (`candle_workers`). The same holds for the
//! allocator: an inference case runs with segkit's 10 s purge delay (`purge_delay_ms`) unless
//! `MIMALLOC_PURGE_DELAY` is set.

use std::process::Command;

/// Runs `segkit bench conv3x3_256` once on 2 rayon threads with the two candle variables
/// removed or set as given (and `MIMALLOC_PURGE_DELAY` removed), and returns its JSON line.
fn bench_json(spin: Option<&str>, threads: Option<&str>) -> serde_json::Value {
    bench_json_with(&[
        ("CANDLE_BARRIER_POOL_SPIN_LIMIT", spin),
        ("CANDLE_NUM_THREADS", threads),
        ("MIMALLOC_PURGE_DELAY", None),
    ])
}

/// As [`bench_json`], with each variable of `vars` removed (`None`) or set.
fn bench_json_with(vars: &[(&str, Option<&str>)]) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_segkit"));
    cmd.args(["bench", "conv3x3_256", "--runs", "1", "--warmup", "0"])
        .env("RAYON_NUM_THREADS", "2");
    for &(var, value) in vars {
        match value {
            Some(v) => cmd.env(var, v),
            None => cmd.env_remove(var),
        };
    }
    let out = cmd.output().expect("run segkit bench");
    assert!(
        out.status.success(),
        "segkit bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line}: {e}"))
}

#[test]
fn library_default_parks_candles_pool_without_any_variable() {
    let j = bench_json(None, None);
    assert_eq!(
        j["candle_pool"], "CANDLE_BARRIER_POOL_SPIN_LIMIT=0 (segkit default)",
        "{j}"
    );
    // candle sizes its pool from RAYON_NUM_THREADS: the caller plus one worker.
    assert_eq!(j["candle_workers"], 1, "{j}");
    // Inference keeps freed memory for 10 s before giving it back (crates/cli/src/alloc.rs).
    assert_eq!(j["purge_delay_ms"], 10_000, "{j}");
}

#[test]
fn the_users_purge_delay_wins() {
    let j = bench_json_with(&[("MIMALLOC_PURGE_DELAY", Some("250"))]);
    assert_eq!(j["purge_delay_ms"], 250, "{j}");
}

#[test]
fn values_the_user_sets_win() {
    let j = bench_json(Some("5000"), Some("3"));
    assert_eq!(
        j["candle_pool"], "CANDLE_BARRIER_POOL_SPIN_LIMIT=5000 (user)",
        "{j}"
    );
    assert_eq!(j["candle_workers"], 2, "{j}");
    let j = bench_json(None, Some("1"));
    assert_eq!(
        j["candle_pool"], "CANDLE_BARRIER_POOL_SPIN_LIMIT=0 (segkit default)",
        "{j}"
    );
    assert_eq!(j["candle_workers"], 0, "{j}");
}
