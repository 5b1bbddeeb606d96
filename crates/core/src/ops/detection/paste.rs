//! Pasting a fixed-size mask prediction into the image, exactly as Detectron's test code
//! (`lib/core/test.py::segm_results`, PANet's too).
//!
//! For an `M x M` mask probability map and its detection box: zero-pad the map to
//! `(M + 2) x (M + 2)`; expand the box about its centre by `(M + 2) / M` (`expand_boxes`, in
//! `f32`) and cast its corners to `int32` (truncation toward zero); resize the padded map to
//! `w x h = max(x1 - x0 + 1, 1) x max(y1 - y0 + 1, 1)` with `cv2.resize` (`INTER_LINEAR` on
//! `float32`, [`resize_linear_f32`]); threshold `> thresh`; copy the part inside the image.
//!
//! Why the resize lives here: segkit-data owns OpenCV's 8-bit resize, but segkit-core cannot
//! depend on segkit-data (layering), and this is OpenCV's floating-point path, a different
//! kernel (float weights, no fixed point): one home per kernel, each named by its data type.

use crate::{Error, Result};

use super::Box4;

/// `cv2.resize(src, (dw, dh), interpolation=cv2.INTER_LINEAR)` of a single-channel `float32`
/// image (`sh x sw`, row-major), as OpenCV's geometry defines it: `scale = 1 / (dst / src)`,
/// source position `(d + 0.5) scale - 0.5` and weights `1 - f`, `f` in `f64`; columns past
/// either edge clamp with weight 0, rows clamp their index and keep their weight; a horizontal
/// pass `s0 a0 + s1 a1` (in `f64`, stored as `f32`), then a vertical pass `r0 b0 + r1 b1` (in
/// `f64`). Equal sizes copy; an exact 2x downscale in both directions runs as OpenCV's
/// `INTER_AREA` (mean of 2x2 blocks).
///
/// Within one `f32` ulp of opencv-python 5.0 (whose exact floating-point operation order was
/// not reproduced: on `tests/fixtures/panet/detection_ops.safetensors` about a fifth of the
/// values differ by one ulp, none by more), so a threshold can flip only for a value within one
/// ulp of it.
///
/// Errors on an empty size or a buffer that is not `sh x sw`.
pub fn resize_linear_f32(
    src: &[f32],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
) -> Result<Vec<f32>> {
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 || src.len() != sw * sh {
        return Err(Error::InvalidArgument(format!(
            "resize_linear_f32: {} values for a {sw} x {sh} image resized to {dw} x {dh}",
            src.len()
        )));
    }
    if dw
        .checked_mul(dh)
        .is_none_or(|n| n > isize::MAX as usize / 8)
    {
        return Err(Error::InvalidArgument(format!(
            "resize_linear_f32: {dw} x {dh} is too large"
        )));
    }
    if (sw, sh) == (dw, dh) {
        return Ok(src.to_vec());
    }
    if sw == 2 * dw && sh == 2 * dh {
        let mut out = Vec::with_capacity(dw * dh);
        for y in 0..dh {
            let (r0, r1) = (&src[2 * y * sw..], &src[(2 * y + 1) * sw..]);
            for x in 0..dw {
                let s = r0[2 * x] + r0[2 * x + 1] + r1[2 * x] + r1[2 * x + 1];
                out.push(s * 0.25);
            }
        }
        return Ok(out);
    }
    let pos = |d: usize, dst: usize, src: usize| -> (i64, f64) {
        let scale = 1.0 / (dst as f64 / src as f64);
        let f = (d as f64 + 0.5) * scale - 0.5;
        let s = f.floor();
        (s as i64, f - s)
    };
    // Columns: (first tap, second tap or None past the right edge, weights).
    let cols: Vec<(usize, Option<usize>, f64, f64)> = (0..dw)
        .map(|x| {
            let (mut s, mut f) = pos(x, dw, sw);
            if s < 0 {
                (s, f) = (0, 0.0);
            }
            if s >= sw as i64 - 1 {
                return (sw - 1, None, 1.0, 0.0);
            }
            (s as usize, Some(s as usize + 1), 1.0 - f, f)
        })
        .collect();
    let hrow = |r: usize| -> Vec<f32> {
        let row = &src[r * sw..(r + 1) * sw];
        cols.iter()
            .map(|&(s0, s1, a0, a1)| match s1 {
                Some(s1) => (f64::from(row[s0]) * a0 + f64::from(row[s1]) * a1) as f32,
                None => row[s0],
            })
            .collect()
    };
    let mut out = Vec::with_capacity(dw * dh);
    let last = sh as i64 - 1;
    for y in 0..dh {
        let (s, f) = pos(y, dh, sh);
        let r0 = hrow(s.clamp(0, last) as usize);
        let r1 = hrow((s + 1).clamp(0, last) as usize);
        let (b0, b1) = (1.0 - f, f);
        out.extend(
            r0.iter()
                .zip(&r1)
                .map(|(&p, &q)| (f64::from(p) * b0 + f64::from(q) * b1) as f32),
        );
    }
    Ok(out)
}

