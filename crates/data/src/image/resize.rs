//! mmcv's resize rules and OpenCV's resize kernels on 8-bit data.
//!
//! - [`scale_size`] / [`rescale_size`]: mmcv 2.1.0 `_scale_size` / `rescale_size`
//!   (`mmcv/image/geometric.py`): with a `(w, h)` scale the factor is
//!   `min(max(scale) / max(h, w), min(scale) / min(h, w))` and the new size
//!   `(int(w * f + 0.5), int(h * f + 0.5))`.
//! - [`resize_bilinear`]: `cv2.resize(.., INTER_LINEAR)` on `u8` images with any number of
//!   channels, as OpenCV 5.0.0's x86-64 wheels compute it: half-pixel centres, 11-bit
//!   fixed-point weights `round((1 - f) * 2048)` / `round(f * 2048)` in f32, an exact integer
//!   horizontal pass, and the SIMD vertical pass
//!   `((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2 >> 2`. Columns outside the image
//!   are clamped with their fraction zeroed; rows outside keep their fraction and read the
//!   border row twice, which can make the first or last rows of an upscale one level darker
//!   than a textbook clamp. (An exact 2x downscale, which OpenCV runs as INTER_AREA, gives the
//!   same numbers.) Checked byte for byte against cv2 on about 200 size pairs, 1 and 3
//!   channels (`tests/fixtures/augment/`).
//! - [`resize_nearest`]: `cv2.resize(.., INTER_NEAREST)`: source index
//!   `min(floor(x * (src / dst)), src - 1)` in f64, for label maps and masks.
//!
//! These are segkit's only OpenCV resize kernels for 8-bit data: training augmentation
//! (mmseg's `Resize` / `RandomResize`) and inference (segkit-models' test `Resize` and TTA, via
//! [`super::resize_rgb8`]) both call them.

use crate::{Error, Result};

/// mmcv `_scale_size`: `(int(w * factor + 0.5), int(h * factor + 0.5))`.
pub fn scale_size((w, h): (usize, usize), factor: f64) -> (usize, usize) {
    let s = |v: usize| (v as f64 * factor + 0.5).floor().max(0.0) as usize;
    (s(w), s(h))
}

/// mmcv `rescale_size((w, h), scale)` for a `(w, h)` scale tuple: the largest size with the
/// image's aspect ratio whose long edge is at most `max(scale)` and short edge at most
/// `min(scale)`.
pub fn rescale_size((w, h): (usize, usize), scale: [usize; 2]) -> (usize, usize) {
    let long = scale[0].max(scale[1]) as f64;
    let short = scale[0].min(scale[1]) as f64;
    let factor = f64::min(
        long / w.max(h).max(1) as f64,
        short / w.min(h).max(1) as f64,
    );
    scale_size((w, h), factor)
}

fn check(len: usize, w: usize, h: usize, c: usize, dw: usize, dh: usize) -> Result<()> {
    let n = w.checked_mul(h).and_then(|n| n.checked_mul(c));
    if w == 0 || h == 0 || c == 0 || n != Some(len) {
        return Err(Error::InvalidArgument(format!(
            "resize: buffer of {len} values is not a non-empty {w} x {h} x {c} image"
        )));
    }
    if dw == 0 || dh == 0 {
        return Err(Error::InvalidArgument(format!(
            "resize: cannot resize {w} x {h} to an empty size {dw} x {dh}"
        )));
    }
    if dw
        .checked_mul(dh)
        .and_then(|n| n.checked_mul(c))
        .is_none_or(|n| n > isize::MAX as usize / 4)
    {
        return Err(Error::InvalidArgument(format!(
            "resize: target size {dw} x {dh} is too large"
        )));
    }
    Ok(())
}

/// One axis of OpenCV's linear resize: (first tap, second tap, weight 0, weight 1) per output
/// index. `zero_clamped`: zero the fraction where the position is clamped (OpenCV's columns).
fn linear_taps(dst: usize, src: usize, zero_clamped: bool) -> Vec<(usize, usize, i32, i32)> {
    const ONE: f32 = 2048.0;
    // OpenCV: scale = 1 / inv_scale with inv_scale = dst / src (not src / dst: last bit).
    let scale = 1.0 / (dst as f64 / src as f64);
    (0..dst)
        .map(|x| {
            let f = ((x as f64 + 0.5) * scale - 0.5) as f32;
            let s = f.floor();
            let mut fx = f - s;
            let s = s as i64;
            let last = src as i64 - 1;
            let (mut s0, mut s1) = (s, s + 1);
            if zero_clamped {
                if s < 0 {
                    fx = 0.0;
                    (s0, s1) = (0, 1);
                }
                if s >= last {
                    fx = 0.0;
                    (s0, s1) = (last, last + 1);
                }
            }
            let s0 = s0.clamp(0, last) as usize;
            let s1 = s1.clamp(0, last) as usize;
            let a0 = ((1.0f32 - fx) * ONE).round_ties_even() as i32;
            let a1 = (fx * ONE).round_ties_even() as i32;
            (s0, s1, a0, a1)
        })
        .collect()
}

