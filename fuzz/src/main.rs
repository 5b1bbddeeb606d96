//! `segkit-fuzz`: mutation fuzzing of segkit's untrusted-input parsers, on stable Rust.
//!
//! ```text
//! segkit-fuzz run [--seconds N] [--seed S] [--jobs J] [--out DIR] [TARGET..]
//! segkit-fuzz replay TARGET FILE..
//! segkit-fuzz list
//! ```
//!
//! `run` fuzzes each target for N seconds (default 60) in a worker process of its own (this
//! binary, `worker` sub-command), which mutates the target's corpus (fuzz/corpus/TARGET plus
//! every input the parser accepted) with a seeded RNG and writes each input to a file before
//! running it. The supervisor watches the worker: an exit by a panic (made an abort), an abort,
//! a stack overflow (SIGSEGV / SIGABRT), a hang (one input running longer than 10 s,
//! `SEGKIT_FUZZ_HANG_SECS`) or memory
//! exhaustion (resident memory over 2 GiB) is a crash; the input is copied to
//! DIR/crashes/TARGET-N.bin with the worker's last words, and the worker restarts with the next
//! seed. The exit status is 1 if anything crashed. See docs/FUZZING.md.

mod mutate;
mod supervise;
mod targets;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

/// Command-line options of `run`.
pub struct RunOptions {
    pub seconds: f64,
    pub seed: u64,
    pub jobs: usize,
    pub out: PathBuf,
    pub targets: Vec<&'static targets::Target>,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: segkit-fuzz run [--seconds N] [--seed S] [--jobs J] [--out DIR] [TARGET..]\n       \
         segkit-fuzz replay TARGET FILE..\n       segkit-fuzz list"
    );
    ExitCode::from(2)
}

fn parse_run(args: &[String]) -> Result<RunOptions, String> {
    let mut o = RunOptions {
        seconds: 60.0,
        seed: 1,
        jobs: 1,
        out: PathBuf::from("target/fuzz"),
        targets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{what} needs a value"))
        };
        match a.as_str() {
            "--seconds" => o.seconds = value(a)?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--seed" => o.seed = value(a)?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--jobs" => o.jobs = value(a)?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--out" => o.out = PathBuf::from(value(a)?),
            name => o
                .targets
                .push(targets::by_name(name).ok_or_else(|| format!("unknown target `{name}`"))?),
        }
    }
    if o.targets.is_empty() {
        o.targets = targets::TARGETS.iter().collect();
    }
    o.jobs = o.jobs.max(1);
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => match parse_run(&args[1..]) {
            Ok(o) => supervise::run(&o),
            Err(e) => {
                eprintln!("segkit-fuzz: {e}");
                usage()
            }
        },
        Some("worker") => worker::main(&args[1..]),
        Some("replay") if args.len() >= 3 => worker::replay(&args[1], &args[2..]),
        Some("list") => {
            for t in targets::TARGETS {
                println!("{:<14} {}", t.name, t.about);
            }
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
