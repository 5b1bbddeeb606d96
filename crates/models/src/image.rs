//! Images: decoding, mmcv's resize rules, OpenCV's bilinear resize on 8-bit images, and the
//! `DynamicImage` -> network-input tensor path of mmseg's data preprocessor.
//!
//! mmseg reads images with OpenCV (BGR, 8 bit), resizes them with `cv2.resize(..,
//! INTER_LINEAR)` on the 8-bit data, converts to RGB and normalises in f32. segkit decodes with
//! the `image` crate (PNG and JPEG) to RGB and does the same steps:
//! - [`rescale_size`] / [`scale_size`]: mmcv's `rescale_size` / `_scale_size` (rounding
//!   `int(x * s + 0.5)`);
//! - [`resize_rgb8`]: OpenCV's fixed-point `INTER_LINEAR` (11-bit coefficients,
//!   `(b0 * (r0 >> 4) >> 16) + (b1 * (r1 >> 4) >> 16) + 2 >> 2` vertical pass). It equals
//!   OpenCV exactly when only one direction is resized; when both are, OpenCV 5's wheels
//!   differ by 1 in about 0.05% of the values (at exact ties);
//! - [`to_tensor`]: `(x - mean) / std` in f32, RGB (or BGR) planes, `1 x 3 x H x W`.
//!
//! JPEG decoders differ by a few levels between libjpeg (OpenCV) and the `image` crate; PNG
//! images decode identically.
//!
//! ```
//! use segkit_models::image::{rescale_size, scale_size};
//! // Cityscapes' test resize of a 2048x1024 frame is the identity; ADE20K's of a 600x400 photo:
//! assert_eq!(rescale_size((2048, 1024), [2048, 1024]), (2048, 1024));
//! assert_eq!(rescale_size((600, 400), [2048, 512]), (768, 512));
//! assert_eq!(scale_size((97, 129), 0.75), (73, 97));
//! ```

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};

use crate::encoder_decoder::config::{DataPreprocessorConfig, TestResize};
use crate::{Error, Result};

fn bad(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::BadImage {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Decodes the image file at `path` (format from its content; PNG and JPEG are built in).
///
/// Errors: [`Error::BadImage`] naming the file, for a missing or unreadable file, an
/// unsupported format, corrupt data or an empty (0-pixel) image.
pub fn open(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let what = path.display().to_string();
    let reader = image::ImageReader::open(path)
        .map_err(|e| bad(&what, e.to_string()))?
        .with_guessed_format()
        .map_err(|e| bad(&what, e.to_string()))?;
    let img = reader.decode().map_err(|e| bad(&what, e.to_string()))?;
    check_size(&what, img.width(), img.height())?;
    Ok(img)
}

/// Decodes an image held in memory (format from its content).
///
/// Errors: [`Error::BadImage`] for an unsupported format, corrupt data or an empty image.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    let what = format!("<{} bytes in memory>", bytes.len());
    let img = image::load_from_memory(bytes).map_err(|e| bad(&what, e.to_string()))?;
    check_size(&what, img.width(), img.height())?;
    Ok(img)
}

fn check_size(what: &str, w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(bad(what, format!("the image is empty ({w} x {h} pixels)")));
    }
    Ok(())
}

/// The image as 8-bit RGB, as OpenCV's `IMREAD_COLOR` sees it: grey is replicated, alpha
/// dropped; 16-bit channels are scaled to 8 bits.
///
/// Errors: [`Error::BadImage`] for an empty image.
pub fn to_rgb8(img: &DynamicImage) -> Result<RgbImage> {
    check_size("<image>", img.width(), img.height())?;
    Ok(match img {
        DynamicImage::ImageRgb8(i) => i.clone(),
        other => other.to_rgb8(),
    })
}

/// mmcv `_scale_size`: `(int(w * factor + 0.5), int(h * factor + 0.5))`.
pub fn scale_size((w, h): (usize, usize), factor: f64) -> (usize, usize) {
    let s = |v: usize| (v as f64 * factor + 0.5).floor().max(0.0) as usize;
    (s(w), s(h))
}

