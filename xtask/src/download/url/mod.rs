//! One file from a URL: resumable, verified, placed atomically.
//!
//! The body is written to `DIR/FILE.partial`. A later run continues from the partial file's
//! size with an HTTP `Range: bytes=N-` request (a server that answers 200 instead of 206 is
//! read from the start again). The SHA-256 is computed while writing (the bytes already in the
//! partial file are hashed first); only when it matches the registry is the partial file
//! renamed to `DIR/FILE`. On a mismatch the partial file is deleted and nothing is left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::verify::{self, Checked, Expect};
use super::DownloadError;

mod transfer;

use transfer::Partial;

/// What to download and how to check it.
#[derive(Debug, Clone, Copy)]
pub struct UrlFile<'a> {
    /// Address (https for registry entries; tests use http on loopback).
    pub url: &'a str,
    /// Name under the target directory.
    pub file: &'a str,
    /// What the registry expects.
    pub expect: Expect<'a>,
}

/// A verified file in place.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Where it is.
    pub path: PathBuf,
    /// Its SHA-256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// How strongly it was checked.
    pub checked: Checked,
    /// Bytes transferred in this run (0 when it was already there).
    pub transferred: u64,
    /// Offset the transfer resumed from (0 for a fresh download).
    pub resumed_from: u64,
}

