//! The error type shared by segkit's component crates.

use std::path::PathBuf;

/// Everything that can go wrong in segkit-core, and the base of the component crates' errors.
///
/// Variants name what is wrong (a key, a shape, a file) so that a user can act on the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error raised by candle itself.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration that cannot describe a valid model.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A tensor whose shape is not the one the model or op needs.
    #[error("shape mismatch for `{what}`: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// What had the wrong shape (a weight key or an argument name).
        what: String,
        /// The shape that was required.
        expected: Vec<usize>,
        /// The shape that was found.
        got: Vec<usize>,
    },
    /// A weight that the model needs is absent from the checkpoint.
    #[error("missing weight `{key}`{}", if .available.is_empty() { String::new() } else { format!(" (the checkpoint has e.g. {})", .available.join(", ")) })]
    MissingWeight {
        /// The state-dict key that was looked up.
        key: String,
        /// A few keys the checkpoint does have, to help spot a prefix problem.
        available: Vec<String>,
    },
    /// Weights in the checkpoint that the model never used (a sign of the wrong architecture).
    #[error("{} unexpected weight(s) in checkpoint, e.g. {}", .keys.len(), .keys.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    UnexpectedWeights {
        /// The unused keys, sorted.
        keys: Vec<String>,
    },
    /// A file that is not a readable checkpoint of a supported format.
    #[error("bad checkpoint {}: {reason}", .path.display())]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An input/output error on a named file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image that cannot be decoded or used.
    #[error("bad image: {0}")]
    BadImage(String),
    /// An argument outside an op's domain (not a shape problem).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// `Result` with segkit-core's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::ShapeMismatch`].
    pub fn shape(what: impl Into<String>, expected: &[usize], got: &[usize]) -> Self {
        Error::ShapeMismatch {
            what: what.into(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        }
    }
}