/// mmcv `rescale_size((w, h), scale)` for a `(w, h)` scale: the largest size with the same
/// aspect ratio whose long edge is at most `max(scale)` and short edge at most `min(scale)`.
pub fn rescale_size((w, h): (usize, usize), scale: [usize; 2]) -> (usize, usize) {
    let long = scale[0].max(scale[1]) as f64;
    let short = scale[0].min(scale[1]) as f64;
    let factor = f64::min(
        long / w.max(h).max(1) as f64,
        short / w.min(h).max(1) as f64,
    );
    scale_size((w, h), factor)
}

/// The size `(w, h)` mmseg's test `Resize` gives an image of `(w, h)`.
pub fn test_resize_size(size: (usize, usize), r: &TestResize) -> (usize, usize) {
    if r.keep_ratio {
        rescale_size(size, r.scale)
    } else {
        (r.scale[0], r.scale[1])
    }
}

/// The size `(w, h)` of mmseg's TTA `Resize(scale_factor=ratio, keep_ratio=True)` for an
/// image of `(w, h)`: the scaled size, then `rescale_size` towards it.
pub fn ratio_resize_size(size: (usize, usize), ratio: f64) -> (usize, usize) {
    let (sw, sh) = scale_size(size, ratio);
    rescale_size(size, [sw, sh])
}

/// One axis of OpenCV's linear resize: for each output index, the source index and the two
/// 11-bit fixed-point weights.
fn linear_coeffs(dst: usize, src: usize) -> Vec<(usize, i32, i32)> {
    const ONE: f32 = 2048.0;
    let scale = 1.0 / (dst as f64 / src as f64);
    (0..dst)
        .map(|x| {
            let f = ((x as f64 + 0.5) * scale - 0.5) as f32;
            let mut sx = f.floor() as i64;
            let mut fx = f - sx as f32;
            if sx < 0 {
                fx = 0.0;
                sx = 0;
            }
            if sx >= src as i64 - 1 {
                fx = 0.0;
                sx = src as i64 - 1;
            }
            let a0 = ((1.0f32 - fx) * ONE).round_ties_even() as i32;
            let a1 = (fx * ONE).round_ties_even() as i32;
            (sx as usize, a0, a1)
        })
        .collect()
}

