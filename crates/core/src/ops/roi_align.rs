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
//! sample, then applies them to each channel plane, in parallel over RoIs and channel blocks.
//! Other devices use the separability of the bilinear weights: per RoI, a `PH x H` row-weight
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

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::resize::{alloc_output, cpu_output, dims4, target_tasks, with_cpu_f32};
use crate::{Error, Result};

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

/// The CPU kernels of [`roi_align`], with the layout chosen by the caller (`channels_last`:
/// `Some(false)` planar, `Some(true)` channels-last, `None` by estimated work). Public for
/// tests; the input is moved to the CPU if needed.
#[doc(hidden)]
pub fn roi_align_cpu(
    input: &Tensor,
    rois: &Tensor,
    output_size: (usize, usize),
    spatial_scale: f32,
    sampling_ratio: i32,
    aligned: bool,
    channels_last: Option<bool>,
) -> Result<Tensor> {
    let (n, c, h, w, k) = check_args(input, rois, output_size)?;
    let input = input.to_device(&Device::Cpu)?;
    let parsed = parse_rois(rois, n, output_size, spatial_scale, sampling_ratio, aligned)?;
    let (ph, pw) = output_size;
    let bins = ph * pw;
    let mut out = alloc_output(k * c * bins);
    if k * c == 0 {
        return cpu_output(out, &[k, c, ph, pw], input.dtype());
    }
    let channels_last = channels_last.unwrap_or_else(|| {
        // Bilinear taps read per channel, against one transposition of the maps: the
        // channels-last kernel pays off once the RoIs read about as many taps as there are
        // pixels (and its reads are contiguous and vectorised over channels).
        let taps: f64 = parsed
            .iter()
            .map(|r| (bins as f64) * 4.0 * (r.y.grid.max(0) as f64) * (r.x.grid.max(0) as f64))
            .sum();
        c >= 8 && taps >= 0.5 * (n * h * w) as f64
    });
    with_cpu_f32(&input, |src| {
        if channels_last {
            let t = to_channels_last(src, n, c, h * w);
            roi_align_nhwc(&t, (c, h, w), &parsed, output_size, &mut out);
        } else {
            roi_align_planar(src, (c, h, w), &parsed, output_size, &mut out);
        }
        Ok(())
    })?;
    cpu_output(out, &[k, c, ph, pw], input.dtype())
}

/// torchvision's loop order: per RoI, the samples' taps, then every channel plane (channel
/// blocks in parallel so that few RoIs still use every thread).
fn roi_align_planar(
    src: &[f32],
    (c, h, w): (usize, usize, usize),
    parsed: &[Roi],
    output_size: (usize, usize),
    out: &mut [f32],
) {
    let bins = output_size.0 * output_size.1;
    let blocks = target_tasks().div_ceil(parsed.len()).clamp(1, c);
    let cblock = c.div_ceil(blocks);
    out.par_chunks_mut(c * bins)
        .zip(parsed.par_iter())
        .for_each(|(dst, roi)| {
            let (offsets, taps) = roi_taps(roi, output_size, h, w);
            let image = &src[roi.batch * c * h * w..(roi.batch + 1) * c * h * w];
            dst.par_chunks_mut(cblock * bins)
                .zip(image.par_chunks(cblock * h * w))
                .for_each(|(dc, ic)| {
                    for (o, plane) in dc.chunks_mut(bins).zip(ic.chunks(h * w)) {
                        pool_plane(plane, &offsets, &taps, roi.count, o);
                    }
                });
        });
}

/// `N x C x HW` -> `N x HW x C`, in parallel over blocks of pixels.
fn to_channels_last(src: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    const PIX: usize = 64;
    let mut t = alloc_output(n * hw * c);
    t.par_chunks_mut(hw * c)
        .zip(src.par_chunks(c * hw))
        .for_each(|(dst, img)| {
            dst.par_chunks_mut(PIX * c)
                .enumerate()
                .for_each(|(blk, d)| {
                    let p0 = blk * PIX;
                    let len = d.len() / c;
                    for ch in 0..c {
                        let s = &img[ch * hw + p0..ch * hw + p0 + len];
                        for (i, &v) in s.iter().enumerate() {
                            d[i * c + ch] = v;
                        }
                    }
                });
        });
    t
}

/// The distinct rows (or columns) that the samples of each bin read on one axis, with their
/// summed bilinear weights (zero weights dropped); bin `p` owns `taps[offsets[p]..offsets[p+1]]`.
fn merged_axis(a: &Axis, pooled: usize, size: usize) -> (Vec<usize>, Vec<(usize, f32)>) {
    let mut offsets = Vec::with_capacity(pooled + 1);
    let mut taps = Vec::new();
    let mut pairs: Vec<(usize, f32)> = Vec::new();
    offsets.push(0);
    for p in 0..pooled {
        pairs.clear();
        for i in 0..a.grid.max(0) {
            if let Some((lo, hi, wl, wh)) = axis_taps(a.coord(p, i), size) {
                pairs.push((lo, wl));
                pairs.push((hi, wh));
            }
        }
        pairs.sort_by_key(|&(i, _)| i);
        let mut merged: Vec<(usize, f32)> = Vec::with_capacity(pairs.len());
        for &(i, wt) in &pairs {
            match merged.last_mut() {
                Some((j, acc)) if *j == i => *acc += wt,
                _ => merged.push((i, wt)),
            }
        }
        // Taps whose weights are zero (samples exactly on a pixel, clamped edges) read nothing.
        taps.extend(merged.into_iter().filter(|&(_, wt)| wt != 0.0));
        offsets.push(taps.len());
    }
    (offsets, taps)
}

