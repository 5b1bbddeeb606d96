//! The supervisor: runs each target's worker for its time, watches it, and reports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::targets::Target;
use crate::RunOptions;

/// One input running longer than this is a hang (`SEGKIT_FUZZ_HANG_SECS` overrides it).
fn hang_limit() -> Duration {
    let secs = std::env::var("SEGKIT_FUZZ_HANG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}
/// A worker resident over this much memory is exhausting it.
const MEMORY_LIMIT: u64 = 2 << 30;
/// How often the workers are checked.
const POLL: Duration = Duration::from_millis(25);

/// What one target's run found.
#[derive(Default)]
struct Report {
    executed: u64,
    accepted: u64,
    crashes: Vec<String>,
}

/// A running worker and its target's state.
struct Job {
    target: &'static Target,
    child: Child,
    started: Instant,
    deadline: Instant,
    restarts: u64,
    report: Report,
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn spawn(t: &Target, seed: u64, seconds: f64, dir: &Path) -> std::io::Result<Child> {
    let _ = std::fs::remove_file(dir.join(format!("{}.count", t.name)));
    // Files, not pipes: a worker that writes much can never block on a full pipe.
    let out = std::fs::File::create(dir.join(format!("{}.out", t.name)))?;
    let err = std::fs::File::create(dir.join(format!("{}.err", t.name)))?;
    Command::new(std::env::current_exe()?)
        .args([
            "worker",
            t.name,
            &seed.to_string(),
            &format!("{seconds:.3}"),
            &dir.display().to_string(),
        ])
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
}

fn read_count(dir: &Path, t: &Target) -> u64 {
    std::fs::read_to_string(dir.join(format!("{}.count", t.name)))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The last `n` characters of a worker's output file.
fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let cut = s.len().saturating_sub(n);
    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    s[cut..].trim().to_string()
}

/// Saves the input the dead worker was running (from the scratch `dir`), with its last words
/// and why it died, under `out/crashes/`.
fn save_crash(dir: &Path, out: &Path, job: &mut Job, why: &str, words: &str) -> String {
    let crashes = out.join("crashes");
    let _ = std::fs::create_dir_all(&crashes);
    let n = job.report.crashes.len();
    let name = job.target.name;
    let dst = crashes.join(format!("{name}-{n}.bin"));
    let _ = std::fs::copy(dir.join(format!("{name}.cur")), &dst);
    let _ = std::fs::write(dst.with_extension("txt"), format!("{why}\n{words}\n"));
    format!("{why}: input saved as {}", dst.display())
}

/// Checks a running job; `Some(true)` when its target is done, `Some(false)` when its worker
/// died and was restarted, `None` while it runs.
fn check(job: &mut Job, o: &RunOptions, dir: &Path) -> std::io::Result<Option<bool>> {
    let t = job.target;
    let why = match job.child.try_wait()? {
        Some(status) if status.success() => {
            let out = tail(&dir.join(format!("{}.out", t.name)), 200);
            let nums: Vec<u64> = out
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            job.report.executed += nums.first().copied().unwrap_or(0);
            job.report.accepted += nums.get(1).copied().unwrap_or(0);
            return Ok(Some(true));
        }
        Some(status) => format!("worker died ({status})"),
        None => {
            let stale = std::fs::metadata(dir.join(format!("{}.cur", t.name)))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > hang_limit())
                && job.started.elapsed() > hang_limit();
            let mem = rss(job.child.id());
            if stale {
                format!("hang: one input ran over {}s", hang_limit().as_secs())
            } else if mem > MEMORY_LIMIT {
                format!("memory: resident {} MiB", mem >> 20)
            } else {
                return Ok(None);
            }
        }
    };
    let _ = job.child.kill();
    let _ = job.child.wait();
    let words = tail(&dir.join(format!("{}.err", t.name)), 2000);
    job.report.executed += read_count(dir, t);
    let msg = save_crash(dir, &o.out, job, &why, &words);
    eprintln!("[{}] CRASH {msg}\n{words}", t.name);
    job.report.crashes.push(msg);
    let left = job.deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(200) {
        return Ok(Some(true));
    }
    job.restarts += 1;
    let seed = o.seed.wrapping_add(job.restarts * 1_000_003);
    job.child = spawn(t, seed, left.as_secs_f64(), dir)?;
    job.started = Instant::now();
    Ok(Some(false))
}

/// Where the workers write each input: a memory file system when there is one (writing a
/// file per input to a disk costs milliseconds on some machines), else the output folder.
fn scratch_dir(out: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join(format!("segkit-fuzz-{}", std::process::id()))
    } else {
        out.join("scratch")
    }
}

pub fn run(o: &RunOptions) -> ExitCode {
    let dir = scratch_dir(&o.out);
    for d in [&o.out, &dir] {
        if let Err(e) = std::fs::create_dir_all(d) {
            eprintln!("segkit-fuzz: {}: {e}", d.display());
            return ExitCode::from(2);
        }
    }
    let code = run_in(o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    code
}

fn run_in(o: &RunOptions, dir: &Path) -> ExitCode {
    let started = Instant::now();
    let mut pending: Vec<&'static Target> = o.targets.iter().rev().copied().collect();
    let mut running: Vec<Job> = Vec::new();
    let mut done: Vec<(&'static Target, Report)> = Vec::new();
    while !pending.is_empty() || !running.is_empty() {
        while running.len() < o.jobs {
            let Some(t) = pending.pop() else { break };
            match spawn(t, o.seed, o.seconds, dir) {
                Ok(child) => running.push(Job {
                    target: t,
                    child,
                    started: Instant::now(),
                    deadline: Instant::now() + Duration::from_secs_f64(o.seconds),
                    restarts: 0,
                    report: Report::default(),
                }),
                Err(e) => {
                    eprintln!("segkit-fuzz: cannot start a worker: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        std::thread::sleep(POLL);
        let mut i = 0;
        while i < running.len() {
            match check(&mut running[i], o, dir) {
                Ok(Some(true)) => {
                    let job = running.remove(i);
                    done.push((job.target, job.report));
                }
                Ok(_) => i += 1,
                Err(e) => {
                    eprintln!("segkit-fuzz: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    summary(o, &done, started.elapsed())
}

fn summary(o: &RunOptions, done: &[(&Target, Report)], took: Duration) -> ExitCode {
    println!(
        "segkit-fuzz: {} s per target, seed {}, {} job(s), {:.0} s in all",
        o.seconds,
        o.seed,
        o.jobs,
        took.as_secs_f64()
    );
    println!("| target | inputs | inputs/s | accepted | crashes |");
    println!("|---|---:|---:|---:|---:|");
    let mut crashed = false;
    for (t, r) in done {
        println!(
            "| {} | {} | {:.0} | {} | {} |",
            t.name,
            r.executed,
            r.executed as f64 / o.seconds.max(1e-9),
            r.accepted,
            r.crashes.len()
        );
        crashed |= !r.crashes.is_empty();
    }
    for (t, r) in done {
        for c in &r.crashes {
            println!("{}: {c}", t.name);
        }
    }
    if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
