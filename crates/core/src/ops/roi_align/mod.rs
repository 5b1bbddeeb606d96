//! RoIAlign: bilinear pooling of regions of interest to a fixed size.
//!
//! Matches `torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio,
//! aligned)` (torchvision's CPU kernel `roi_align_forward_kernel_impl`), including its edge rules:
//!
//! - box corners are scaled by `spatial_scale`; `aligned = true` shifts them by `-0.5` pixel,
//!   `aligned = false` (Detectron v1 / Mask R-CNN) instead forces width and height to `>= 1`;
//! - each of the `PH x PW` bins averages a `gh x gw` grid of bilinear samples, with
//!   `gh = sampling_ratio` if `> 0`, else `ceil(roi_h / PH)` (likewise `gw`), divided by
//!   `max(gh * gw, 1)`;
//! - a sample with `y < -1`, `y > H`, `x < -1` or `x > W` is zero; otherwise coordinates are
//!   clamped at `0` and, past `H - 1` / `W - 1`, snapped to the last row / column.
//!
//! On CPU the kernel precomputes, per RoI, the four taps (flat index and weight) of every valid
//! sample, then applies them to each channel plane, in parallel over RoIs and channel blocks;
//! where the RoIs read about as many taps as the maps have pixels, a channels-last kernel
//! copies one block of channels at a time (at most 4 MiB, not a transposed copy of the whole
//! input) and applies each bin's separable row and column taps to whole channel vectors.
//! A CPU input that records gradients ([`Tensor::track_op`]) takes one custom op with
//! torchvision's backward (gradient to `input` only). Other devices use the separability
//! of the bilinear weights: per RoI, a `PH x H` row-weight
//! matrix and a `PW x W` column-weight matrix, applied with two matmuls per image and chunk of
//! RoIs ([`roi_align_fallback`]).
//!
//! # Shapes
//! `input`: `N x C x H x W`, `rois`: `K x 5` rows `(batch_index, x1, y1, x2, y2)` in input-image
//! coordinates -> `K x C x PH x PW` for `output_size = (PH, PW)`; `K` may be zero.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_core::ops::roi_align;
//!
//! let feat = Tensor::ones((2, 256, 50, 50), candle_core::DType::F32, &Device::Cpu)?;
//! // (batch index, x1, y1, x2, y2) in image pixels; the feature map has stride 4.
//! let rois = Tensor::new(&[[1f32, 10.0, 20.0, 110.0, 90.0]], &Device::Cpu)?;
//! let pooled = roi_align(&feat, &rois, (7, 7), 0.25, 2, false)?;
//! assert_eq!(pooled.dims(), [1, 256, 7, 7]);
//! # Ok::<(), segkit_core::Error>(())
//! ```

mod backward;
mod cpu;
mod fallback;

use candle_core::{DType, Device, Tensor};

use super::resize::dims4;
use crate::{Error, Result};

pub use cpu::roi_align_cpu;
pub use fallback::roi_align_fallback;

/// Per-axis sampling parameters of one RoI (torchvision's `roi_start_*`, `bin_size_*`,
/// `roi_bin_grid_*`).
#[derive(Debug, Clone, Copy)]
struct Axis {
    start: f32,
    bin: f32,
    grid: i64,
}

impl Axis {
    /// Sample coordinate `i` of bin `p` (same operation order as torchvision).
    #[inline]
    fn coord(&self, p: usize, i: i64) -> f32 {
        self.start + p as f32 * self.bin + (i as f32 + 0.5) * self.bin / self.grid as f32
    }
}

/// A validated RoI: batch item and both axes.
#[derive(Debug, Clone, Copy)]
struct Roi {
    batch: usize,
    y: Axis,
    x: Axis,
    count: f32,
}

fn check_args(
    input: &Tensor,
    rois: &Tensor,
    output_size: (usize, usize),
) -> Result<(usize, usize, usize, usize, usize)> {
    let (n, c, h, w) = dims4(input, "roi_align", "input")?;
    let k = match *rois.dims() {
        [k, 5] => k,
        [k, _] => return Err(Error::shape("roi_align rois", &[k, 5], rois.dims())),
        ref d => {
            return Err(Error::InvalidArgument(format!(
                "roi_align: `rois` must be K x 5 (batch_index, x1, y1, x2, y2), got shape {d:?}"
            )))
        }
    };
    if h == 0 || w == 0 {
        return Err(Error::InvalidArgument(format!(
            "roi_align: input spatial size must be positive, got {h} x {w}"
        )));
    }
    if output_size.0 == 0 || output_size.1 == 0 {
        return Err(Error::InvalidArgument(format!(
            "roi_align: output size must be positive, got {} x {}",
            output_size.0, output_size.1
        )));
    }
    Ok((n, c, h, w, k))
}

