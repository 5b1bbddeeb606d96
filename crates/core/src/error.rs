//! The one error type of segkit's component crates, and how to find it from any entry point.
//!
//! segkit-core, segkit-backbones, segkit-necks, segkit-heads, segkit-oneformer, segkit-losses
//! and segkit-data all return this [`Error`] (their `Error` is a re-export of it), so an error
//! from any component is matched, converted and downcast as one type. The crates above them
//! (segkit-models, segkit-train, the facade) add context around it — "loading `model` from
//! `file`" — and return it from `source()`, so it stays in the error's chain:
//!
//! - [`missing_weight`] finds a missing weight from any segkit error (or an `anyhow::Error`'s
//!   `as ref`), whatever the entry point: a component loaded from a
//!   [`StateDict`](crate::checkpoint::StateDict), `segkit_models::ModelConfig::load`,
//!   `segkit::Segmenter::load` or a training run's `load_from`;
//! - [`find`] finds the segkit-core error in a chain ([`chain`] walks it);
//! - no link of a chain repeats the message of the link below it, so `anyhow`'s `{:#}` (or
//!   [`Report`]) prints each message once: `loading `demo` from m.safetensors: missing weight
//!   `decode_head.conv_seg.weight``.
//!
//! ```
//! use segkit_core::error::{missing_weight, Report};
//! use segkit_core::Error;
//!
//! let e = Error::MissingWeight { key: "fc.weight".into(), available: vec!["fc.bias".into()] };
//! let found = missing_weight(&e).unwrap();
//! assert_eq!(found.key, "fc.weight");
//! assert_eq!(
//!     Report(&e).to_string(),
//!     "missing weight `fc.weight` (the checkpoint has e.g. fc.bias)"
//! );
//! ```

use std::path::PathBuf;

/// Everything that can go wrong in segkit's component crates.
///
/// Variants name what is wrong (a key, a shape, a file) so that a user can act on the message.
/// segkit-backbones, segkit-necks, segkit-heads, segkit-oneformer, segkit-losses and
/// segkit-data re-export it as their `Error`.
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
    /// An input/output error on a named file (the message names the file; `source()` is the
    /// I/O error, printed after it by `{:#}` or [`Report`]).
    #[error("{}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image that cannot be decoded or used; names the image.
    #[error("bad image {what}: {reason}")]
    BadImage {
        /// The image (a file path, or a description of an in-memory image).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument outside an op's domain (not a shape problem).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `forward` got a different number of feature maps than the specs a neck or head was
    /// built from.
    #[error("{what}: expected {expected} feature maps (one per input spec), got {got}")]
    WrongInputCount {
        /// The neck or head.
        what: &'static str,
        /// Number of specs it was built from.
        expected: usize,
        /// Number of tensors passed.
        got: usize,
    },
    /// Features whose channels or stride differ from what a component (or the preset it was
    /// configured from) was designed for: a composition that would otherwise run silently on
    /// the wrong inputs.
    #[error("{component}: {problem}")]
    Miswired {
        /// The component and the config field that picks its input, e.g.
        /// "DaHead (`in_index` 3)".
        component: String,
        /// What does not match, with both values, and how to fix it.
        problem: String,
    },
    /// A channel count a config declares differs from the one an input spec reports.
    #[error(
        "{component}: the config's `{field}` is {declared}, but {spec} has {channels} channels"
    )]
    SpecMismatch {
        /// The component, e.g. "transformer decoder".
        component: &'static str,
        /// The config field (`hidden_dim`, `conv_dim`, `mask_dim`).
        field: &'static str,
        /// Its value.
        declared: usize,
        /// The input spec it was compared with, e.g. "the pixel decoder's mask features
        /// (stride 4)".
        spec: String,
        /// The channels that spec reports.
        channels: usize,
    },
    /// A tokenizer that could not be built or could not encode a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A cost matrix with a NaN or `-inf` entry (scipy: "matrix contains invalid numeric
    /// entries").
    #[error("cost matrix contains an invalid entry ({value}) at row {row}, column {col}")]
    InvalidCost {
        /// Row of the first invalid entry.
        row: usize,
        /// Column of the first invalid entry.
        col: usize,
        /// The entry.
        value: f64,
    },
    /// A cost matrix whose `+inf` entries leave no complete assignment (scipy: "cost matrix is
    /// infeasible").
    #[error(
        "cost matrix ({rows}x{cols}) is infeasible: `+inf` entries leave no complete assignment"
    )]
    InfeasibleCost {
        /// Rows of the matrix.
        rows: usize,
        /// Columns of the matrix.
        cols: usize,
    },
    /// A dataset (or other input) file that is missing or malformed; names the file.
    #[error("{}: {reason}", .path.display())]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// `Result` with segkit-core's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The missing weight this error reports, if it is an [`Error::MissingWeight`].
    pub fn as_missing_weight(&self) -> Option<MissingWeight<'_>> {
        match self {
            Error::MissingWeight { key, available } => Some(MissingWeight { key, available }),
            _ => None,
        }
    }

    /// Shorthand for [`Error::ShapeMismatch`].
    pub fn shape(what: impl Into<String>, expected: &[usize], got: &[usize]) -> Self {
        Error::ShapeMismatch {
            what: what.into(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        }
    }
}

