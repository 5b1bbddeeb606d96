//! Antialiased bilinear resize: PyTorch's `F.interpolate(x, size, mode="bilinear",
//! align_corners=False, antialias=True)` (ATen `_upsample_bilinear2d_aa`), which is what
//! torchvision's `transforms.v2.functional.resize` runs on float tensors and therefore what HF's
//! OneFormer post-processing resizes with.
//!
//! For upsampling this is plain bilinear interpolation up to rounding; for downsampling it is a
//! triangle filter whose support grows with the scale (Pillow's `BILINEAR` filter).
//!
//! The CPU kernel reproduces ATen's float arithmetic: per-dimension weight tables computed in the
//! same mix of `f32` / `f64`, the width pass first and the height pass second (a pass is skipped
//! when that size does not change), and the taps of one output accumulated in order, the way
//! the AVX2 build of `interpolate_separable_1d` runs them: the first product rounded, then, of
//! the `m = taps - 1` remaining ones, the first `4 * (m / 4)` added as rounded products and the
//! rest with fused multiply-adds (a 4-lane in-order vectorised loop plus an FMA-contracted scalar
//! tail; this order was inferred from torch's outputs and fits all of them).
//! The result does not depend on the CPU, and it is bit-identical to torch 2.15 running its AVX2
//! kernel build (checked on up- and downsampling); where torch dispatches another build its own
//! rounding may differ (without FMA in any resize, with AVX-512 possibly when shrinking).
//! Other devices use the same tables as two dense matrix products
//! ([`resize_bilinear_antialias_fallback`]), equal up to summation order.
//!
//! # Shapes
//! `x`: `N x C x H x W` -> `N x C x oh x ow` for `size = (oh, ow)`; `H`, `W`, `oh`, `ow` must be
//! non-zero. The output has `x`'s dtype and device; equal sizes return `x` unchanged.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// Per-output tap ranges and weights of one dimension (ATen's
/// `_compute_indices_min_size_weights_aa` with the linear filter).
struct AaTable {
    /// First input index of each output.
    start: Vec<usize>,
    /// Number of taps of each output (at least 1).
    len: Vec<usize>,
    /// `max` weights per output, zero-padded.
    weights: Vec<f32>,
    /// Weights stored per output.
    max: usize,
}

fn aa_table(input: usize, output: usize) -> AaTable {
    // ATen: `scalar_t scale = area_pixel_compute_scale<float>(..)` = (float)in / out.
    let scale = input as f32 / output as f32;
    let support: f32 = if scale >= 1.0 {
        (1.0f64 * scale as f64) as f32
    } else {
        1.0
    };
    let max = (support.ceil() as usize) * 2 + 1;
    let invscale: f32 = if scale >= 1.0 {
        (1.0 / scale as f64) as f32
    } else {
        1.0
    };
    let mut t = AaTable {
        start: Vec::with_capacity(output),
        len: Vec::with_capacity(output),
        weights: vec![0.0; output * max],
        max,
    };
    for i in 0..output {
        let center = (scale as f64 * (i as f64 + 0.5)) as f32;
        let xmin = (((center - support) as f64 + 0.5) as i64).max(0);
        let xsize = (((center + support) as f64 + 0.5) as i64).min(input as i64) - xmin;
        let xsize = xsize.clamp(0, max as i64) as usize;
        let w = &mut t.weights[i * max..(i + 1) * max];
        let mut total = 0f32;
        for (j, wj) in w.iter_mut().enumerate().take(xsize) {
            let arg = ((((j as i64 + xmin) as f32 - center) as f64 + 0.5) * invscale as f64) as f32;
            let a = arg.abs();
            *wj = if (a as f64) < 1.0 {
                (1.0 - a as f64) as f32
            } else {
                0.0
            };
            total += *wj;
        }
        if total != 0.0 {
            for wj in w.iter_mut().take(xsize) {
                *wj /= total;
            }
        }
        // ATen reads the first tap even when a (degenerate) range is empty; keep it in bounds.
        let start = (xmin as usize).min(input - 1);
        t.start.push(start);
        t.len.push(xsize.clamp(1, input - start));
    }
    t
}

