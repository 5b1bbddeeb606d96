//! Max and average pooling with padding and `ceil_mode`, as PyTorch's `F.max_pool2d` and
//! `F.avg_pool2d` (candle's own pools have neither padding nor ceil mode).
//!
//! # Shapes
//! `N x C x H x W` -> `N x C x Ho x Wo`, `Ho = floor_or_ceil((H + 2p - k) / s) + 1`, where in
//! ceil mode the last window must start inside the input or the left padding (PyTorch's rule).
//!
//! Training: for a tensor that records gradients ([`Tensor::track_op`]) the pooling is a
//! candle custom op whose backward pass routes gradients as PyTorch does (max: to the first
//! maximum of each window; average: spread over the window by the forward's divisor).

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

/// Geometry of one pooling call.
#[derive(Clone, Copy)]
struct PoolGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    kind: Pool,
}

impl PoolGeom {
    /// Per output row/col: window `[start, end)` clipped to the input, and the padded extent.
    fn ranges(&self, len: usize, olen: usize) -> Vec<(usize, usize, usize)> {
        (0..olen)
            .map(|o| {
                let start = (o * self.stride) as isize - self.pad as isize;
                let end_pad = (start + self.kernel as isize).min((len + self.pad) as isize);
                let pad_count = (end_pad - start) as usize;
                let s = start.max(0) as usize;
                let e = (end_pad.min(len as isize)).max(0) as usize;
                (s, e.max(s), pad_count)
            })
            .collect()
    }

    fn divisor(
        &self,
        (r0, r1, rp): (usize, usize, usize),
        (c0, c1, cp): (usize, usize, usize),
    ) -> usize {
        match self.kind {
            Pool::Avg {
                count_include_pad: true,
            } => rp * cp,
            _ => (r1 - r0) * (c1 - c0),
        }
    }

    /// The forward kernel on a contiguous `N x C x H x W` buffer.
    fn forward(&self, xs: &[f32]) -> Vec<f32> {
        let (h, w, oh, ow) = (self.h, self.w, self.oh, self.ow);
        let mut out = vec![0f32; self.n * self.c * oh * ow];
        let rows = self.ranges(h, oh);
        let cols = self.ranges(w, ow);
        out.par_chunks_mut(oh * ow)
            .zip(xs.par_chunks(h * w))
            .for_each(|(o, plane)| {
                for (i, &rr) in rows.iter().enumerate() {
                    let (r0, r1, _) = rr;
                    for (j, &cc) in cols.iter().enumerate() {
                        let (c0, c1, _) = cc;
                        let v = match self.kind {
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
                            Pool::Avg { .. } => {
                                let mut s = 0f32;
                                for r in r0..r1 {
                                    s += plane[r * w + c0..r * w + c1].iter().sum::<f32>();
                                }
                                let div = self.divisor(rr, cc);
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
        out
    }

    /// The input gradient from the output gradient `dy`, as PyTorch: max pooling routes each
    /// output's gradient to the first maximum of its window (the element the forward pass
    /// kept, NaN included), average pooling spreads it over the window divided by the
    /// forward's divisor.
    fn backward(&self, xs: &[f32], dy: &[f32]) -> Vec<f32> {
        let (h, w, oh, ow) = (self.h, self.w, self.oh, self.ow);
        let mut dx = vec![0f32; self.n * self.c * h * w];
        let rows = self.ranges(h, oh);
        let cols = self.ranges(w, ow);
        dx.par_chunks_mut(h * w)
            .zip(xs.par_chunks(h * w).zip(dy.par_chunks(oh * ow)))
            .for_each(|(d, (plane, g))| {
                for (i, &rr) in rows.iter().enumerate() {
                    let (r0, r1, _) = rr;
                    for (j, &cc) in cols.iter().enumerate() {
                        let (c0, c1, _) = cc;
                        let gv = g[i * ow + j];
                        match self.kind {
                            Pool::Max => {
                                // PyTorch's rule: the window's first element unless a
                                // later one is larger (or NaN).
                                let mut m = f32::NEG_INFINITY;
                                let mut at = (r0 < r1 && c0 < c1).then_some(r0 * w + c0);
                                for r in r0..r1 {
                                    for c in c0..c1 {
                                        let v = plane[r * w + c];
                                        if v > m || v.is_nan() {
                                            m = v;
                                            at = Some(r * w + c);
                                        }
                                    }
                                }
                                if let Some(k) = at {
                                    d[k] += gv;
                                }
                            }
                            Pool::Avg { .. } => {
                                let div = self.divisor(rr, cc);
                                if div == 0 {
                                    continue;
                                }
                                let v = gv / div as f32;
                                for r in r0..r1 {
                                    for x in &mut d[r * w + c0..r * w + c1] {
                                        *x += v;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        dx
    }
}

/// The pooling as a candle custom op with a backward pass (for tensors that record
/// gradients).
struct PoolOp(PoolGeom);

impl candle_core::CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "segkit-pool2d"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let data = storage.as_slice::<f32>()?;
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("segkit pool2d: non-contiguous input")
        };
        let g = &self.0;
        Ok((
            candle_core::CpuStorage::F32(g.forward(&data[a..b])),
            candle_core::Shape::from((g.n, g.c, g.oh, g.ow)),
        ))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let xs = arg.detach().flatten_all()?.to_vec1::<f32>()?;
        let dy = grad_res
            .detach()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let g = &self.0;
        let dx = g.backward(&xs, &dy);
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
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
    let g = PoolGeom {
        n,
        c,
        h,
        w,
        oh,
        ow,
        kernel,
        stride,
        pad,
        kind,
    };
    let dev = x.device().clone();
    let dt = x.dtype();
    if x.track_op() {
        // Differentiable: the moves and casts record their own backward passes.
        let xc = x
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let y = xc.apply_op1(PoolOp(g))?;
        return Ok(y.to_dtype(dt)?.to_device(&dev)?);
    }
    let xs = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let out = g.forward(&xs);
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
