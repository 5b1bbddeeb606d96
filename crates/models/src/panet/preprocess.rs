//! Detectron's test-time input blob (`lib/utils/blob.py::get_image_blob`): the image as BGR
//! `float32`, the pixel means subtracted, resized by one factor with `cv2.resize(im, None,
//! fx=s, fy=s, interpolation=INTER_LINEAR)`, zero-padded bottom / right to a multiple of the
//! coarsest stride; `im_info = [padded height, padded width, s]` (Detectron keeps the padded
//! size there, so proposals clip to the padded blob).
//!
//! OpenCV derives the output size from the factor (`round(w * fx)`, half to even) and maps
//! destination pixel `d` to source `(d + 0.5) / fx - 0.5` with the factor itself, not with
//! `src / dst`: [`resize_by_factor`] does that, with the float weights and edge rules of
//! [`segkit_core::ops::detection::resize_linear_f32`] (horizontal pass rounded to `f32`,
//! vertical pass in `f64`; an exact factor of one half runs OpenCV's `INTER_AREA` 2x2 mean).

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::config::PanetInput;
use crate::{Error, Result};

/// A network input and how it relates to the image.
#[derive(Debug, Clone)]
pub struct PanetBlob {
    /// `1 x 3 x Hp x Wp`, BGR minus the means, resized, zero-padded.
    pub data: Tensor,
    /// Detectron's `im_info`: padded height, padded width, scale (as `float32`).
    pub im_info: [f32; 3],
    /// The scale as Detectron computes it (`f64`; boxes are divided by it).
    pub scale: f64,
    /// The resized image's height and width before padding.
    pub resized: (usize, usize),
    /// The original image's height and width.
    pub original: (usize, usize),
}

/// OpenCV's source position of destination index `d` for factor `inv_scale`: the integer
/// part and the fraction of `(d + 0.5) / inv_scale - 0.5`.
fn position(d: usize, inv_scale: f64) -> (i64, f64) {
    let f = (d as f64 + 0.5) * (1.0 / inv_scale) - 0.5;
    let s = f.floor();
    (s as i64, f - s)
}

/// Column taps: first index, second index (or none past the right edge) and the second's
/// weight; past either edge a column clamps with weight 0 (OpenCV's `xofs` / `alpha`).
fn column_taps(dst: usize, src: usize, inv_scale: f64) -> Vec<(usize, Option<usize>, f64)> {
    (0..dst)
        .map(|d| {
            let (mut s, mut f) = position(d, inv_scale);
            if s < 0 {
                (s, f) = (0, 0.0);
            }
            if s >= src as i64 - 1 {
                return (src - 1, None, 0.0);
            }
            (s as usize, Some(s as usize + 1), f)
        })
        .collect()
}

/// `cv2.resize(src, None, fx=inv_scale, fy=inv_scale, interpolation=cv2.INTER_LINEAR)` of
/// one `float32` plane (`sh x sw`, row-major); the output is `round(sh * fy) x round(sw * fx)`.
///
/// Errors on an empty plane or output, or a buffer that is not `sh x sw`.
pub fn resize_by_factor(
    src: &[f32],
    sw: usize,
    sh: usize,
    inv_scale: f64,
) -> Result<(Vec<f32>, usize, usize)> {
    let dw = (sw as f64 * inv_scale).round_ties_even();
    let dh = (sh as f64 * inv_scale).round_ties_even();
    let bad = |m: String| Error::BadImage {
        what: "PANet input".into(),
        reason: m,
    };
    if sw == 0 || sh == 0 || src.len() != sw * sh || !(dw >= 1.0 && dh >= 1.0) {
        return Err(bad(format!(
            "cannot resize a {sw} x {sh} plane ({} values) by {inv_scale}",
            src.len()
        )));
    }
    if dw * dh > 1.0e9 {
        return Err(bad(format!(
            "resizing {sw} x {sh} by {inv_scale} gives {dw} x {dh} pixels, too many"
        )));
    }
    let (dw, dh) = (dw as usize, dh as usize);
    if (sw, sh) == (dw, dh) && inv_scale == 1.0 {
        return Ok((src.to_vec(), dw, dh));
    }
    if inv_scale == 0.5 && sw == 2 * dw && sh == 2 * dh {
        let mut out = Vec::with_capacity(dw * dh);
        for y in 0..dh {
            let (r0, r1) = (&src[2 * y * sw..], &src[(2 * y + 1) * sw..]);
            for x in 0..dw {
                out.push((r0[2 * x] + r0[2 * x + 1] + r1[2 * x] + r1[2 * x + 1]) * 0.25);
            }
        }
        return Ok((out, dw, dh));
    }
    let cols = column_taps(dw, sw, inv_scale);
    let hrow = |r: usize| -> Vec<f32> {
        let row = &src[r * sw..(r + 1) * sw];
        cols.iter()
            .map(|&(s0, s1, a1)| match s1 {
                Some(s1) => (f64::from(row[s0]) * (1.0 - a1) + f64::from(row[s1]) * a1) as f32,
                None => row[s0],
            })
            .collect()
    };
    // Rows clamp their index and keep their weight.
    let last = sh as i64 - 1;
    let mut out = Vec::with_capacity(dw * dh);
    for y in 0..dh {
        let (s, f) = position(y, inv_scale);
        let p = hrow(s.clamp(0, last) as usize);
        let q = hrow((s + 1).clamp(0, last) as usize);
        let (b0, b1) = (1.0 - f, f);
        out.extend(
            p.iter()
                .zip(&q)
                .map(|(&p, &q)| (f64::from(p) * b0 + f64::from(q) * b1) as f32),
        );
    }
    Ok((out, dw, dh))
}

