//! The CLI's error type: one clear line per failure.

use std::path::PathBuf;

/// Everything the CLI reports to the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An error from segkit's libraries.
    #[error(transparent)]
    Core(#[from] segkit_core::Error),
    /// A model error (config, checkpoint that does not fit — naming the model, the file and
    /// the key —, image, device).
    #[error(transparent)]
    Model(Box<segkit::Error>),
    /// A preset name that does not exist.
    #[error("unknown preset `{name}`; valid presets: {}", .valid.join(", "))]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The names that exist.
        valid: Vec<String>,
    },
    /// A config file that does not parse.
    #[error("bad config {}: {reason}", .path.display())]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An output path that is one of the command's inputs: refused, nothing written.
    #[error(
        "refusing to write {}: it is the {role} {}; choose another output path",
        .output.display(),
        .input.display()
    )]
    WouldOverwrite {
        /// The output path given.
        output: PathBuf,
        /// The input it would replace.
        input: PathBuf,
        /// Which input (`--weights`, `--input`, ...).
        role: String,
    },
    /// An output path that cannot be written (its directory is missing or a file, or it is
    /// a directory).
    #[error("cannot write {}: {reason}", .path.display())]
    Output {
        /// The output path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Wrong or missing command-line arguments.
    #[error("{0}")]
    Usage(String),
}

impl From<candle_core::Error> for CliError {
    fn from(e: candle_core::Error) -> Self {
        CliError::Core(e.into())
    }
}

impl From<segkit::Error> for CliError {
    fn from(e: segkit::Error) -> Self {
        match e {
            segkit::Error::UnknownPreset { name, valid } => CliError::UnknownPreset { name, valid },
            segkit::Error::Core(e) => CliError::Core(e),
            other => CliError::Model(Box::new(other)),
        }
    }
}