/// One output value: `taps[0] * w[0]`, then the remaining taps in order as ATen's AVX2 kernel
/// accumulates them (see the module docs).
#[inline(always)]
fn accumulate(first: f32, w0: f32, len: usize, tap: impl Fn(usize) -> (f32, f32)) -> f32 {
    let mut acc = first * w0;
    let vectorised = 4 * ((len - 1) / 4);
    for j in 1..len {
        let (t, w) = tap(j);
        acc = if j <= vectorised {
            acc + t * w
        } else {
            t.mul_add(w, acc)
        };
    }
    acc
}

/// Width pass over whole rows: `src` holds rows of `tab`'s input length, `dst` rows of its
/// output length.
#[inline(always)]
fn rows_pass(src: &[f32], dst: &mut [f32], win: usize, tab: &AaTable) {
    let wout = tab.start.len();
    for (s, d) in src.chunks_exact(win).zip(dst.chunks_exact_mut(wout)) {
        for (o, out) in d.iter_mut().enumerate() {
            let (st, len) = (tab.start[o], tab.len[o]);
            let w = &tab.weights[o * tab.max..];
            let t = &s[st..st + len];
            *out = accumulate(t[0], w[0], len, |j| (t[j], w[j]));
        }
    }
}

/// Height pass for output rows `first_row..` of one plane: `src` is the plane (`hin x width`),
/// `dst` holds the output rows. Same accumulation as [`accumulate`], one whole row at a time.
#[inline(always)]
fn cols_pass(src: &[f32], dst: &mut [f32], width: usize, first_row: usize, tab: &AaTable) {
    for (r, d) in dst.chunks_exact_mut(width).enumerate() {
        let o = first_row + r;
        let (st, len) = (tab.start[o], tab.len[o]);
        let w = &tab.weights[o * tab.max..];
        let row = |j: usize| &src[(st + j) * width..(st + j + 1) * width];
        for (out, &t) in d.iter_mut().zip(row(0)) {
            *out = t * w[0];
        }
        let vectorised = 4 * ((len - 1) / 4);
        for (j, &wj) in w.iter().enumerate().take(len).skip(1) {
            if j <= vectorised {
                for (out, &t) in d.iter_mut().zip(row(j)) {
                    *out += t * wj;
                }
            } else {
                for (out, &t) in d.iter_mut().zip(row(j)) {
                    *out = t.mul_add(wj, *out);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn rows_pass_fma(src: &[f32], dst: &mut [f32], win: usize, tab: &AaTable) {
    rows_pass(src, dst, win, tab)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn cols_pass_fma(src: &[f32], dst: &mut [f32], width: usize, first_row: usize, tab: &AaTable) {
    cols_pass(src, dst, width, first_row, tab)
}

fn run_rows(src: &[f32], dst: &mut [f32], win: usize, tab: &AaTable) {
    // With FMA, `mul_add` is one instruction instead of a libm call; the results are the same.
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        // SAFETY: the running CPU supports FMA (checked just above).
        unsafe { rows_pass_fma(src, dst, win, tab) };
        return;
    }
    rows_pass(src, dst, win, tab)
}

fn run_cols(src: &[f32], dst: &mut [f32], width: usize, first_row: usize, tab: &AaTable) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        // SAFETY: the running CPU supports FMA (checked just above).
        unsafe { cols_pass_fma(src, dst, width, first_row, tab) };
        return;
    }
    cols_pass(src, dst, width, first_row, tab)
}

/// Rows per parallel task: about 64 Ki values of output per task.
fn rows_per_task(row_len: usize) -> usize {
    (65536 / row_len.max(1)).max(1)
}

fn dims(x: &Tensor, size: (usize, usize)) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = match *x.dims() {
        [n, c, h, w] => (n, c, h, w),
        ref d => {
            return Err(Error::InvalidArgument(format!(
                "resize_bilinear_antialias: input must be N x C x H x W, got shape {d:?}"
            )))
        }
    };
    if h == 0 || w == 0 || size.0 == 0 || size.1 == 0 {
        return Err(Error::InvalidArgument(format!(
            "resize_bilinear_antialias: cannot resize {h}x{w} to {}x{}",
            size.0, size.1
        )));
    }
    Ok((n, c, h, w))
}

/// Antialiased bilinear resize of an `N x C x H x W` tensor to `size = (oh, ow)`, matching
/// `F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)` (see the module
/// docs for the exactness).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use segkit_oneformer::postprocess::resize_bilinear_antialias;
///
/// let x = Tensor::arange(0f32, 16.0, &Device::Cpu)?.reshape((1, 1, 4, 4))?;
/// let down = resize_bilinear_antialias(&x, (2, 2))?; // a 2x2 box-like average
/// assert_eq!(down.dims(), [1, 1, 2, 2]);
/// # Ok::<(), segkit_oneformer::Error>(())
/// ```
pub fn resize_bilinear_antialias(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = dims(x, size)?;
    let (oh, ow) = size;
    if (oh, ow) == (h, w) {
        return Ok(x.clone());
    }
    if !x.device().is_cpu() {
        return resize_bilinear_antialias_fallback(x, size);
    }
    let dtype = x.dtype();
    let data = resize_cpu(x, (n, c, h, w), size)?;
    let out = Tensor::from_vec(data, (n, c, oh, ow), &Device::Cpu)?;
    Ok(if dtype == DType::F32 {
        out
    } else {
        out.to_dtype(dtype)?
    })
}

/// The CPU kernel of [`resize_bilinear_antialias`] on `x` (`n x c x h x w`, any dtype, computed
/// in f32): the resized planes as one vector, no tensor made.
fn resize_cpu(
    x: &Tensor,
    (n, c, h, w): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
) -> Result<Vec<f32>> {
    let planes = n * c;
    let mut data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if ow != w {
        let tab = aa_table(w, ow);
        let mut out = vec![0f32; planes * h * ow];
        let rows = rows_per_task(ow);
        out.par_chunks_mut(rows * ow)
            .zip(data.par_chunks(rows * w))
            .for_each(|(d, s)| run_rows(s, d, w, &tab));
        data = out;
    }
    if oh != h {
        let tab = aa_table(h, oh);
        let mut out = vec![0f32; planes * oh * ow];
        let rows = rows_per_task(ow).min(oh);
        let src = &data;
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .flat_map(|(p, plane)| {
                plane
                    .par_chunks_mut(rows * ow)
                    .enumerate()
                    .map(move |(t, d)| (p, t, d))
            })
            .for_each(|(p, t, d)| {
                let plane = &src[p * h * ow..(p + 1) * h * ow];
                run_cols(plane, d, ow, t * rows, &tab);
            });
        data = out;
    }
    Ok(data)
}

/// [`resize_bilinear_antialias`] of the f32 CPU planes `x` (`N x H x W`) to `size`, as the
/// `N x size.0 x size.1` values (no tensor made, so a caller that needs them on the host holds
/// one copy, not two). `None` when `x` is not an f32 CPU tensor.
pub(crate) fn resize_planes_f32(x: &Tensor, size: (usize, usize)) -> Result<Option<Vec<f32>>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let x = x.unsqueeze(0)?;
    let (n, c, h, w) = dims(&x, size)?;
    if (size.0, size.1) == (h, w) {
        return Ok(Some(x.flatten_all()?.to_vec1::<f32>()?));
    }
    Ok(Some(resize_cpu(&x, (n, c, h, w), size)?))
}

/// The interpolation matrix (`output x input`) of one dimension.
fn aa_matrix(input: usize, output: usize, device: &Device) -> Result<Tensor> {
    let tab = aa_table(input, output);
    let mut m = vec![0f32; output * input];
    for o in 0..output {
        for j in 0..tab.len[o] {
            m[o * input + tab.start[o] + j] = tab.weights[o * tab.max + j];
        }
    }
    Ok(Tensor::from_vec(m, (output, input), device)?)
}

/// [`resize_bilinear_antialias`] as two matrix products with the same weights (the path of
/// non-CPU devices; public so that tests can run it on CPU). Equal to the CPU kernel up to the
/// summation order of the matrix products.
pub fn resize_bilinear_antialias_fallback(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = dims(x, size)?;
    let (oh, ow) = size;
    if (oh, ow) == (h, w) {
        return Ok(x.clone());
    }
    let dtype = x.dtype();
    let dev = x.device();
    let mut y = x.to_dtype(DType::F32)?.reshape((n * c, h, w))?;
    if ow != w {
        let mw = aa_matrix(w, ow, dev)?.t()?;
        y = y.broadcast_matmul(&mw)?;
    }
    if oh != h {
        let mh = aa_matrix(h, oh, dev)?;
        y = mh.broadcast_matmul(&y.contiguous()?)?;
    }
    Ok(y.reshape((n, c, oh, ow))?.to_dtype(dtype)?)
}