/// The blob of an RGB image (see the module docs) on `device`.
///
/// Errors: [`Error::BadImage`] for an empty image or one whose resized size is unusable.
pub fn image_blob(image: &RgbImage, input: &PanetInput, device: &Device) -> Result<PanetBlob> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::BadImage {
            what: "<image>".into(),
            reason: format!("the image is empty ({w} x {h} pixels)"),
        });
    }
    let scale = input.target_scale(h, w);
    let raw = image.as_raw();
    let mut planes = Vec::with_capacity(3);
    let (mut rw, mut rh) = (0, 0);
    for (c, mean) in input.pixel_means_bgr.iter().enumerate() {
        // BGR plane `c` is RGB channel `2 - c`; numpy subtracts the float64 means from the
        // float32 image in float64 and stores float32.
        let plane: Vec<f32> = (0..w * h)
            .map(|i| (f64::from(raw[3 * i + 2 - c]) - mean) as f32)
            .collect();
        let (p, pw, ph) = resize_by_factor(&plane, w, h, scale)?;
        (rw, rh) = (pw, ph);
        planes.push(p);
    }
    let d = input.size_divisibility;
    let (hp, wp) = (rh.div_ceil(d) * d, rw.div_ceil(d) * d);
    let mut data = vec![0f32; 3 * hp * wp];
    for (c, p) in planes.iter().enumerate() {
        for y in 0..rh {
            let dst = c * hp * wp + y * wp;
            data[dst..dst + rw].copy_from_slice(&p[y * rw..(y + 1) * rw]);
        }
    }
    Ok(PanetBlob {
        data: Tensor::from_vec(data, (1, 3, hp, wp), device)?,
        im_info: [hp as f32, wp as f32, scale as f32],
        scale,
        resized: (rh, rw),
        original: (h, w),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_halving_and_sizes() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let (o, w, h) = resize_by_factor(&src, 4, 3, 1.0).unwrap();
        assert_eq!((o, w, h), (src.clone(), 4, 3));
        let (o, w, h) = resize_by_factor(&src[..8], 4, 2, 0.5).unwrap();
        assert_eq!((w, h), (2, 1));
        assert_eq!(o, [2.5, 4.5]);
        // Upscaling a constant plane keeps it constant, edges included.
        let (o, w, h) = resize_by_factor(&[3.0; 6], 3, 2, 2.5).unwrap();
        assert_eq!((w, h), (8, 5));
        assert!(o.iter().all(|&v| v == 3.0));
        assert!(resize_by_factor(&src, 4, 3, 0.01).is_err());
        assert!(resize_by_factor(&src, 5, 3, 1.0).is_err());
    }

    #[test]
    fn blob_pads_to_the_stride_and_keeps_the_scale() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30]));
        let b = image_blob(&img, &PanetInput::official(), &Device::Cpu).unwrap();
        // 2 x 3 at scale 500 would be 1000 x 1500 > 1400: capped, 1400 / 3.
        assert_eq!(b.resized, (933, 1400));
        assert_eq!(b.data.dims(), [1, 3, 960, 1408]);
        assert_eq!(b.im_info, [960.0, 1408.0, (1400.0f64 / 3.0) as f32]);
        let v: Vec<f32> = b.data.flatten_all().unwrap().to_vec1().unwrap();
        let hw = 960 * 1408;
        assert_eq!(v[0], (30.0 - 102.9801f64) as f32);
        assert_eq!(v[hw], (20.0 - 115.9465f64) as f32);
        assert_eq!(v[959 * 1408 + 1407], 0.0);
        let empty = RgbImage::new(0, 4);
        assert!(image_blob(&empty, &PanetInput::official(), &Device::Cpu).is_err());
    }
}
