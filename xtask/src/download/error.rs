//! The errors of `download` and `list`: one line each, naming what failed and what to do.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, fetching, verifying or placing weights.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The registry file does not parse or an entry is malformed.
    #[error("{}: {msg}", path.display())]
    Registry {
        /// The registry file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        msg: String,
    },
    /// No entry has this name.
    #[error("unknown model `{name}`; valid names: {}", valid.join(", "))]
    UnknownName {
        /// The name asked for.
        name: String,
        /// Every name of the registry.
        valid: Vec<String>,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server answered with an error status.
    #[error("GET {url}: HTTP {status}")]
    Http {
        /// The address.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The request failed before a response (DNS, TLS, connection refused, timeout).
    #[error("GET {url}: {msg}")]
    Network {
        /// The address.
        url: String,
        /// ureq's message.
        msg: String,
    },
    /// The connection dropped mid-body; what arrived is kept for a resume.
    #[error(
        "GET {url}: the connection dropped after {got} of {} bytes ({msg}); the partial \
         download is kept in {}: run the same command again to resume",
        total.map_or_else(|| "?".to_string(), |t| t.to_string()),
        partial.display()
    )]
    Interrupted {
        /// The address.
        url: String,
        /// Bytes in the partial file.
        got: u64,
        /// Expected total, when the server said.
        total: Option<u64>,
        /// The partial file.
        partial: PathBuf,
        /// The I/O error that ended the transfer.
        msg: String,
    },
    /// The server resumed at another offset than asked or sent an unusable Content-Range.
    #[error("GET {url}: {msg}; the partial download was removed, run again to start over")]
    BadResume {
        /// The address.
        url: String,
        /// What the server did.
        msg: String,
    },
    /// A file's SHA-256 is not the registry's.
    #[error("sha256 mismatch for {file}: expected {expected}, got {got}; {note}")]
    HashMismatch {
        /// The file (as placed or cached).
        file: String,
        /// The registry's hash (or prefix).
        expected: String,
        /// The file's hash.
        got: String,
        /// What happened to the file and what to do.
        note: String,
    },
    /// A file's size is not the registry's.
    #[error("size mismatch for {file}: expected {expected} bytes, got {got}; {note}")]
    SizeMismatch {
        /// The file.
        file: String,
        /// The registry's size.
        expected: u64,
        /// The file's size.
        got: u64,
        /// What happened to the file and what to do.
        note: String,
    },
    /// The hub client failed.
    #[error("{repo}@{revision}: {file}: {msg}")]
    Hub {
        /// `org/name`.
        repo: String,
        /// The pinned revision.
        revision: String,
        /// The file.
        file: String,
        /// hf-hub's message.
        msg: String,
    },
    /// `HF_HUB_OFFLINE` is set and a file is not in the hub cache.
    #[error(
        "HF_HUB_OFFLINE is set and {repo}@{revision} {file} is not in the hub cache {}; \
         unset HF_HUB_OFFLINE or fill the cache",
        cache.display()
    )]
    Offline {
        /// `org/name`.
        repo: String,
        /// The pinned revision.
        revision: String,
        /// The file.
        file: String,
        /// The cache directory looked in.
        cache: PathBuf,
    },
    /// No hub cache directory can be found (no HF_HUB_CACHE, HF_HOME or home directory).
    #[error("cannot find the Hugging Face cache: set HF_HOME or HF_HUB_CACHE")]
    NoCache,
    /// An embedded model is missing from the checkout.
    #[error("{0}")]
    Embedded(String),
    /// A file that is fetched by hand (`manual_url`) is missing or is not the pinned one.
    #[error("{0}")]
    Manual(String),
    /// The registry's converter failed or is malformed.
    #[error("convert {name}: {msg}")]
    Convert {
        /// The entry.
        name: String,
        /// What failed.
        msg: String,
    },
}

impl DownloadError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
