//! Adaptive average pooling with PyTorch's bin boundaries.
//!
//! Matches PyTorch's `torch.nn.functional.adaptive_avg_pool2d(x, (oh, ow))`: output row `i`
//! averages input rows `floor(i * H / oh) .. ceil((i + 1) * H / oh)` (and likewise for columns),
//! so bins may overlap, differ in size, or repeat input rows when `oh > H`. This is what PSPNet's
//! pyramid pooling module (bins 1, 2, 3, 6) needs on inputs of any size.
//!
//! On CPU the kernel sums each bin directly from a contiguous `f32` buffer, in parallel over the
//! `N x C` planes. Other devices use two small averaging matrices and batched matmuls
//! ([`adaptive_avg_pool2d_fallback`]). On CPU (f32) the kernel is a candle custom op with its
//! own backward pass, PyTorch's: each bin's gradient divided by its height and width and added
//! to the bin's input elements, bins in row-major order. (The matmul path's backward also
//! computes a gradient for the constant averaging matrices, which candle keeps, together with
//! the graph that computed it, until the whole backward pass ends.)
//!
//! # Shapes
//! `x`: `N x C x H x W` -> `N x C x oh x ow`; `H`, `W`, `oh`, `ow` must be positive.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_core::ops::adaptive_avg_pool2d;
//!
//! // 5 columns into 3 bins: [0, 2), [1, 4), [3, 5) -- overlapping, as in PyTorch.
//! let x = Tensor::new(&[[[[0f32, 1.0, 2.0, 3.0, 4.0]]]], &Device::Cpu)?;
//! let y = adaptive_avg_pool2d(&x, (1, 3))?;
//! assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [0.5, 2.0, 3.5]);
//! # Ok::<(), segkit_core::Error>(())
//! ```

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::resize::{alloc_output, cpu_output, dims4, with_cpu_f32};
use super::{cpu_operand, with_cpu_slices};
use crate::{Error, Result};

/// PyTorch's `start_index`: `floor(i * input / output)`.
#[inline]
fn bin_start(i: usize, output: usize, input: usize) -> usize {
    (i * input) / output
}

/// PyTorch's `end_index`: `ceil((i + 1) * input / output)`.
#[inline]
fn bin_end(i: usize, output: usize, input: usize) -> usize {
    ((i + 1) * input).div_ceil(output)
}

fn check_args(x: &Tensor, size: (usize, usize)) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = dims4(x, "adaptive_avg_pool2d", "x")?;
    if h == 0 || w == 0 {
        return Err(Error::InvalidArgument(format!(
            "adaptive_avg_pool2d: input spatial size must be positive, got {h} x {w}"
        )));
    }
    if size.0 == 0 || size.1 == 0 {
        return Err(Error::InvalidArgument(format!(
            "adaptive_avg_pool2d: output size must be positive, got {} x {}",
            size.0, size.1
        )));
    }
    Ok((n, c, h, w))
}