/// Resizes an 8-bit RGB image to `width x height` as OpenCV's `cv2.resize(..,
/// interpolation=cv2.INTER_LINEAR)` does on 8-bit data (what mmcv's `imresize` calls):
/// half-pixel centres, edge clamping, 11-bit fixed-point weights, no antialiasing. The same
/// size returns a copy.
///
/// Errors: [`Error::BadImage`] for an empty input or a zero target size.
pub fn resize_rgb8(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    check_size("<image>", img.width(), img.height())?;
    if width == 0 || height == 0 {
        return Err(bad(
            "<image>",
            format!("cannot resize {sw} x {sh} to an empty size {width} x {height}"),
        ));
    }
    if (width, height) == (sw, sh) {
        return Ok(img.clone());
    }
    let (w32, h32) = (
        u32::try_from(width).map_err(|_| bad("<image>", format!("width {width} is too large")))?,
        u32::try_from(height)
            .map_err(|_| bad("<image>", format!("height {height} is too large")))?,
    );
    let xs = linear_coeffs(width, sw);
    let ys = linear_coeffs(height, sh);
    let src = img.as_raw();
    // Horizontal pass of one source row, cached for the two rows each output row needs.
    let hrow = |y: usize, out: &mut Vec<i32>| {
        out.clear();
        let row = &src[y * sw * 3..(y + 1) * sw * 3];
        for &(sx, a0, a1) in &xs {
            let x1 = (sx + 1).min(sw - 1);
            for c in 0..3 {
                out.push(row[sx * 3 + c] as i32 * a0 + row[x1 * 3 + c] as i32 * a1);
            }
        }
    };
    let mut dst = vec![0u8; width * height * 3];
    let (mut r0, mut r1) = (Vec::with_capacity(width * 3), Vec::with_capacity(width * 3));
    let mut cached: (Option<usize>, Option<usize>) = (None, None);
    for (y, &(sy, b0, b1)) in ys.iter().enumerate() {
        let y1 = (sy + 1).min(sh - 1);
        if cached.0 != Some(sy) {
            if cached.1 == Some(sy) {
                std::mem::swap(&mut r0, &mut r1);
                cached.0 = Some(sy);
                cached.1 = None;
            } else {
                hrow(sy, &mut r0);
                cached.0 = Some(sy);
            }
        }
        if cached.1 != Some(y1) {
            hrow(y1, &mut r1);
            cached.1 = Some(y1);
        }
        let out = &mut dst[y * width * 3..(y + 1) * width * 3];
        for (i, o) in out.iter_mut().enumerate() {
            let v = ((b0 * (r0[i] >> 4)) >> 16) + ((b1 * (r1[i] >> 4)) >> 16) + 2;
            *o = (v >> 2).clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(w32, h32, dst).ok_or_else(|| {
        bad(
            "<image>",
            "internal error: resized buffer has the wrong size",
        )
    })
}

/// The image after mmseg's test `Resize` (or unchanged without one).
pub fn apply_test_resize(img: &RgbImage, resize: Option<&TestResize>) -> Result<RgbImage> {
    match resize {
        None => Ok(img.clone()),
        Some(r) => {
            let (w, h) = test_resize_size((img.width() as usize, img.height() as usize), r);
            resize_rgb8(img, w, h)
        }
    }
}

/// mmseg's data preprocessor on one 8-bit RGB image: channel order (RGB, or BGR when
/// `pre.rgb` is false), then `(x - mean) / std` in f32. Returns `1 x 3 x H x W` on `device`
/// (no padding; see [`crate::encoder_decoder::config::TestPad`]).
pub fn to_tensor(img: &RgbImage, pre: &DataPreprocessorConfig, device: &Device) -> Result<Tensor> {
    check_size("<image>", img.width(), img.height())?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let hw = w * h;
    let mut data = vec![0f32; 3 * hw];
    let src = img.as_raw();
    for c in 0..3 {
        // Network channel c reads image channel c (RGB) or 2 - c (BGR).
        let ic = if pre.rgb { c } else { 2 - c };
        let (m, s) = (pre.mean[c] as f32, pre.std[c] as f32);
        let plane = &mut data[c * hw..(c + 1) * hw];
        for (i, p) in plane.iter_mut().enumerate() {
            *p = (src[i * 3 + ic] as f32 - m) / s;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h, w), device)?)
}

/// [`to_tensor`] of any decoded image (converted with [`to_rgb8`] first), without resizing.
pub fn dynamic_to_tensor(
    img: &DynamicImage,
    pre: &DataPreprocessorConfig,
    device: &Device,
) -> Result<Tensor> {
    to_tensor(&to_rgb8(img)?, pre, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_one_axis_resizes_are_exact() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 50) as u8, 7]));
        assert_eq!(resize_rgb8(&img, 7, 5).unwrap(), img);
        // Values from `cv2.resize(img, (14, 5))` and `cv2.resize(img, (7, 9))` (OpenCV 5.0).
        let r = resize_rgb8(&img, 14, 5).unwrap();
        let row: Vec<u8> = (0..6).map(|x| r.get_pixel(x, 0).0[0]).collect();
        assert_eq!(row, [0, 8, 23, 38, 53, 68]);
        assert_eq!(r.get_pixel(13, 4).0, [180, 200, 7]);
        let r = resize_rgb8(&img, 7, 9).unwrap();
        let col: Vec<u8> = (0..9).map(|y| r.get_pixel(0, y).0[1]).collect();
        assert_eq!(col, [0, 17, 44, 72, 100, 128, 156, 183, 200]);
        assert!(resize_rgb8(&img, 0, 3).is_err());
    }

    #[test]
    fn normalisation_and_channel_order() {
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 10]));
        let pre = DataPreprocessorConfig::default();
        let t = to_tensor(&img, &pre, &Device::Cpu).unwrap();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - (255.0 - 123.675) / 58.395).abs() < 1e-6);
        assert!((v[4] - (10.0 - 103.53) / 57.375).abs() < 1e-6);
        let bgr = DataPreprocessorConfig { rgb: false, ..pre };
        let t = to_tensor(&img, &bgr, &Device::Cpu).unwrap();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - (10.0 - 123.675) / 58.395).abs() < 1e-6);
    }

    #[test]
    fn bad_images_are_typed() {
        assert!(matches!(
            decode(b"not an image"),
            Err(Error::BadImage { .. })
        ));
        let e = open("/nonexistent/x.png").unwrap_err();
        assert!(
            matches!(&e, Error::BadImage { what, .. } if what.contains("x.png")),
            "{e}"
        );
        let empty = DynamicImage::new_rgb8(0, 4);
        assert!(matches!(to_rgb8(&empty), Err(Error::BadImage { .. })));
    }
}