/// The HTTPS client: rustls, proxies from the environment, timeouts so a stalled connection
/// fails (and can be resumed) instead of hanging.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .try_proxy_from_env(true)
        .user_agent(concat!("segkit-xtask/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Downloads (or resumes) `spec` into `dir`, verifies it and renames it into place.
///
/// An existing `dir/FILE` is verified instead of downloaded (an error if it does not match;
/// `force` deletes it and any partial file first). A directory this call created is removed
/// again when it fails with nothing to resume.
pub fn fetch_url(
    agent: &ureq::Agent,
    spec: &UrlFile<'_>,
    dir: &Path,
    force: bool,
    progress: bool,
) -> Result<Fetched, DownloadError> {
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(DownloadError::io(dir))?;
    let r = fetch_into(agent, spec, dir, force, progress);
    if r.is_err() && created {
        // Fails (and is meant to) when a partial file is kept for a resume.
        let _ = std::fs::remove_dir(dir);
    }
    r
}

/// Why a request failed, without the URL (which the error already names).
fn transport_msg(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Transport(t) => match t.message() {
            Some(m) => format!("{}: {m}", t.kind()),
            None => t.kind().to_string(),
        },
        e => e.to_string(),
    }
}

fn fetch_into(
    agent: &ureq::Agent,
    spec: &UrlFile<'_>,
    dir: &Path,
    force: bool,
    progress: bool,
) -> Result<Fetched, DownloadError> {
    let target = dir.join(spec.file);
    let partial = dir.join(format!("{}.partial", spec.file));
    if force {
        verify::remove_file_if_exists(&target)?;
        verify::remove_file_if_exists(&partial)?;
    }
    if target.exists() {
        return verify_existing(spec, target);
    }
    let mut partial = Partial::resume(spec, partial)?;
    let complete = spec
        .expect
        .size
        .is_some_and(|s| s == partial.start && partial.start > 0);
    if !complete {
        if let Some(resp) = request(agent, spec.url, partial.start)? {
            partial.receive(resp, spec, progress)?;
        }
    }
    partial.verify_and_place(spec, target)
}

/// Verifies a file that is already in place (an error if it does not match).
fn verify_existing(spec: &UrlFile<'_>, target: PathBuf) -> Result<Fetched, DownloadError> {
    let (sha, size) = verify::sha256_file(&target)?;
    let checked = spec.expect.check(
        &target.display().to_string(),
        &sha,
        size,
        "the file was left in place; run again with --force to download it anew",
    )?;
    Ok(Fetched {
        path: target,
        sha256: sha,
        size,
        checked,
        transferred: 0,
        resumed_from: 0,
    })
}

/// Asks for the body from byte `start` on: `None` when the server answers 416 to a range
/// request, i.e. the partial file already holds everything.
fn request(
    agent: &ureq::Agent,
    url: &str,
    start: u64,
) -> Result<Option<ureq::Response>, DownloadError> {
    // `identity`: a compressed body would break byte offsets (ureq leaves the header off by
    // itself when a Range is set).
    let req = if start > 0 {
        agent.get(url).set("Range", &format!("bytes={start}-"))
    } else {
        agent.get(url).set("Accept-Encoding", "identity")
    };
    match req.call() {
        Ok(r) => Ok(Some(r)),
        Err(ureq::Error::Status(416, _)) if start > 0 => Ok(None),
        Err(ureq::Error::Status(status, _)) => Err(DownloadError::Http {
            url: url.to_string(),
            status,
        }),
        Err(e) => Err(DownloadError::Network {
            url: url.to_string(),
            msg: transport_msg(&e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{Route, Server};
    use super::transfer::parse_content_range;
    use super::*;
    use sha2::{Digest, Sha256};

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn sha(b: &[u8]) -> String {
        verify::hex(&Sha256::digest(b))
    }

    fn no_proxy_agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout_read(Duration::from_secs(10))
            .build()
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("nonsense"), None);
    }

    #[test]
    fn full_download_verifies_and_places_the_file() {
        let data = body(300_000);
        let s = Server::start(vec![("/m/w-abc.pth", Route::new(data.clone()))]);
        let d = tempfile::tempdir().unwrap();
        let full = sha(&data);
        let url = s.url("/m/w-abc.pth");
        let spec = UrlFile {
            url: &url,
            file: "w-abc.pth",
            expect: Expect {
                sha256: Some(&full),
                prefix: Some(&full[..8]),
                size: Some(data.len() as u64),
            },
        };
        let f = fetch_url(&no_proxy_agent(), &spec, d.path(), false, false).unwrap();
        assert_eq!(f.checked, Checked::Full);
        assert_eq!(f.transferred, data.len() as u64);
        assert_eq!(std::fs::read(d.path().join("w-abc.pth")).unwrap(), data);
        assert_eq!(files_in(d.path()), ["w-abc.pth"]);
        // Prefix only: still verified, and the full hash is reported for the registry.
        let spec2 = UrlFile {
            expect: Expect {
                prefix: Some(&full[..8]),
                ..Default::default()
            },
            ..spec
        };
        let f = fetch_url(&no_proxy_agent(), &spec2, d.path(), false, false).unwrap();
        assert_eq!((f.checked, f.transferred), (Checked::Prefix, 0));
        assert_eq!(f.sha256, full);
        assert_eq!(
            s.log().len(),
            1,
            "an existing verified file is not fetched again"
        );
        // --force downloads again.
        let f = fetch_url(&no_proxy_agent(), &spec2, d.path(), true, false).unwrap();
        assert_eq!(f.transferred, data.len() as u64);
        assert_eq!(s.log().len(), 2);
    }

    #[test]
    fn hash_mismatch_leaves_nothing_behind() {
        let data = body(50_000);
        let s = Server::start(vec![("/a.pth", Route::new(data.clone()))]);
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("model");
        let url = s.url("/a.pth");
        let wrong = "0".repeat(64);
        let spec = UrlFile {
            url: &url,
            file: "a.pth",
            expect: Expect {
                sha256: Some(&wrong),
                ..Default::default()
            },
        };
        let e = fetch_url(&no_proxy_agent(), &spec, &dir, false, false).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, DownloadError::HashMismatch { .. }), "{m}");
        assert!(m.contains(&wrong) && m.contains(&sha(&data)), "{m}");
        assert!(!m.contains('\n'));
        assert!(!dir.exists(), "nothing is left, not even the directory");
        // A wrong prefix fails the same way.
        let spec = UrlFile {
            expect: Expect {
                prefix: Some("ffffffff"),
                ..Default::default()
            },
            ..spec
        };
        let e = fetch_url(&no_proxy_agent(), &spec, &dir, false, false).unwrap_err();
        assert!(e.to_string().contains("ffffffff... (prefix)"), "{e}");
        assert!(!dir.exists());
    }

    #[test]
    fn interrupted_download_resumes_with_a_range_request() {
        let data = body(200_000);
        let cut = 70_001;
        let s = Server::start(vec![(
            "/b.pth",
            Route::new(data.clone()).drop_first_after(cut),
        )]);
        let d = tempfile::tempdir().unwrap();
        let url = s.url("/b.pth");
        let full = sha(&data);
        let spec = UrlFile {
            url: &url,
            file: "b.pth",
            expect: Expect {
                sha256: Some(&full),
                ..Default::default()
            },
        };
        let e = fetch_url(&no_proxy_agent(), &spec, d.path(), false, false).unwrap_err();
        match &e {
            DownloadError::Interrupted { got, total, .. } => {
                assert_eq!((*got, *total), (cut as u64, Some(data.len() as u64)))
            }
            e => panic!("{e}"),
        }
        assert!(e
            .to_string()
            .contains("run the same command again to resume"));
        assert_eq!(files_in(d.path()), ["b.pth.partial"]);
        assert_eq!(
            std::fs::read(d.path().join("b.pth.partial")).unwrap(),
            &data[..cut]
        );

        let f = fetch_url(&no_proxy_agent(), &spec, d.path(), false, false).unwrap();
        let log = s.log();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].range, None);
        assert_eq!(
            log[1].range.as_deref(),
            Some(format!("bytes={cut}-").as_str())
        );
        assert_eq!(
            (f.resumed_from, f.transferred),
            (cut as u64, (data.len() - cut) as u64)
        );
        assert_eq!(f.checked, Checked::Full);
        assert_eq!(std::fs::read(d.path().join("b.pth")).unwrap(), data);
        assert_eq!(files_in(d.path()), ["b.pth"]);
    }

    #[test]
    fn server_without_ranges_restarts_from_zero() {
        let data = body(40_000);
        let s = Server::start(vec![("/c.pth", Route::new(data.clone()).ignore_range())]);
        let d = tempfile::tempdir().unwrap();
        // A stale partial file with wrong bytes: the 200 answer replaces it.
        std::fs::write(d.path().join("c.pth.partial"), vec![9u8; 1000]).unwrap();
        let url = s.url("/c.pth");
        let full = sha(&data);
        let spec = UrlFile {
            url: &url,
            file: "c.pth",
            expect: Expect {
                sha256: Some(&full),
                ..Default::default()
            },
        };
        let f = fetch_url(&no_proxy_agent(), &spec, d.path(), false, false).unwrap();
        assert_eq!(s.log()[0].range.as_deref(), Some("bytes=1000-"));
        assert_eq!((f.transferred, f.resumed_from), (data.len() as u64, 0));
        assert_eq!(std::fs::read(&f.path).unwrap(), data);
    }

    #[test]
    fn complete_partial_is_verified_without_a_body() {
        let data = body(10_000);
        let s = Server::start(vec![("/e.pth", Route::new(data.clone()))]);
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("e.pth.partial"), &data).unwrap();
        let url = s.url("/e.pth");
        let full = sha(&data);
        let spec = UrlFile {
            url: &url,
            file: "e.pth",
            expect: Expect {
                sha256: Some(&full),
                ..Default::default()
            },
        };
        // Size unknown: the server answers 416 to `bytes=10000-`, the partial file is whole.
        let f = fetch_url(&no_proxy_agent(), &spec, d.path(), false, false).unwrap();
        assert_eq!((f.transferred, f.resumed_from), (0, 10_000));
        assert_eq!(files_in(d.path()), ["e.pth"]);
    }

    #[test]
    fn http_errors_are_reported() {
        let s = Server::start(vec![]);
        let d = tempfile::tempdir().unwrap();
        let url = s.url("/missing.pth");
        let spec = UrlFile {
            url: &url,
            file: "missing.pth",
            expect: Expect {
                prefix: Some("12345678"),
                ..Default::default()
            },
        };
        let dir = d.path().join("m");
        let e = fetch_url(&no_proxy_agent(), &spec, &dir, false, false).unwrap_err();
        assert!(matches!(e, DownloadError::Http { status: 404, .. }), "{e}");
        assert!(!dir.exists(), "the directory it created is gone again");
        // Connection refused: a one-line message naming the URL once.
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/x.pth", l.local_addr().unwrap())
        };
        let spec = UrlFile { url: &gone, ..spec };
        let e = fetch_url(&no_proxy_agent(), &spec, &dir, false, false).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, DownloadError::Network { .. }), "{m}");
        assert_eq!(m.matches(&gone).count(), 1, "{m}");
        assert!(!dir.exists());
    }
}
