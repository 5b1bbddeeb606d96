//! segkit-core: the foundation every segkit component crate builds on.
//!
//! - [`FeatureSpec`] and the [`Backbone`] / [`Neck`] / [`DecodeHead`] traits through which
//!   components connect without knowing each other's internals (heads return every output by
//!   name: [`HeadOutput`]);
//! - [`Error`], the one error type of the component crates, and [`error::missing_weight`] to
//!   find a missing weight from any entry point;
//! - random initialisation as the reference implementations do it, in [`init`] (every layer
//!   passes its scheme to the `VarBuilder`, so a `VarMap` starts where PyTorch would);
//! - shared layers in [`nn`] (mmcv-compatible `ConvModule`, `LayerNorm2d`, `Mlp`);
//! - tensor ops candle lacks in [`ops`], with PyTorch semantics and fast CPU kernels;
//! - checkpoint reading in [`checkpoint`] (safetensors, PyTorch `.pth` / `.bin`);
//! - a seedable per-thread random source for training-time randomness in [`random`];
//! - process-wide CPU settings applied for the library user in [`runtime`] (candle's
//!   element-wise thread pool, no environment variable needed);
//! - deterministic synthetic weights for parity tests in `testing` (feature `testing`).
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod checkpoint;
pub mod error;
pub mod init;
pub mod nn;
pub mod ops;
pub mod random;
pub mod runtime;
pub mod spec;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
pub use spec::{Backbone, DecodeHead, FeatureSpec, HeadOutput, HeadOutputSpec, Neck, OutputKind};
