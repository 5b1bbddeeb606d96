//! The worker process: mutates one target's corpus and runs the inputs until its deadline.
//!
//! `segkit-fuzz worker TARGET SEED SECONDS DIR`: before each input it writes the input to
//! `DIR/TARGET.cur` (the supervisor saves it if this process dies), every 64 inputs it writes
//! the count so far to `DIR/TARGET.count`, and at the end it prints `executed N accepted A
//! corpus C`. A panic aborts the process (the hook prints the panic first), so that every
//! failure looks the same to the supervisor: death by a signal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::mutate::Rng;
use crate::targets::{self, Target};

/// At most this many inputs are kept in the corpus (seeds plus accepted inputs).
const MAX_CORPUS: usize = 512;

/// The committed seed corpus of a target: every file of `fuzz/corpus/<name>/`, sorted.
pub fn seeds(t: &Target) -> Vec<Vec<u8>> {
    if t.name == targets::SELFTEST.name {
        return vec![b"selftest".to_vec()];
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(t.name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

pub fn main(args: &[String]) -> ExitCode {
    let [name, seed, seconds, dir] = args else {
        eprintln!("usage: segkit-fuzz worker TARGET SEED SECONDS DIR");
        return ExitCode::from(2);
    };
    let (Some(t), Ok(seed), Ok(seconds)) = (
        targets::by_name(name),
        seed.parse::<u64>(),
        seconds.parse::<f64>(),
    ) else {
        eprintln!("segkit-fuzz worker: bad arguments {args:?}");
        return ExitCode::from(2);
    };
    abort_on_panic();
    let dir = PathBuf::from(dir);
    let cur = dir.join(format!("{name}.cur"));
    let count_file = dir.join(format!("{name}.count"));
    let mut corpus = seeds(t);
    if corpus.is_empty() {
        eprintln!("segkit-fuzz worker: no seeds for {name}");
        return ExitCode::from(2);
    }
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    let (mut executed, mut accepted) = (0u64, 0u64);
    while Instant::now() < deadline {
        let a = rng.below(corpus.len());
        let b = rng.below(corpus.len());
        let input = (t.mutate)(&mut rng, &corpus[a], &corpus[b]);
        if std::fs::write(&cur, &input).is_err() {
            eprintln!("segkit-fuzz worker: cannot write {}", cur.display());
            return ExitCode::from(3);
        }
        let ok = (t.run)(&cur, &input);
        executed += 1;
        if ok {
            accepted += 1;
            if corpus.len() < MAX_CORPUS {
                corpus.push(input);
            } else {
                let i = rng.below(MAX_CORPUS);
                corpus[i] = input;
            }
        }
        if executed % 64 == 0 {
            let _ = std::fs::write(&count_file, executed.to_string());
        }
    }
    let _ = std::fs::write(&count_file, executed.to_string());
    println!(
        "executed {executed} accepted {accepted} corpus {}",
        corpus.len()
    );
    ExitCode::SUCCESS
}

/// Runs saved inputs through a target (to reproduce a crash under a debugger or a test).
pub fn replay(name: &str, files: &[String]) -> ExitCode {
    let Some(t) = targets::by_name(name) else {
        eprintln!("segkit-fuzz: unknown target `{name}`");
        return ExitCode::from(2);
    };
    for f in files {
        let p = Path::new(f);
        match std::fs::read(p) {
            Ok(input) => println!("{f}: accepted = {}", (t.run)(p, &input)),
            Err(e) => {
                eprintln!("{f}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}
