//! The end-to-end (`e2e_*`) and batch-throughput (`*_b8`) cases of `cargo xtask bench`: the
//! same two processes per case as the inference table (`segkit bench CASE`,
//! `tests/parity/bench_torch.py CASE`, which hands them to `bench_torch_e2e.py`), each in its
//! own table. They are the slow ones (an e2e PSPNet run is a 2048x1024 forward pass, a b8 run
//! eight 512x512 ones), so they run `--heavy-runs` timed runs (default 3) after 1 warm-up.

use std::process::Command;

use super::{field, run_sides, Sides};

/// Images per run of the `*_b8` cases (crates/cli/src/bench/throughput.rs).
const BATCH: f64 = 8.0;

/// Whether `case` belongs to these tables.
pub fn is_heavy(case: &str) -> bool {
    case.starts_with("e2e_") || (case.ends_with("_b8") && !case.starts_with("train_"))
}

/// Runs the e2e cases, then the throughput cases, among `cases`, printing one table each.
pub fn run(cases: &[String], runs: &str, sides: &Sides<'_>) -> Result<(), String> {
    let (threads, segkit, py) = (sides.threads, sides.segkit, sides.py);
    let (e2e, b8): (Vec<&String>, Vec<&String>) = cases.iter().partition(|c| c.starts_with("e2e_"));
    let script = sides.script("bench_torch.py");
    let args = ["--runs", runs, "--warmup", "1"];
    let side = |case: &str| {
        run_sides(
            case,
            Command::new(segkit).args(["bench", case]).args(args),
            Command::new(py).arg(&script).arg(case).args(args),
            threads,
            9,
        )
    };
    let g = |j: &str, k| field(j, k).unwrap_or(f64::NAN);
    if !e2e.is_empty() {
        println!();
        println!(
            "end to end, one image per run (model loaded once, untimed), {runs} timed runs after 1 warm-up (median)"
        );
        println!(
            "| case | segkit ms/image | PyTorch ms/image | time ratio | segkit peak MB | PyTorch peak MB | peak ratio | segkit fwd MB | PyTorch fwd MB |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for case in e2e {
            let Some((sj, tj)) = side(case)? else {
                continue;
            };
            let (sm, tm) = (g(&sj, "median_ms"), g(&tj, "median_ms"));
            let (sp, tp) = (g(&sj, "peak_rss_mb"), g(&tj, "peak_rss_mb"));
            println!(
                "| {case} | {sm:.1} | {tm:.1} | {:.2}x | {sp:.0} | {tp:.0} | {:.2}x | {:.0} | {:.0} |",
                sm / tm,
                sp / tp,
                g(&sj, "forward_mb"),
                g(&tj, "forward_mb")
            );
        }
    }
    if !b8.is_empty() {
        println!();
        println!(
            "throughput, batch 8 x 3 x 512 x 512 per run, {runs} timed runs after 1 warm-up (median)"
        );
        println!(
            "| case | segkit images/s | PyTorch images/s | speed ratio | segkit ms/batch | PyTorch ms/batch | segkit peak MB | PyTorch peak MB | peak ratio |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for case in b8 {
            let Some((sj, tj)) = side(case)? else {
                continue;
            };
            let (sm, tm) = (g(&sj, "median_ms"), g(&tj, "median_ms"));
            let (sp, tp) = (g(&sj, "peak_rss_mb"), g(&tj, "peak_rss_mb"));
            println!(
                "| {case} | {:.2} | {:.2} | {:.2}x | {sm:.1} | {tm:.1} | {sp:.0} | {tp:.0} | {:.2}x |",
                BATCH * 1e3 / sm,
                BATCH * 1e3 / tm,
                tm / sm,
                sp / tp
            );
        }
        println!("speed ratio = segkit images/s / PyTorch images/s: above 1.00x segkit is faster");
    }
    Ok(())
}
