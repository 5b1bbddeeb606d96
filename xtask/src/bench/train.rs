//! The training-step cases of `cargo xtask bench` (`train_*`): `segkit bench CASE --size S
//! --batch B` next to `tests/parity/bench_torch_train.py` (mmseg's model from its own config,
//! SyncBN -> BN, `model.loss` + backward + SGD), each in a fresh process; time and peak
//! resident memory per phase. Shapes: the ADE20K cases `--batch` x 3 x `--size` x `--size`,
//! `train_pspnet_r50-d8_cityscapes` `--batch` x 3 x `--size` x 2`--size` (the defaults give
//! 512x1024, batch 2), `train_demo_b8` 8 x 3 x 128 x 128; each row names its shape.
//! `train_oneformer_swin_t` (issue 15) is transformers' `OneFormerForUniversalSegmentation`
//! against segkit-train's `OneFormerTask` (AdamW; see crates/cli/src/bench/train_oneformer.rs),
//! at 1 x 3 x 128 x 128 unless `--size` / `--batch` are given: at 512 x 512, batch 2,
//! transformers' step would need more memory than the 24 GB machines this runs on.

use std::process::Command;

use super::{field, run_sides, Sides};

/// `--size`, `--batch` (each case's default where not given), `--train-runs` of
/// `cargo xtask bench`.
pub struct TrainArgs {
    pub size: Option<String>,
    pub batch: Option<String>,
    pub runs: String,
}

impl Default for TrainArgs {
    fn default() -> Self {
        Self {
            size: None,
            batch: None,
            runs: "3".into(),
        }
    }
}

/// The `--size` and `--batch` a case runs at: the user's, else the case's default (OneFormer's
/// 1 x 128 x 128, everyone else's 2 x 512 x 512).
fn case_shape<'a>(case: &str, a: &'a TrainArgs) -> (&'a str, &'a str) {
    let (size, batch) = if case == "train_oneformer_swin_t" {
        ("128", "1")
    } else {
        ("512", "2")
    };
    (
        a.size.as_deref().unwrap_or(size),
        a.batch.as_deref().unwrap_or(batch),
    )
}

pub fn run(cases: &[String], a: &TrainArgs, sides: &Sides<'_>) -> Result<(), String> {
    let (threads, segkit, py) = (sides.threads, sides.segkit, sides.py);
    let script = sides.script("bench_torch_train.py");
    println!();
    println!(
        "training step (forward + losses, backward, SGD; OneFormer: clipping + AdamW), shape per row, {} timed steps after 1 warm-up (median); peak MB = resident memory per phase",
        a.runs
    );
    println!(
        "| case | segkit ms | PyTorch ms | time ratio | segkit peak MB | PyTorch peak MB | peak ratio | segkit fwd / bwd / opt MB | PyTorch fwd / bwd / opt MB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for case in cases {
        let (size, batch) = case_shape(case, a);
        let args = [
            "--size", size, "--batch", batch, "--runs", &a.runs, "--warmup", "1",
        ];
        let Some((sj, tj)) = run_sides(
            case,
            Command::new(segkit).args(["bench", case]).args(args),
            Command::new(py).arg(&script).arg(case).args(args),
            threads,
            9,
        )?
        else {
            continue;
        };
        let g = |j: &str, k| field(j, k).unwrap_or(f64::NAN);
        let (sm, tm) = (g(&sj, "median_ms"), g(&tj, "median_ms"));
        let (sp, tp) = (g(&sj, "peak_rss_mb"), g(&tj, "peak_rss_mb"));
        let phases = |j: &str| {
            format!(
                "{:.0} / {:.0} / {:.0}",
                g(j, "fwd_peak_mb"),
                g(j, "bwd_peak_mb"),
                g(j, "opt_peak_mb")
            )
        };
        let shape = format!(
            "{}x3x{}x{}",
            g(&sj, "batch"),
            g(&sj, "height"),
            g(&sj, "width")
        );
        println!(
            "| {case} ({shape}) | {sm:.1} | {tm:.1} | {:.2}x | {sp:.0} | {tp:.0} | {:.2}x | {} | {} |",
            sm / tm,
            sp / tp,
            phases(&sj),
            phases(&tj)
        );
    }
    Ok(())
}
