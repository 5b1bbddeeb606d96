//! The path of [`roi_align`](super::roi_align) on non-CPU devices, composed from candle tensor
//! ops: the bilinear weights are separable, so each RoI becomes a row-weight and a
//! column-weight matrix, applied with two matmuls.

use candle_core::Tensor;

use super::{axis_taps, check_args, parse_rois, Axis};
use crate::Result;

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

/// [`roi_align`](super::roi_align) composed from candle tensor ops: per image,
/// `(rows-weights @ image)` then a batched matmul with the column weights, over chunks of RoIs.
/// The path taken on non-CPU devices, public for tests.
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