/// Channels-last kernel: per RoI, each bin's taps are the product of its merged row and column
/// taps (separable bilinear weights), applied to whole channel vectors.
fn roi_align_nhwc(
    t: &[f32],
    (c, h, w): (usize, usize, usize),
    parsed: &[Roi],
    (ph, pw): (usize, usize),
    out: &mut [f32],
) {
    let bins = ph * pw;
    let blocks = target_tasks()
        .div_ceil(parsed.len())
        .clamp(1, c.div_ceil(8));
    let cblock = c.div_ceil(blocks);
    out.par_chunks_mut(c * bins)
        .zip(parsed.par_iter())
        .for_each(|(dst, roi)| {
            let (oy, ty) = merged_axis(&roi.y, ph, h);
            let (ox, tx) = merged_axis(&roi.x, pw, w);
            let mut offsets = Vec::with_capacity(bins + 1);
            let mut taps: Vec<(usize, f32)> = Vec::new();
            offsets.push(0);
            for py in 0..ph {
                for px in 0..pw {
                    for &(y, wy) in &ty[oy[py]..oy[py + 1]] {
                        for &(x, wx) in &tx[ox[px]..ox[px + 1]] {
                            taps.push(((roi.batch * h * w + y * w + x) * c, wy * wx));
                        }
                    }
                    offsets.push(taps.len());
                }
            }
            dst.par_chunks_mut(cblock * bins)
                .enumerate()
                .for_each(|(blk, dc)| {
                    let c0 = blk * cblock;
                    let cb = dc.len() / bins;
                    let mut acc = vec![0f32; bins * cb];
                    accumulate(&mut acc, &offsets, &taps, t, c0, cb);
                    for (j, o) in dc.chunks_exact_mut(bins).enumerate() {
                        for (b, o) in o.iter_mut().enumerate() {
                            *o = acc[b * cb + j] / roi.count;
                        }
                    }
                });
        });
}

/// One valid bilinear sample: four flat indices and weights (torchvision's `PreCalc`).
#[derive(Debug, Clone, Copy)]
struct Sample {
    pos: [u32; 4],
    w: [f32; 4],
}

/// The valid samples of every bin of one RoI; bin `b` owns `taps[offsets[b]..offsets[b + 1]]`.
fn roi_taps(roi: &Roi, (ph, pw): (usize, usize), h: usize, w: usize) -> (Vec<usize>, Vec<Sample>) {
    let mut offsets = Vec::with_capacity(ph * pw + 1);
    let gy = roi.y.grid.max(0);
    let gx = roi.x.grid.max(0);
    let per_bin = usize::try_from(gy.saturating_mul(gx)).unwrap_or(usize::MAX);
    let mut taps = Vec::with_capacity((ph * pw).saturating_mul(per_bin).min(1 << 22));
    // Per-axis taps of every (bin, sample) pair, computed once.
    let ys: Vec<Option<(usize, usize, f32, f32)>> = (0..ph)
        .flat_map(|p| (0..gy).map(move |i| (p, i)))
        .map(|(p, i)| axis_taps(roi.y.coord(p, i), h))
        .collect();
    let xs: Vec<Option<(usize, usize, f32, f32)>> = (0..pw)
        .flat_map(|p| (0..gx).map(move |i| (p, i)))
        .map(|(p, i)| axis_taps(roi.x.coord(p, i), w))
        .collect();
    offsets.push(0);
    for py in 0..ph {
        for px in 0..pw {
            for ty in ys[py * gy as usize..(py + 1) * gy as usize]
                .iter()
                .flatten()
            {
                let &(yl, yh, hy, ly) = ty;
                for tx in xs[px * gx as usize..(px + 1) * gx as usize]
                    .iter()
                    .flatten()
                {
                    let &(xl, xh, hx, lx) = tx;
                    taps.push(Sample {
                        pos: [
                            (yl * w + xl) as u32,
                            (yl * w + xh) as u32,
                            (yh * w + xl) as u32,
                            (yh * w + xh) as u32,
                        ],
                        w: [hy * hx, hy * lx, ly * hx, ly * lx],
                    });
                }
            }
            offsets.push(taps.len());
        }
    }
    (offsets, taps)
}

#[inline]
fn pool_plane(plane: &[f32], offsets: &[usize], taps: &[Sample], count: f32, out: &mut [f32]) {
    for (b, o) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for s in &taps[offsets[b]..offsets[b + 1]] {
            acc += s.w[0] * plane[s.pos[0] as usize]
                + s.w[1] * plane[s.pos[1] as usize]
                + s.w[2] * plane[s.pos[2] as usize]
                + s.w[3] * plane[s.pos[3] as usize];
        }
        *o = acc / count;
    }
}

