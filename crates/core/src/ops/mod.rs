//! Tensor ops that candle lacks or that segkit needs faster, with PyTorch semantics.
//!
//! Every op works on any device: CPU gets a dedicated kernel (rayon, contiguous buffers), other
//! devices fall back to composed candle ops.

mod conv;

pub use conv::{activate, conv2d, Activation, Conv2dParams};
mod pool2d;

pub use pool2d::{avg_pool2d, max_pool2d, pool_output_len};
