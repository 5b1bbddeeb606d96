//! Max and average pooling with padding and `ceil_mode`, as PyTorch's `F.max_pool2d` and
//! `F.avg_pool2d` (candle's own pools have neither padding nor ceil mode).
//!
//! # Shapes
//! `N x C x H x W` -> `N x C x Ho x Wo`, `Ho = floor_or_ceil((H + 2p - k) / s) + 1`, where in
//! ceil mode the last window must start inside the input or the left padding (PyTorch's rule).

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// Output length of a pooling window sweep, with PyTorch's ceil-mode correction.
pub fn pool_output_len(
    len: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    ceil_mode: bool,
) -> Result<usize> {
    if kernel == 0 || stride == 0 {
        return Err(Error::InvalidArgument(
            "pooling kernel and stride must be positive".into(),
        ));
    }
    if pad * 2 > kernel {
        return Err(Error::InvalidArgument(format!(
            "pooling padding {pad} must be at most half the kernel {kernel}"
        )));
    }
    let span = len + 2 * pad;
    if span < kernel {
        return Err(Error::InvalidArgument(format!(
            "pooling kernel {kernel} larger than padded input {span}"
        )));
    }
    let num = span - kernel;
    let mut out = if ceil_mode {
        num.div_ceil(stride) + 1
    } else {
        num / stride + 1
    };
    // The last window must start inside the input or the left padding.
    if ceil_mode && (out - 1) * stride >= len + pad {
        out -= 1;
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Pool {
    Max,
    Avg { count_include_pad: bool },
}

fn check4(x: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    x.dims4().map_err(|_| {
        Error::InvalidArgument(format!(
            "{what} expects an N x C x H x W tensor, got shape {:?}",
            x.dims()
        ))
    })
}

fn pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
    ceil_mode: bool,
    kind: Pool,
) -> Result<Tensor> {
    let (n, c, h, w) = check4(x, "pool2d")?;
    let oh = pool_output_len(h, kernel, stride, pad, ceil_mode)?;
    let ow = pool_output_len(w, kernel, stride, pad, ceil_mode)?;
    let dev = x.device().clone();
    let dt = x.dtype();
    let xs = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = vec![0f32; n * c * oh * ow];
    // Per output row/col: window [start, end) clipped to the input, and the padded extent.
    let ranges = |len: usize, olen: usize| -> Vec<(usize, usize, usize)> {
        (0..olen)
            .map(|o| {
                let start = (o * stride) as isize - pad as isize;
                let end_pad = (start + kernel as isize).min((len + pad) as isize);
                let pad_count = (end_pad - start) as usize;
                let s = start.max(0) as usize;
                let e = (end_pad.min(len as isize)).max(0) as usize;
                (s, e.max(s), pad_count)
            })
            .collect()
    };
    let rows = ranges(h, oh);
    let cols = ranges(w, ow);
    out.par_chunks_mut(oh * ow)
        .zip(xs.par_chunks(h * w))
        .for_each(|(o, plane)| {
            for (i, &(r0, r1, rp)) in rows.iter().enumerate() {
                for (j, &(c0, c1, cp)) in cols.iter().enumerate() {
                    let v = match kind {
                        Pool::Max => {
                            let mut m = f32::NEG_INFINITY;
                            for r in r0..r1 {
                                for &v in &plane[r * w + c0..r * w + c1] {
                                    // NaN propagates as in PyTorch.
                                    if v > m || v.is_nan() {
                                        m = v;
                                    }
                                }
                            }
                            m
                        }
                        Pool::Avg { count_include_pad } => {
                            let mut s = 0f32;
                            for r in r0..r1 {
                                s += plane[r * w + c0..r * w + c1].iter().sum::<f32>();
                            }
                            let div = if count_include_pad {
                                rp * cp
                            } else {
                                (r1 - r0) * (c1 - c0)
                            };
                            if div == 0 {
                                0.0
                            } else {
                                s / div as f32
                            }
                        }
                    };
                    o[i * ow + j] = v;
                }
            }
        });
    Ok(Tensor::from_vec(out, (n, c, oh, ow), &Device::Cpu)?
        .to_dtype(dt)?
        .to_device(&dev)?)
}

/// `F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)`; padding acts as `-inf`.
pub fn max_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
) -> Result<Tensor> {
    pool2d(x, kernel, stride, padding, ceil_mode, Pool::Max)
}

/// `F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)`.
pub fn avg_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
    count_include_pad: bool,
) -> Result<Tensor> {
    pool2d(
        x,
        kernel,
        stride,
        padding,
        ceil_mode,
        Pool::Avg { count_include_pad },
    )
}