/// Pastes one `m x m` mask probability map (row-major) for `bbox` into an `im_h x im_w` binary
/// mask (row-major `u8`, 1 inside), as Detectron's `segm_results` (see the module docs);
/// `thresh` is `MRCNN.THRESH_BINARIZE` (0.5). Degenerate and out-of-image boxes give the
/// (possibly empty) part that falls inside the image.
///
/// Errors if `mask` is not `m x m` or `m` is zero.
pub fn paste_mask_detectron(
    mask: &[f32],
    m: usize,
    bbox: &Box4,
    im_h: usize,
    im_w: usize,
    thresh: f32,
) -> Result<Vec<u8>> {
    if m == 0 || mask.len() != m * m {
        return Err(Error::InvalidArgument(format!(
            "paste_mask_detectron: {} values are not an {m} x {m} mask",
            mask.len()
        )));
    }
    let p = m + 2;
    let mut padded = vec![0f32; p * p];
    for (y, row) in mask.chunks_exact(m).enumerate() {
        padded[(y + 1) * p + 1..(y + 1) * p + 1 + m].copy_from_slice(row);
    }
    let scale = ((m as f64 + 2.0) / m as f64) as f32;
    let (w_half, h_half) = (
        (bbox[2] - bbox[0]) * 0.5 * scale,
        (bbox[3] - bbox[1]) * 0.5 * scale,
    );
    let (xc, yc) = ((bbox[2] + bbox[0]) * 0.5, (bbox[3] + bbox[1]) * 0.5);
    // f32 results stored in a float64 array, then `astype(np.int32)`: truncation toward zero.
    let r = [xc - w_half, yc - h_half, xc + w_half, yc + h_half].map(|v| v as i32 as i64);
    let w = (r[2] - r[0] + 1).max(1) as usize;
    let h = (r[3] - r[1] + 1).max(1) as usize;
    let mut out = vec![0u8; im_h * im_w];
    let x0 = r[0].max(0);
    let x1 = (r[2] + 1).min(im_w as i64);
    let y0 = r[1].max(0);
    let y1 = (r[3] + 1).min(im_h as i64);
    if x0 >= x1 || y0 >= y1 {
        return Ok(out);
    }
    let resized = resize_linear_f32(&padded, p, p, w, h)?;
    for y in y0..y1 {
        let src = &resized[(y - r[1]) as usize * w..];
        let dst = &mut out[y as usize * im_w..];
        for x in x0..x1 {
            dst[x as usize] = u8::from(src[(x - r[0]) as usize] > thresh);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_mask_covers_the_box_and_bad_input_errors() {
        let mask = vec![1.0f32; 28 * 28];
        let out = paste_mask_detectron(&mask, 28, &[10.0, 20.0, 40.0, 30.0], 50, 60, 0.5).unwrap();
        assert_eq!(out[25 * 60 + 25], 1);
        assert_eq!(out[5 * 60 + 5], 0);
        let out =
            paste_mask_detectron(&mask, 28, &[-90.0, -90.0, -80.0, -80.0], 50, 60, 0.5).unwrap();
        assert!(out.iter().all(|&v| v == 0));
        assert!(paste_mask_detectron(&mask, 27, &[0.0; 4], 5, 5, 0.5).is_err());
        assert_eq!(
            paste_mask_detectron(&mask, 28, &[0.0; 4], 1, 1, 0.5)
                .unwrap()
                .len(),
            1
        );
        assert!(resize_linear_f32(&[1.0], 1, 1, 0, 3).is_err());
        assert_eq!(resize_linear_f32(&[1.0, 3.0], 2, 1, 1, 1).unwrap(), [2.0]);
    }
}