/// Reads the RoIs (on any device) and computes their sampling parameters.
fn parse_rois(
    rois: &Tensor,
    n: usize,
    output_size: (usize, usize),
    spatial_scale: f32,
    sampling_ratio: i32,
    aligned: bool,
) -> Result<Vec<Roi>> {
    let data = rois
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let offset = if aligned { 0.5f32 } else { 0.0 };
    let (ph, pw) = (output_size.0 as f32, output_size.1 as f32);
    data.chunks_exact(5)
        .enumerate()
        .map(|(i, r)| {
            // torchvision truncates the float batch index to int.
            let b = r[0] as i64;
            if !(0..n as i64).contains(&b) || !r[0].is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "roi_align: RoI {i} has batch index {} but the input has {n} item(s)",
                    r[0]
                )));
            }
            let start_w = r[1] * spatial_scale - offset;
            let start_h = r[2] * spatial_scale - offset;
            let end_w = r[3] * spatial_scale - offset;
            let end_h = r[4] * spatial_scale - offset;
            let mut roi_w = end_w - start_w;
            let mut roi_h = end_h - start_h;
            if !aligned {
                roi_w = roi_w.max(1.0);
                roi_h = roi_h.max(1.0);
            }
            let grid = |len: f32, pooled: f32| -> i64 {
                if sampling_ratio > 0 {
                    sampling_ratio as i64
                } else {
                    // C++ `int = ceil(float)`; huge values saturate instead of being UB.
                    (len / pooled).ceil() as i64
                }
            };
            let y = Axis {
                start: start_h,
                bin: roi_h / ph,
                grid: grid(roi_h, ph),
            };
            let x = Axis {
                start: start_w,
                bin: roi_w / pw,
                grid: grid(roi_w, pw),
            };
            let count = y.grid.saturating_mul(x.grid).max(1) as f32;
            Ok(Roi {
                batch: b as usize,
                y,
                x,
                count,
            })
        })
        .collect()
}

/// torchvision's `bilinear_interpolate` rule on one axis: `None` if the sample is out of range
/// (`v < -1` or `v > size`), else `(low, high, weight_low, weight_high)`.
#[inline]
fn axis_taps(v: f32, size: usize) -> Option<(usize, usize, f32, f32)> {
    if v < -1.0 || v > size as f32 {
        return None;
    }
    let mut v = if v <= 0.0 { 0.0 } else { v };
    let mut low = v as usize;
    let high;
    if low >= size - 1 {
        low = size - 1;
        high = size - 1;
        v = low as f32;
    } else {
        high = low + 1;
    }
    let l = v - low as f32;
    Some((low, high, 1.0 - l, l))
}

/// Pools `rois` from `input` with bilinear sampling, exactly as
/// `torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)`.
///
/// `sampling_ratio <= 0` selects the adaptive grid `ceil(roi_size / output_size)`.
/// An empty RoI set gives a `0 x C x PH x PW` tensor.
///
/// Errors if `input` is not rank 4, `rois` is not `K x 5`, a batch index is outside
/// `0..N`, or a size is zero.
pub fn roi_align(
    input: &Tensor,
    rois: &Tensor,
    output_size: (usize, usize),
    spatial_scale: f32,
    sampling_ratio: i32,
    aligned: bool,
) -> Result<Tensor> {
    check_args(input, rois, output_size)?;
    if input.device().is_cpu() && input.track_op() {
        return backward::roi_align_train(
            input,
            rois,
            output_size,
            spatial_scale,
            sampling_ratio,
            aligned,
        );
    }
    if !input.device().is_cpu() {
        return roi_align_fallback(
            input,
            rois,
            output_size,
            spatial_scale,
            sampling_ratio,
            aligned,
        );
    }
    roi_align_cpu(
        input,
        rois,
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned,
        None,
    )
}
