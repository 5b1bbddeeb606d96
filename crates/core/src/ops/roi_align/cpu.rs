//! The CPU kernels of [`roi_align`](super::roi_align): torchvision's planar loop (per RoI, the
//! four taps of every valid sample applied to each channel plane) and a channels-last kernel
//! (separable row and column taps applied to whole channel vectors), chosen by estimated work.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::{axis_taps, check_args, parse_rois, Axis, Roi};
use crate::ops::resize::{alloc_output, cpu_output, target_tasks, with_cpu_f32};
use crate::Result;

/// The CPU kernels of [`roi_align`](super::roi_align), with the layout chosen by the caller
/// (`channels_last`: `Some(false)` planar, `Some(true)` channels-last, `None` by estimated
/// work). Public for tests; the input is moved to the CPU if needed.
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
pub(super) fn roi_align_planar(
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
pub(super) fn merged_axis(a: &Axis, pooled: usize, size: usize) -> (Vec<usize>, Vec<(usize, f32)>) {
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
