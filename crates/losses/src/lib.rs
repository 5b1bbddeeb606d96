//! segkit-losses: the training losses of the segkit models, with forward values and gradients
//! equal to the PyTorch references (torch.nn.functional, mmseg, transformers' Mask2Former /
//! OneFormer loss code, the official Gated-SCNN repository).
#![deny(missing_docs)]

/// Errors of segkit-losses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from segkit-core (shapes, ops).
    #[error(transparent)]
    Core(#[from] segkit_core::Error),
    /// An argument outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}

impl From<Error> for segkit_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(c) => c,
            Error::InvalidArgument(m) => segkit_core::Error::InvalidArgument(m),
        }
    }
}

/// Result alias of segkit-losses.
pub type Result<T> = std::result::Result<T, Error>;
