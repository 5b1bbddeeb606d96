//! "No environment variable is needed for full speed": a process started without
//! `CANDLE_NUM_THREADS` gets segkit-core's default (candle's spinning element-wise pool off:
//! no worker thread, its ops on the calling thread), and a value the user sets wins. Checked
//! on the `segkit` binary, as a user runs it, through `segkit bench`'s JSON line: what
//! segkit-core's runtime decided before anything was built (`candle_pool`) and the number of
//! workers candle's element-wise pool really has after the case ran (`candle_workers`).

use std::process::Command;

/// Runs `segkit bench conv3x3_256` once with `CANDLE_NUM_THREADS` removed or set to `value`,
/// and returns its JSON line.
fn bench_json(value: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_segkit"));
    cmd.args(["bench", "conv3x3_256", "--runs", "1", "--warmup", "0"])
        .env("RAYON_NUM_THREADS", "2");
    match value {
        Some(v) => cmd.env("CANDLE_NUM_THREADS", v),
        None => cmd.env_remove("CANDLE_NUM_THREADS"),
    };
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
fn library_default_turns_candles_pool_off_without_any_variable() {
    let j = bench_json(None);
    assert_eq!(
        j["candle_pool"], "CANDLE_NUM_THREADS=1 (segkit default)",
        "{j}"
    );
    assert_eq!(j["candle_workers"], 0, "{j}");
}

#[test]
fn a_value_the_user_sets_wins() {
    let j = bench_json(Some("3"));
    assert_eq!(j["candle_pool"], "CANDLE_NUM_THREADS=3 (user)", "{j}");
    assert_eq!(j["candle_workers"], 2, "{j}");
}
