//! segkit-models' error: the component crates' error ([`segkit_core::Error`]) plus the
//! segmentor's own (unknown presets, configs, checkpoints that do not fit, bad images).
//!
//! Chains: [`Error::Checkpoint`] says which model and file ("loading `demo` from
//! m.safetensors") and returns the segkit-core error that did not fit (a missing key, a
//! shape) from `source()`, unboxed, so [`segkit_core::error::missing_weight`] and `anyhow`'s
//! `downcast_ref::<segkit_core::Error>()` on a chain link find it and `{:#}` prints each
//! message once. [`Error::Core`] adds no context: it shows the core error's message as its
//! own (and its sources after it); [`Error::as_core`] reaches the core error from either.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in segkit: the component crates' error, and the
/// segmentor's own (unknown presets, configs, checkpoints that do not fit, bad images).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An error from a component crate (segkit-core's error: shapes, weights, ops, files,
    /// mis-wired compositions).
    Core(segkit_core::Error),
    /// A preset name that does not exist.
    UnknownPreset {
        /// The name given.
        name: String,
        /// Every valid name.
        valid: Vec<String>,
    },
    /// A segmentor config that cannot describe a valid model (or one that does not parse).
    InvalidConfig(String),
    /// A checkpoint that cannot be read or does not fit the model: `source` is the typed
    /// reason ([`segkit_core::Error::MissingWeight`] naming the key,
    /// [`segkit_core::Error::ShapeMismatch`] naming the key with both shapes — e.g. a
    /// class-count mismatch on `decode_head.conv_seg.weight` —,
    /// [`segkit_core::Error::UnexpectedWeights`] listing unused keys, or a file error).
    ///
    /// The message names the model and the file; `source()` returns the segkit-core error
    /// itself (not the box), so it is found in the chain.
    Checkpoint {
        /// The preset (or config) name of the model being built.
        model: String,
        /// The checkpoint file.
        checkpoint: PathBuf,
        /// What did not fit (boxed to keep `Result`s small; match on `&*source`).
        source: Box<segkit_core::Error>,
    },
    /// An image that cannot be decoded or used.
    BadImage {
        /// The image (a file path, or a description of an in-memory image).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A model name that is neither an existing path nor a known name (for the facade's
    /// `segkit::Segmenter::load`).
    UnknownModel {
        /// The name given.
        name: String,
        /// Names whose files are present.
        present: Vec<String>,
        /// Registered names whose files are not (`cargo xtask download NAME`).
        not_downloaded: Vec<String>,
    },
    /// A registered model whose files are not present.
    ModelNotDownloaded {
        /// The name.
        name: String,
        /// The weights directories searched.
        searched: Vec<PathBuf>,
        /// How to get it.
        hint: String,
    },
    /// A model directory, config or file that cannot be loaded as a model.
    BadModel {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A task the model cannot do (e.g. instance segmentation with a semantic model).
    UnsupportedTask {
        /// The model's name.
        model: String,
        /// The task asked for.
        task: String,
        /// The tasks it supports.
        supported: Vec<String>,
    },
    /// A device that cannot be used.
    Device {
        /// The device name given.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An error of a crate built on segkit-models (segkit-train's `TrainError`, converted by
    /// `From` so that the facade's `Result` takes it). The message is "training"; `source()`
    /// is the original error, which `downcast_ref` recovers.
    Training(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Core(e) => fmt::Display::fmt(e, f),
            Error::UnknownPreset { name, valid } => {
                write!(
                    f,
                    "unknown preset `{name}`; valid presets: {}",
                    valid.join(", ")
                )
            }
            Error::InvalidConfig(m) => write!(f, "invalid segmentor config: {m}"),
            Error::Checkpoint {
                model, checkpoint, ..
            } => write!(f, "loading `{model}` from {}", checkpoint.display()),
            Error::BadImage { what, reason } => write!(f, "bad image {what}: {reason}"),
            Error::UnknownModel {
                name,
                present,
                not_downloaded,
            } => write!(
                f,
                "unknown model `{name}` (no such file or directory, and not a model name); \
                 models present: {}; registered but not downloaded: {}",
                list_or_none(present),
                list_or_none(not_downloaded)
            ),
            Error::ModelNotDownloaded {
                name,
                searched,
                hint,
            } => write!(
                f,
                "model `{name}` is not present in {}: {hint}",
                searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            Error::BadModel { path, reason } => {
                write!(f, "bad model {}: {reason}", path.display())
            }
            Error::UnsupportedTask {
                model,
                task,
                supported,
            } => write!(
                f,
                "model `{model}` does not do {task} segmentation; it supports: {}",
                supported.join(", ")
            ),
            Error::Device { name, reason } => write!(f, "device `{name}`: {reason}"),
            Error::Training(_) => f.write_str("training"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // No context of its own: the core error's sources follow its message.
            Error::Core(e) => e.source(),
            Error::Checkpoint { source, .. } => Some(&**source),
            Error::Training(e) => Some(&**e),
            _ => None,
        }
    }
}

impl Error {
    /// The one way a checkpoint failure becomes an [`Error::Checkpoint`]: `source` (a file
    /// error from reading it, or a weight that does not fit) while loading `model` from
    /// `checkpoint`.
    ///
    /// ```
    /// use segkit_models::Error;
    /// let missing = segkit_core::Error::MissingWeight {
    ///     key: "conv.weight".into(),
    ///     available: vec![],
    /// };
    /// let e = Error::checkpoint("tiny", "m.safetensors", missing);
    /// assert_eq!(e.to_string(), "loading `tiny` from m.safetensors");
    /// assert_eq!(
    ///     segkit_core::error::Report(&e).to_string(),
    ///     "loading `tiny` from m.safetensors: missing weight `conv.weight`"
    /// );
    /// assert_eq!(
    ///     segkit_core::error::missing_weight(&e).map(|m| m.key),
    ///     Some("conv.weight")
    /// );
    /// ```
    pub fn checkpoint(
        model: impl Into<String>,
        checkpoint: impl Into<PathBuf>,
        source: segkit_core::Error,
    ) -> Self {
        Error::Checkpoint {
            model: model.into(),
            checkpoint: checkpoint.into(),
            source: Box::new(source),
        }
    }

    /// Attributes a weight error met while building `model` from `checkpoint` (what
    /// `segkit_core::checkpoint::load_model` returns: [`segkit_core::Error::MissingWeight`],
    /// [`segkit_core::Error::ShapeMismatch`] or [`segkit_core::Error::UnexpectedWeights`]) to
    /// the checkpoint, as an [`Error::Checkpoint`] ([`Error::checkpoint`]); any other error
    /// (an invalid config, a device failure) is returned unchanged.
    pub fn in_checkpoint(self, model: &str, checkpoint: &std::path::Path) -> Self {
        match self {
            Error::Core(
                source @ (segkit_core::Error::MissingWeight { .. }
                | segkit_core::Error::ShapeMismatch { .. }
                | segkit_core::Error::UnexpectedWeights { .. }),
            ) => Error::checkpoint(model, checkpoint, source),
            other => other,
        }
    }

    /// The segkit-core error this error carries ([`Error::Core`], or the reason of an
    /// [`Error::Checkpoint`]), if any.
    pub fn as_core(&self) -> Option<&segkit_core::Error> {
        match self {
            Error::Core(e) => Some(e),
            Error::Checkpoint { source, .. } => Some(source),
            Error::Training(e) => e.downcast_ref::<Error>().and_then(Error::as_core),
            _ => None,
        }
    }

    /// The missing weight this error reports, whatever its wrapping (see
    /// [`segkit_core::error::missing_weight`], which also walks `source()` chains).
    pub fn missing_weight(&self) -> Option<segkit_core::error::MissingWeight<'_>> {
        self.as_core()
            .and_then(segkit_core::Error::as_missing_weight)
    }
}

impl From<segkit_core::Error> for Error {
    fn from(e: segkit_core::Error) -> Self {
        Error::Core(e)
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}

impl From<Error> for segkit_core::Error {
    /// Flattens a segkit error into segkit-core's (for code that speaks only core errors).
    fn from(e: Error) -> Self {
        match e {
            Error::Core(e) => e,
            Error::Checkpoint { source, .. } => *source,
            Error::BadImage { what, reason } => segkit_core::Error::BadImage { what, reason },
            other => segkit_core::Error::InvalidConfig(other.to_string()),
        }
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// `Result` with segkit's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_errors_are_attributed_to_the_checkpoint_and_others_pass_through() {
        let shape = Error::Core(segkit_core::Error::ShapeMismatch {
            what: "decode_head.conv_seg.weight".into(),
            expected: vec![4, 8, 1, 1],
            got: vec![5, 8, 1, 1],
        });
        let path = std::path::Path::new("w/model.safetensors");
        match shape.in_checkpoint("tiny", path) {
            Error::Checkpoint {
                model,
                checkpoint,
                source,
            } => {
                assert_eq!((model.as_str(), checkpoint.as_path()), ("tiny", path));
                assert!(matches!(*source, segkit_core::Error::ShapeMismatch { .. }));
            }
            other => panic!("{other}"),
        }
        let cfg = Error::InvalidConfig("no classes".into()).in_checkpoint("tiny", path);
        assert!(matches!(cfg, Error::InvalidConfig(_)), "{cfg}");
        let io = segkit_core::Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("truncated"),
        };
        let e = Error::checkpoint("tiny", path, io);
        assert_eq!(e.to_string(), "loading `tiny` from w/model.safetensors");
        // Each message once: the context, the file, the I/O error.
        assert_eq!(
            segkit_core::error::Report(&e).to_string(),
            "loading `tiny` from w/model.safetensors: w/model.safetensors: truncated"
        );
        assert!(segkit_core::error::find(&e).is_some());
    }

    #[test]
    fn train_like_errors_keep_their_type_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("diverged")]
        struct Diverged;
        let e = Error::Training(Box::new(Diverged));
        assert_eq!(
            segkit_core::error::Report(&e).to_string(),
            "training: diverged"
        );
        let src = std::error::Error::source(&e).unwrap();
        assert!(src.downcast_ref::<Diverged>().is_some());
    }
}
