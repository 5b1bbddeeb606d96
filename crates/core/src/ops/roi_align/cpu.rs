//! The CPU kernels of [`roi_align`](super::roi_align): torchvision's planar loop (per RoI, the
//! four taps of every valid sample applied to each channel plane) and a channels-last kernel
//! (separable row and column taps applied to whole channel vectors, one block of channels at a
//! time), chosen by estimated work.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::{axis_taps, check_args, parse_rois, Axis, Roi};
use crate::ops::resize::{alloc_written, cpu_output, target_tasks, with_cpu_f32};
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
    if k * c == 0 {
        return cpu_output(Vec::new(), &[k, c, ph, pw], input.dtype());
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
    // Both kernels write every output element: nothing is zeroed first.
    let out = with_cpu_f32(&input, |src| {
        Ok(alloc_written(k * c * bins, |out| {
            if channels_last {
                roi_align_nhwc(src, (n, c, h, w), &parsed, output_size, out);
            } else {
                roi_align_planar(src, (c, h, w), &parsed, output_size, out);
            }
        }))
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

/// Most floats of the channels-last copy of the input that [`roi_align_nhwc`] holds at once
/// (4 MiB): a block of channels of every image, so that the kernel adds little to the memory
/// of its output (a whole copy of a 256 x 200 x 200 map would be 41 MB).
const BLOCK_FLOATS: usize = 1 << 20;

/// Channels per block of [`roi_align_nhwc`]: as many as fit [`BLOCK_FLOATS`] for `pixels`
/// (`N x H x W`), a multiple of 8 (whole AVX2 vectors) unless `c` itself is smaller.
fn channel_block(c: usize, pixels: usize) -> usize {
    let fit = BLOCK_FLOATS / pixels.max(1);
    (fit / 8 * 8).max(8).min(c)
}

/// Channels-last kernel, one block of channels at a time: the block is copied channels-last
/// (`N x HW x cb`), then each RoI's bins take the products of their merged row and column taps
/// (separable bilinear weights), applied to whole channel vectors.
fn roi_align_nhwc(
    src: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    parsed: &[Roi],
    (ph, pw): (usize, usize),
    out: &mut [f32],
) {
    let (bins, hw) = (ph * pw, h * w);
    // Per RoI, the merged taps of each axis: computed once, reused by every block.
    let axes: Vec<_> = parsed
        .par_iter()
        .map(|roi| (merged_axis(&roi.y, ph, h), merged_axis(&roi.x, pw, w)))
        .collect();
    let cb = channel_block(c, n * hw);
    let mut block = Vec::with_capacity(n * hw * cb);
    for c0 in (0..c).step_by(cb) {
        let cbk = cb.min(c - c0);
        block.clear();
        block.resize(n * hw * cbk, 0f32);
        to_channels_last(src, (c, hw), c0, cbk, &mut block);
        let t = &block[..];
        out.par_chunks_mut(c * bins)
            .zip(parsed.par_iter().zip(&axes))
            .for_each(|(dst, (roi, ((oy, ty), (ox, tx))))| {
                let mut acc = vec![0f32; bins * cbk];
                let taps = RoiTaps {
                    oy,
                    ty,
                    ox,
                    tx,
                    base: roi.batch * hw,
                    w,
                    cb: cbk,
                };
                accumulate(&mut acc, &taps, t);
                let dc = &mut dst[c0 * bins..(c0 + cbk) * bins];
                for (j, o) in dc.chunks_exact_mut(bins).enumerate() {
                    for (b, o) in o.iter_mut().enumerate() {
                        *o = acc[b * cbk + j] / roi.count;
                    }
                }
            });
    }
}

/// Channels `c0..c0 + cb` of `src` (`N x C x HW`) into `dst` (`N x HW x cb`), in parallel over
/// blocks of pixels.
fn to_channels_last(src: &[f32], (c, hw): (usize, usize), c0: usize, cb: usize, dst: &mut [f32]) {
    const PIX: usize = 64;
    dst.par_chunks_mut(hw * cb)
        .zip(src.par_chunks(c * hw))
        .for_each(|(dst, img)| {
            dst.par_chunks_mut(PIX * cb)
                .enumerate()
                .for_each(|(blk, d)| {
                    let p0 = blk * PIX;
                    let len = d.len() / cb;
                    for j in 0..cb {
                        let s = &img[(c0 + j) * hw + p0..][..len];
                        for (i, &v) in s.iter().enumerate() {
                            d[i * cb + j] = v;
                        }
                    }
                });
        });
}

/// The taps of one RoI on one channel block: the merged row taps `ty` (bin `py` owns
/// `ty[oy[py]..oy[py + 1]]`) and column taps `tx`, the RoI's first pixel `base` in the block
/// and the block's width `cb`.
struct RoiTaps<'a> {
    oy: &'a [usize],
    ty: &'a [(usize, f32)],
    ox: &'a [usize],
    tx: &'a [(usize, f32)],
    base: usize,
    w: usize,
    cb: usize,
}

/// `acc[bin] += wy * wx * t[pixel]` (whole channel vectors of `cb`) over every bin's row and
/// column taps: the hot loop of the channels-last kernel, compiled for AVX2 when the CPU has
/// it.
fn accumulate(acc: &mut [f32], r: &RoiTaps<'_>, t: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above); the function is otherwise safe.
        unsafe { accumulate_avx2(acc, r, t) };
        return;
    }
    accumulate_generic(acc, r, t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_avx2(acc: &mut [f32], r: &RoiTaps<'_>, t: &[f32]) {
    accumulate_generic(acc, r, t)
}

#[inline(always)]
fn accumulate_generic(acc: &mut [f32], r: &RoiTaps<'_>, t: &[f32]) {
    let (pw, cb) = (r.ox.len() - 1, r.cb);
    for (b, a) in acc.chunks_exact_mut(cb).enumerate() {
        let (py, px) = (b / pw, b % pw);
        for &(y, wy) in &r.ty[r.oy[py]..r.oy[py + 1]] {
            for &(x, wx) in &r.tx[r.ox[px]..r.ox[px + 1]] {
                let at = (r.base + y * r.w + x) * cb;
                let wt = wy * wx;
                for (s, &v) in a.iter_mut().zip(&t[at..at + cb]) {
                    *s += wt * v;
                }
            }
        }
    }
}