/// A missing weight found by [`missing_weight`]: the key and the checkpoint's similar keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingWeight<'a> {
    /// The state-dict key that was looked up.
    pub key: &'a str,
    /// A few keys the checkpoint does have (similar ones first).
    pub available: &'a [String],
}

/// The error and its `source()`s, outermost first (what `anyhow::Error::chain` yields).
pub fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// The first segkit-core [`Error`] in `err`'s chain (`err` itself included).
///
/// Every segkit crate's error keeps the segkit-core error in its chain: the component crates
/// return it directly, segkit-models' `Error::Checkpoint` and the training errors return it
/// from `source()`. (segkit-models' `Error::Core`, which adds no context, shows the inner
/// error as its own message; `segkit_models::Error::as_core` reaches it.)
pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    chain(err).find_map(|e| e.downcast_ref::<Error>())
}

/// The missing weight anywhere in `err`'s chain: the one way to ask "is a weight missing?"
/// from any segkit entry point (or from `anyhow::Error::as_ref()`).
///
/// ```
/// use segkit_core::error::missing_weight;
/// let e = segkit_core::Error::MissingWeight { key: "head.weight".into(), available: vec![] };
/// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
/// assert_eq!(missing_weight(&*boxed).map(|m| m.key), Some("head.weight"));
/// ```
pub fn missing_weight<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<MissingWeight<'a>> {
    chain(err).find_map(|e| e.downcast_ref::<Error>()?.as_missing_weight())
}

/// Displays an error and each of its sources once, joined by `": "` (as `anyhow`'s `{:#}`).
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in chain(self.0).enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// How many similar keys [`StateDict::require`](crate::checkpoint::StateDict::require) suggests.
const REQUIRE_HINTS: usize = 5;

impl crate::checkpoint::StateDict {
    /// The tensor stored under `key`, or [`Error::MissingWeight`] naming it with the
    /// checkpoint's most similar keys ([`StateDict::get`](crate::checkpoint::StateDict::get)
    /// is the `Option` form).
    ///
    /// ```
    /// use segkit_core::checkpoint::StateDict;
    /// let mut sd = StateDict::new();
    /// sd.insert("backbone.conv1.weight", candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)?);
    /// let err = sd.require("conv1.weight").unwrap_err();
    /// let m = err.as_missing_weight().unwrap();
    /// assert_eq!((m.key, m.available), ("conv1.weight", &["backbone.conv1.weight".to_string()][..]));
    /// # Ok::<(), segkit_core::Error>(())
    /// ```
    pub fn require(&self, key: &str) -> Result<&candle_core::Tensor> {
        self.get(key).ok_or_else(|| Error::MissingWeight {
            key: key.to_string(),
            available: self.similar_keys(key, REQUIRE_HINTS),
        })
    }
}