/// Resizes a row-major `height x width x channels` 8-bit image to `dst_w x dst_h` as OpenCV
/// 5.0's `cv2.resize(.., interpolation=cv2.INTER_LINEAR)` (see the module doc). The same
/// size returns a copy.
///
/// Errors: [`Error::InvalidArgument`] for a buffer that is not `width x height x channels`
/// or an empty size.
pub fn resize_bilinear(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    dst_w: usize,
    dst_h: usize,
) -> Result<Vec<u8>> {
    check(src.len(), width, height, channels, dst_w, dst_h)?;
    if (dst_w, dst_h) == (width, height) {
        return Ok(src.to_vec());
    }
    let c = channels;
    let xs = linear_taps(dst_w, width, true);
    let ys = linear_taps(dst_h, height, false);
    let row_len = dst_w * c;
    // Horizontal pass of one source row (exact integers, weights sum to 2048).
    let hrow = |y: usize, out: &mut [i32]| {
        let row = &src[y * width * c..(y + 1) * width * c];
        for (x, &(x0, x1, a0, a1)) in xs.iter().enumerate() {
            for k in 0..c {
                out[x * c + k] = row[x0 * c + k] as i32 * a0 + row[x1 * c + k] as i32 * a1;
            }
        }
    };
    let mut dst = vec![0u8; row_len * dst_h];
    let mut r0 = vec![0i32; row_len];
    let mut r1 = vec![0i32; row_len];
    let mut cached: (Option<usize>, Option<usize>) = (None, None);
    for (y, &(y0, y1, b0, b1)) in ys.iter().enumerate() {
        if cached.0 != Some(y0) {
            if cached.1 == Some(y0) {
                std::mem::swap(&mut r0, &mut r1);
                cached = (Some(y0), None);
            } else {
                hrow(y0, &mut r0);
                cached.0 = Some(y0);
            }
        }
        if cached.1 != Some(y1) {
            if y1 == y0 {
                r1.copy_from_slice(&r0);
            } else {
                hrow(y1, &mut r1);
            }
            cached.1 = Some(y1);
        }
        let out = &mut dst[y * row_len..(y + 1) * row_len];
        for ((o, &s0), &s1) in out.iter_mut().zip(&r0).zip(&r1) {
            let v = ((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2;
            *o = (v >> 2).clamp(0, 255) as u8;
        }
    }
    Ok(dst)
}

/// Resizes a row-major `height x width x channels` map to `dst_w x dst_h` as
/// `cv2.resize(.., interpolation=cv2.INTER_NEAREST)` (see the module doc).
///
/// Errors: [`Error::InvalidArgument`] for a buffer that is not `width x height x channels`
/// or an empty size.
pub fn resize_nearest<T: Copy>(
    src: &[T],
    width: usize,
    height: usize,
    channels: usize,
    dst_w: usize,
    dst_h: usize,
) -> Result<Vec<T>> {
    check(src.len(), width, height, channels, dst_w, dst_h)?;
    let c = channels;
    let index = |dst: usize, src: usize| -> Vec<usize> {
        let inv = 1.0 / (dst as f64 / src as f64);
        (0..dst)
            .map(|x| ((x as f64 * inv).floor() as usize).min(src - 1))
            .collect()
    };
    let xs = index(dst_w, width);
    let ys = index(dst_h, height);
    let mut out = Vec::with_capacity(dst_w * dst_h * c);
    for &sy in &ys {
        let row = &src[sy * width * c..(sy + 1) * width * c];
        for &sx in &xs {
            out.extend_from_slice(&row[sx * c..(sx + 1) * c]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmcv_sizes() {
        assert_eq!(rescale_size((2048, 1024), [2048, 1024]), (2048, 1024));
        assert_eq!(rescale_size((600, 400), [2048, 512]), (768, 512));
        assert_eq!(scale_size((97, 129), 0.75), (73, 97));
    }

    #[test]
    fn identity_and_errors() {
        let img: Vec<u8> = (0..7 * 5 * 3).map(|v| v as u8).collect();
        assert_eq!(resize_bilinear(&img, 7, 5, 3, 7, 5).unwrap(), img);
        assert_eq!(resize_nearest(&img, 7, 5, 3, 7, 5).unwrap(), img);
        assert!(resize_bilinear(&img, 7, 5, 3, 0, 5).is_err());
        assert!(resize_bilinear(&img, 7, 4, 3, 3, 5).is_err());
        assert!(resize_nearest(&img, 0, 5, 3, 3, 5).is_err());
    }

    #[test]
    fn one_axis_values_from_opencv() {
        // `cv2.resize(img, (14, 5))` and `cv2.resize(img, (7, 9))` (OpenCV 5.0) of
        // img[y, x] = (30 x, 50 y, 7).
        let img: Vec<u8> = (0..5)
            .flat_map(|y| (0..7).flat_map(move |x| [(x * 30) as u8, (y * 50) as u8, 7]))
            .collect();
        let r = resize_bilinear(&img, 7, 5, 3, 14, 5).unwrap();
        let row: Vec<u8> = (0..6).map(|x| r[x * 3]).collect();
        assert_eq!(row, [0, 8, 23, 38, 53, 68]);
        let r = resize_bilinear(&img, 7, 5, 3, 7, 9).unwrap();
        let col: Vec<u8> = (0..9).map(|y| r[y * 7 * 3 + 1]).collect();
        assert_eq!(col, [0, 17, 44, 72, 100, 128, 156, 183, 200]);
    }
}
