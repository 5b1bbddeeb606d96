//! [`Partial`]: the body of one download appended to `DIR/FILE.partial` (a 206 continuing it,
//! or a 200 starting it over), hashed while it is written, then verified and renamed into place.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::{Fetched, UrlFile};
use crate::download::verify;
use crate::download::DownloadError;

fn bar(total: Option<u64>, start: u64, label: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = match total {
        Some(t) => {
            let pb = ProgressBar::new(t);
            if let Ok(s) = ProgressStyle::with_template(
                "{msg} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(s.progress_chars("=> "));
            }
            pb
        }
        None => {
            let pb = ProgressBar::new_spinner();
            if let Ok(s) = ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}") {
                pb.set_style(s);
            }
            pb
        }
    };
    pb.set_message(label.to_string());
    pb.set_position(start);
    pb
}

/// `bytes START-END/TOTAL` -> (START, TOTAL).
pub(super) fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// The partial file of a download and the hash of what it holds so far.
pub(super) struct Partial {
    /// `DIR/FILE.partial`.
    path: PathBuf,
    /// Bytes already in it when this run's body starts.
    pub(super) start: u64,
    /// Where this run resumed from (0 when it starts afresh).
    resumed_from: u64,
    /// Bytes written in this run.
    transferred: u64,
    /// SHA-256 of everything in it.
    hasher: Sha256,
}

impl Partial {
    /// Picks up `path` where an earlier run left it (dropped when it is longer than the
    /// expected size), hashing the bytes already there.
    pub(super) fn resume(spec: &UrlFile<'_>, path: PathBuf) -> Result<Self, DownloadError> {
        let mut start = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if spec.expect.size.is_some_and(|s| start > s) {
            verify::remove_file_if_exists(&path)?;
            start = 0;
        }
        let mut hasher = Sha256::new();
        if start > 0 {
            verify::hash_into(&path, &mut hasher)?;
        }
        Ok(Self {
            path,
            start,
            resumed_from: start,
            transferred: 0,
            hasher,
        })
    }

    /// Appends the body of `resp` (a 206 continuing at `start`, or a 200 that starts over),
    /// failing with a resumable error when the stream ends early.
    pub(super) fn receive(
        &mut self,
        resp: ureq::Response,
        spec: &UrlFile<'_>,
        progress: bool,
    ) -> Result<(), DownloadError> {
        // Opened only now, so a failed request leaves no empty partial file behind.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(DownloadError::io(&self.path))?;
        let length: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
        let total = if resp.status() == 206 {
            match self.resumed_total(&resp, length, spec.url) {
                Ok(total) => total,
                Err(e) => {
                    drop(file);
                    verify::remove_file_if_exists(&self.path)?;
                    return Err(e);
                }
            }
        } else {
            if self.start > 0 {
                self.restart(&mut file, spec.url)?;
            }
            length
        };
        let pb = bar(total, self.start, spec.file, progress);
        self.copy_body(resp.into_reader(), &mut file, total, spec.url, &pb)?;
        pb.finish_and_clear();
        file.sync_all().map_err(DownloadError::io(&self.path))?;
        drop(file);
        match total {
            Some(t) if self.start + self.transferred < t => {
                Err(self.interrupted(spec.url, total, "end of stream".into()))
            }
            _ => Ok(()),
        }
    }

    /// The full size a 206 answer announces, when its `Content-Range` starts at `start`.
    fn resumed_total(
        &self,
        resp: &ureq::Response,
        length: Option<u64>,
        url: &str,
    ) -> Result<Option<u64>, DownloadError> {
        let cr = resp.header("Content-Range").unwrap_or("");
        match parse_content_range(cr) {
            Some((s, total)) if s == self.start => Ok(total.or(length.map(|l| l + self.start))),
            _ => Err(DownloadError::BadResume {
                url: url.to_string(),
                msg: format!(
                    "asked for bytes from {}, got Content-Range `{cr}`",
                    self.start
                ),
            }),
        }
    }

    /// Empties the file and the hash: the server ignored the range request.
    fn restart(&mut self, file: &mut std::fs::File, url: &str) -> Result<(), DownloadError> {
        eprintln!("xtask: {url} ignored the range request; downloading from the start");
        file.set_len(0).map_err(DownloadError::io(&self.path))?;
        file.seek(SeekFrom::Start(0))
            .map_err(DownloadError::io(&self.path))?;
        self.hasher = Sha256::new();
        self.start = 0;
        self.resumed_from = 0;
        Ok(())
    }

    /// Copies `reader` to `file`, hashing and counting; a read error keeps what was written.
    fn copy_body(
        &mut self,
        mut reader: impl Read,
        file: &mut std::fs::File,
        total: Option<u64>,
        url: &str,
        pb: &ProgressBar,
    ) -> Result<(), DownloadError> {
        let mut buf = vec![0u8; 1 << 18];
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    pb.abandon();
                    file.flush().map_err(DownloadError::io(&self.path))?;
                    return Err(self.interrupted(url, total, e.to_string()));
                }
            };
            file.write_all(&buf[..k])
                .map_err(DownloadError::io(&self.path))?;
            self.hasher.update(&buf[..k]);
            self.transferred += k as u64;
            pb.inc(k as u64);
        }
    }

    fn interrupted(&self, url: &str, total: Option<u64>, msg: String) -> DownloadError {
        DownloadError::Interrupted {
            url: url.to_string(),
            got: self.start + self.transferred,
            total,
            partial: self.path.clone(),
            msg,
        }
    }

    /// Checks the hash and size; renames the file to `target` when they match, deletes it
    /// when they do not.
    pub(super) fn verify_and_place(
        self,
        spec: &UrlFile<'_>,
        target: PathBuf,
    ) -> Result<Fetched, DownloadError> {
        let size = std::fs::metadata(&self.path)
            .map_err(DownloadError::io(&self.path))?
            .len();
        let sha = verify::hex(&self.hasher.finalize());
        let checked = match spec.expect.check(
            spec.url,
            &sha,
            size,
            "the download was deleted; nothing was kept",
        ) {
            Ok(c) => c,
            Err(e) => {
                verify::remove_file_if_exists(&self.path)?;
                return Err(e);
            }
        };
        std::fs::rename(&self.path, &target).map_err(DownloadError::io(&target))?;
        Ok(Fetched {
            path: target,
            sha256: sha,
            size,
            checked,
            transferred: self.transferred,
            resumed_from: self.resumed_from,
        })
    }
}