/// Dense per-axis weight matrix of one RoI: `pooled x size`, entry `[p, i]` the summed bilinear
/// weight of input row/column `i` over the samples of bin `p`, times `scale`.
fn axis_matrix(a: &Axis, pooled: usize, size: usize, scale: f32, dst: &mut [f32]) {
    for p in 0..pooled {
        let row = &mut dst[p * size..(p + 1) * size];
        for i in 0..a.grid.max(0) {
            if let Some((lo, hi, wl, wh)) = axis_taps(a.coord(p, i), size) {
                row[lo] += wl * scale;
                row[hi] += wh * scale;
            }
        }
    }
}

/// Elements allowed in one intermediate of the fallback (`chunk x PH x C x W`).
const FALLBACK_CHUNK_ELEMS: usize = 1 << 24;

/// [`roi_align`] composed from candle tensor ops: per image, `(rows-weights @ image)` then a
/// batched matmul with the column weights, over chunks of RoIs. The path taken on non-CPU
/// devices, public for tests.
#[doc(hidden)]
pub fn roi_align_fallback(
    input: &Tensor,
    rois: &Tensor,
    output_size: (usize, usize),
    spatial_scale: f32,
    sampling_ratio: i32,
    aligned: bool,
) -> Result<Tensor> {
    let (n, c, h, w, k) = check_args(input, rois, output_size)?;
    let (ph, pw) = output_size;
    let dev = input.device();
    let dt = input.dtype();
    if k * c == 0 {
        return Ok(Tensor::zeros((k, c, ph, pw), dt, dev)?);
    }
    let parsed = parse_rois(rois, n, output_size, spatial_scale, sampling_ratio, aligned)?;
    let chunk = (FALLBACK_CHUNK_ELEMS / (ph * c * w).max(1)).max(1);
    let mut pieces = Vec::new();
    let mut order: Vec<u32> = Vec::with_capacity(k);
    for b in 0..n {
        let ids: Vec<usize> = (0..k).filter(|&i| parsed[i].batch == b).collect();
        if ids.is_empty() {
            continue;
        }
        // (H, C * W): rows of the image, all channels side by side.
        let image = input
            .get(b)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((h, c * w))?;
        for part in ids.chunks(chunk) {
            let m = part.len();
            let mut ay = vec![0f32; m * ph * h];
            let mut axt = vec![0f32; m * pw * w];
            for (j, &i) in part.iter().enumerate() {
                let r = &parsed[i];
                axis_matrix(
                    &r.y,
                    ph,
                    h,
                    1.0 / r.count,
                    &mut ay[j * ph * h..(j + 1) * ph * h],
                );
                axis_matrix(&r.x, pw, w, 1.0, &mut axt[j * pw * w..(j + 1) * pw * w]);
            }
            let ay = Tensor::from_vec(ay, (m * ph, h), dev)?.to_dtype(dt)?;
            let ax = Tensor::from_vec(axt, (m, pw, w), dev)?
                .to_dtype(dt)?
                .transpose(1, 2)?
                .contiguous()?; // (m, W, PW)
            let rows = ay.matmul(&image)?; // (m * PH, C * W)
            let rows = rows
                .reshape((m, ph, c, w))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((m, c * ph, w))?;
            pieces.push(rows.matmul(&ax)?.reshape((m, c, ph, pw))?);
            order.extend(part.iter().map(|&i| i as u32));
        }
    }
    let out = Tensor::cat(&pieces, 0)?;
    // Back to the RoIs' order: position of each RoI in `order`.
    let mut inverse = vec![0u32; k];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i as usize] = pos as u32;
    }
    Ok(out.index_select(&Tensor::from_vec(inverse, k, dev)?, 0)?)
}

/// `acc[b] += w * t[base + c0 ..][..cb]` over the taps of every bin `b` (the hot loop of the
/// channels-last kernel), compiled for AVX2 when the CPU has it.
fn accumulate(
    acc: &mut [f32],
    offsets: &[usize],
    taps: &[(usize, f32)],
    t: &[f32],
    c0: usize,
    cb: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above); the function is otherwise safe.
        unsafe { accumulate_avx2(acc, offsets, taps, t, c0, cb) };
        return;
    }
    accumulate_generic(acc, offsets, taps, t, c0, cb)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_avx2(
    acc: &mut [f32],
    offsets: &[usize],
    taps: &[(usize, f32)],
    t: &[f32],
    c0: usize,
    cb: usize,
) {
    accumulate_generic(acc, offsets, taps, t, c0, cb)
}

#[inline(always)]
fn accumulate_generic(
    acc: &mut [f32],
    offsets: &[usize],
    taps: &[(usize, f32)],
    t: &[f32],
    c0: usize,
    cb: usize,
) {
    for (b, a) in acc.chunks_exact_mut(cb).enumerate() {
        for &(base, wt) in &taps[offsets[b]..offsets[b + 1]] {
            let v = &t[base + c0..base + c0 + cb];
            for (x, &y) in a.iter_mut().zip(v) {
                *x += wt * y;
            }
        }
    }
}
