//! SHA-256 of files, the registry's expectations, and the `.verified` marker.
//!
//! After a download verifies, `weights/NAME/.verified` lists `<sha256>  <file>` for every file
//! (the format of `sha256sum`, so `cd weights/NAME && sha256sum -c .verified` re-checks by
//! hand). `list` reads it to say "verified" without hashing gigabytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::DownloadError;

/// Name of the marker file in `weights/NAME/`.
pub const MARKER: &str = ".verified";

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Feeds a file into `hasher`; returns the number of bytes read.
pub fn hash_into(path: &Path, hasher: &mut Sha256) -> Result<u64, DownloadError> {
    let mut f = std::fs::File::open(path).map_err(DownloadError::io(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(DownloadError::io(path))?;
        if k == 0 {
            return Ok(n);
        }
        hasher.update(&buf[..k]);
        n += k as u64;
    }
}

/// SHA-256 (hex) and size of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64), DownloadError> {
    let mut h = Sha256::new();
    let n = hash_into(path, &mut h)?;
    Ok((hex(&h.finalize()), n))
}

/// How strongly a file was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Against a full SHA-256 from the registry.
    Full,
    /// Against the registry's hash prefix only (mmseg publishes no more).
    Prefix,
    /// The registry has no hash for it (only the size, if any).
    Unpinned,
}

/// What the registry expects of one file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    /// Full SHA-256.
    pub sha256: Option<&'a str>,
    /// Leading hex digits of the SHA-256.
    pub prefix: Option<&'a str>,
    /// Size in bytes.
    pub size: Option<u64>,
}

impl Expect<'_> {
    /// Checks a file's hash and size; the error names both sides and says, in `note`, what
    /// happened to the file.
    pub fn check(
        &self,
        file: &str,
        sha: &str,
        size: u64,
        note: &str,
    ) -> Result<Checked, DownloadError> {
        if let Some(expected) = self.size {
            if expected != size {
                return Err(DownloadError::SizeMismatch {
                    file: file.to_string(),
                    expected,
                    got: size,
                    note: note.to_string(),
                });
            }
        }
        let mismatch = |expected: &str| DownloadError::HashMismatch {
            file: file.to_string(),
            expected: expected.to_string(),
            got: sha.to_string(),
            note: note.to_string(),
        };
        let mut checked = Checked::Unpinned;
        if let Some(p) = self.prefix {
            if !sha.starts_with(p) {
                return Err(mismatch(&format!("{p}... (prefix)")));
            }
            checked = Checked::Prefix;
        }
        if let Some(full) = self.sha256 {
            if sha != full {
                return Err(mismatch(full));
            }
            checked = Checked::Full;
        }
        Ok(checked)
    }
}

/// `file -> sha256` from `dir/.verified`; empty when there is none or it does not parse.
pub fn read_marker(dir: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join(MARKER)) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let (h, f) = l.split_once("  ")?;
            (h.len() == 64).then(|| (f.to_string(), h.to_string()))
        })
        .collect()
}

/// Writes `dir/.verified` atomically (temporary file, then rename).
pub fn write_marker(dir: &Path, files: &BTreeMap<String, String>) -> Result<(), DownloadError> {
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let mut text = String::new();
    for (f, h) in files {
        text.push_str(&format!("{h}  {f}\n"));
    }
    let mut out = std::fs::File::create(&tmp).map_err(DownloadError::io(&tmp))?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(DownloadError::io(&tmp))?;
    let dst = dir.join(MARKER);
    std::fs::rename(&tmp, &dst).map_err(DownloadError::io(&dst))
}

/// Removes a file if it exists.
pub fn remove_file_if_exists(path: &Path) -> Result<(), DownloadError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DownloadError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        let (h, n) = sha256_file(&p).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn expectations() {
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let e = Expect {
            prefix: Some("ba7816bf"),
            ..Default::default()
        };
        assert_eq!(e.check("f", sha, 3, "").unwrap(), Checked::Prefix);
        let e = Expect {
            prefix: Some("ba7816bf"),
            sha256: Some(sha),
            size: Some(3),
        };
        assert_eq!(e.check("f", sha, 3, "").unwrap(), Checked::Full);
        assert!(matches!(
            e.check("f", sha, 4, ""),
            Err(DownloadError::SizeMismatch { .. })
        ));
        let e = Expect {
            prefix: Some("00000000"),
            ..Default::default()
        };
        let m = e.check("f", sha, 3, "deleted").unwrap_err().to_string();
        assert!(m.contains("expected 00000000") && m.contains(sha), "{m}");
        assert_eq!(
            Expect::default().check("f", sha, 3, "").unwrap(),
            Checked::Unpinned
        );
    }

    #[test]
    fn marker_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut m = BTreeMap::new();
        m.insert("a.bin".to_string(), "1".repeat(64));
        m.insert("config.json".to_string(), "2".repeat(64));
        write_marker(d.path(), &m).unwrap();
        assert_eq!(read_marker(d.path()), m);
        assert!(!d.path().join(".verified.tmp").exists());
    }
}
