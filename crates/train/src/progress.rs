//! The progress line on stderr and the JSONL metrics log.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::{TrainError, TrainResult};

/// A progress bar on stderr: redrawn in place on a terminal, one line per `every` updates
/// otherwise (logs, CI).
#[derive(Debug)]
pub struct Progress {
    total: usize,
    start_iter: usize,
    started: Instant,
    tty: bool,
    every: usize,
    quiet: bool,
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

impl Progress {
    /// A bar for iterations `start_iter..total`; without a terminal a line every `every`.
    pub fn new(start_iter: usize, total: usize, every: usize, quiet: bool) -> Self {
        Self {
            total,
            start_iter,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            every: every.max(1),
            quiet,
        }
    }

    /// Iterations per second so far (this session).
    pub fn rate(&self, iter: usize) -> f64 {
        let done = iter.saturating_sub(self.start_iter) as f64;
        let t = self.started.elapsed().as_secs_f64();
        if t > 0.0 {
            done / t
        } else {
            0.0
        }
    }

    /// Shows iteration `iter` (completed) with its loss and learning rate.
    pub fn update(&self, iter: usize, loss: f64, lr: f64) {
        if self.quiet || (!self.tty && !iter.is_multiple_of(self.every) && iter != self.total) {
            return;
        }
        let rate = self.rate(iter);
        let eta = if rate > 0.0 {
            hms((self.total - iter) as f64 / rate)
        } else {
            "--:--".into()
        };
        let width = 24;
        let filled = (width * iter) / self.total.max(1);
        let bar: String = (0..width)
            .map(|i| if i < filled { '#' } else { '-' })
            .collect();
        let line = format!(
            "iter {iter:>6}/{} [{bar}] loss {loss:.4} lr {lr:.3e} {rate:.2} it/s ETA {eta}",
            self.total
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            if iter == self.total {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Prints a message on its own line (ending an in-place bar first).
    pub fn message(&self, msg: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(err, "{msg}");
    }
}

/// The metrics log: one JSON object per line (`{"type": "train", "iter": .., ..}` and
/// `{"type": "val", ..}` records).
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending; when `keep_until` is given, first drops every record of a
    /// later iteration (a resumed run rewrites what followed its checkpoint).
    pub fn open(path: &Path, keep_until: Option<usize>) -> TrainResult<Self> {
        let err = |e: std::io::Error| TrainError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        match keep_until {
            Some(it) if path.exists() => {
                let kept: Vec<String> = BufReader::new(File::open(path).map_err(err)?)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v.get("iter").and_then(|i| i.as_u64()))
                            .is_some_and(|i| i as usize <= it)
                    })
                    .collect();
                let mut text = kept.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                fs::write(path, text).map_err(err)?;
            }
            Some(_) => {}
            None => {
                if path.exists() {
                    fs::remove_file(path).map_err(err)?;
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &serde_json::Value) -> TrainResult<()> {
        writeln!(self.file, "{record}").map_err(|e| TrainError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }
}