/// Adaptive average pooling of an `N x C x H x W` map to `size = (oh, ow)`, exactly as
/// `F.adaptive_avg_pool2d(x, size)`. Works when `oh`/`ow` do not divide `H`/`W` and when they
/// exceed them.
///
/// Errors if `x` is not rank 4 or a spatial size (input or output) is zero.
pub fn adaptive_avg_pool2d(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = check_args(x, size)?;
    if !x.device().is_cpu() {
        return adaptive_avg_pool2d_fallback(x, size);
    }
    let (oh, ow) = size;
    let bins = |o: usize, i: usize| -> Vec<(usize, usize)> {
        (0..o)
            .map(|k| (bin_start(k, o, i), bin_end(k, o, i)))
            .collect()
    };
    let op = AdaptivePool {
        rows: bins(oh, h),
        cols: bins(ow, w),
        h,
        w,
    };
    if x.track_op() {
        if x.dtype() != DType::F32 || n * c == 0 {
            return adaptive_avg_pool2d_fallback(x, size);
        }
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    let out = with_cpu_f32(x, |src| Ok(op.forward(src)))?;
    cpu_output(out, &[n, c, oh, ow], x.dtype())
}

fn pool_plane(
    plane: &[f32],
    w: usize,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
    dst: &mut [f32],
) {
    let ow = cols.len();
    // Column sums of the current row bin, reused by every column bin.
    let mut colsum = vec![0f32; w];
    for (oy, &(y0, y1)) in rows.iter().enumerate() {
        colsum.iter_mut().for_each(|s| *s = 0.0);
        for y in y0..y1 {
            for (s, &v) in colsum.iter_mut().zip(&plane[y * w..(y + 1) * w]) {
                *s += v;
            }
        }
        let kh = (y1 - y0) as f32;
        for (o, &(x0, x1)) in dst[oy * ow..(oy + 1) * ow].iter_mut().zip(cols) {
            let sum: f32 = colsum[x0..x1].iter().sum();
            *o = sum / kh / (x1 - x0) as f32;
        }
    }
}

/// One plane's input gradient: each bin's gradient `/ kh / kw`, added to the bin's elements,
/// bins in row-major order (PyTorch's `adaptive_avg_pool2d_backward` on CPU).
fn unpool_plane(
    dy: &[f32],
    w: usize,
    rows: &[(usize, usize)],
    cols: &[(usize, usize)],
    dx: &mut [f32],
) {
    let ow = cols.len();
    for (oy, &(y0, y1)) in rows.iter().enumerate() {
        for (ox, &(x0, x1)) in cols.iter().enumerate() {
            let g = dy[oy * ow + ox] / (y1 - y0) as f32 / (x1 - x0) as f32;
            for row in dx[y0 * w..y1 * w].chunks_exact_mut(w) {
                row[x0..x1].iter_mut().for_each(|d| *d += g);
            }
        }
    }
}

/// The differentiable CPU kernel: the bins of each axis and the input's spatial size.
struct AdaptivePool {
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
    h: usize,
    w: usize,
}

impl AdaptivePool {
    /// Pools the contiguous planes of `src`.
    fn forward(&self, src: &[f32]) -> Vec<f32> {
        let (oh, ow) = (self.rows.len(), self.cols.len());
        let mut out = alloc_output(src.len() / (self.h * self.w) * oh * ow);
        out.par_chunks_mut(oh * ow)
            .zip(src.par_chunks(self.h * self.w))
            .for_each(|(dst, plane)| pool_plane(plane, self.w, &self.rows, &self.cols, dst));
        out
    }
}

impl CustomOp1 for AdaptivePool {
    fn name(&self) -> &'static str {
        "segkit-adaptive-avg-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_operand(s, l, "segkit adaptive_avg_pool2d")?;
        let (oh, ow) = (self.rows.len(), self.cols.len());
        let out = self.forward(x);
        let mut dims = l.dims().to_vec();
        let r = dims.len();
        (dims[r - 2], dims[r - 1]) = (oh, ow);
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (oh, ow) = (self.rows.len(), self.cols.len());
        let dy = dy.contiguous()?;
        let dx = with_cpu_slices([&dy], "segkit adaptive_avg_pool2d backward", |[dy]| {
            let mut dx = alloc_output(x.elem_count());
            dx.par_chunks_mut(self.h * self.w)
                .zip(dy.par_chunks(oh * ow))
                .for_each(|(d, g)| unpool_plane(g, self.w, &self.rows, &self.cols, d));
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Builds the `out x in` averaging matrix of one axis (row `i` = `1/len` over bin `i`).
fn avg_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    for i in 0..output {
        let (s, e) = (bin_start(i, output, input), bin_end(i, output, input));
        let v = 1.0 / (e - s) as f32;
        m[i * input + s..i * input + e]
            .iter_mut()
            .for_each(|x| *x = v);
    }
    m
}

/// [`adaptive_avg_pool2d`] composed from candle tensor ops (`Ph @ x @ Pw^T` with the bins'
/// averaging matrices): the path taken on non-CPU devices, public for tests.
#[doc(hidden)]
pub fn adaptive_avg_pool2d_fallback(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = check_args(x, size)?;
    let (oh, ow) = size;
    let dev = x.device();
    if n * c == 0 {
        return Ok(Tensor::zeros((n, c, oh, ow), x.dtype(), dev)?);
    }
    let ph = Tensor::from_vec(avg_matrix(h, oh), (1, oh, h), dev)?.to_dtype(x.dtype())?;
    let pwt = Tensor::from_vec(avg_matrix(w, ow), (ow, w), dev)?
        .to_dtype(x.dtype())?
        .t()?
        .contiguous()?
        .reshape((1, w, ow))?;
    let planes = x.contiguous()?.reshape((n * c, h, w))?;
    let y = planes.broadcast_matmul(&pwt)?; // (NC, H, ow)
    let y = ph.broadcast_matmul(&y)?; // (NC, oh, ow)
    Ok(y.reshape((n, c, oh, ow))?)
}
