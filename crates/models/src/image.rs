//! Images for the models: segkit-data's decoding and OpenCV resize under segkit-models' error
//! type, mmseg's test-pipeline size rules, and the `RgbImage` -> network-input tensor path of
//! mmseg's data preprocessor.
//!
//! mmseg reads images with OpenCV (BGR, 8 bit), resizes them with `cv2.resize(..,
//! INTER_LINEAR)` on the 8-bit data, converts to RGB and normalises in f32. segkit does the
//! same steps, with the decoding and the resize that training uses too
//! ([`segkit_data::image`]):
//! - [`open`] / [`decode`] / [`to_rgb8`]: PNG and JPEG to 8-bit RGB (EXIF orientation applied,
//!   as OpenCV's `IMREAD_COLOR`);
//! - [`rescale_size`] / [`scale_size`]: mmcv's `rescale_size` / `_scale_size` (rounding
//!   `int(x * s + 0.5)`); [`test_resize_size`] / [`ratio_resize_size`]: the sizes of mmseg's
//!   test `Resize` and of its TTA ratios;
//! - [`resize_rgb8`]: OpenCV 5.0's fixed-point `INTER_LINEAR`, byte-equal to `cv2.resize`
//!   ([`segkit_data::image::resize::resize_bilinear`]);
//! - [`to_tensor`]: `(x - mean) / std` in f32, RGB (or BGR) planes, `1 x 3 x H x W`.
//!
//! Errors of segkit-data come back as [`Error::BadImage`].
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
pub use segkit_data::image::resize::{rescale_size, scale_size};

use crate::encoder_decoder::config::{DataPreprocessorConfig, TestResize};
use crate::{Error, Result};

/// segkit-data's error as segkit-models' [`Error::BadImage`] (an image function's only kind
/// of failure).
fn image_err(e: segkit_data::Error) -> Error {
    let (what, reason) = match e {
        segkit_data::Error::BadImage { what, reason } => (what, reason),
        segkit_data::Error::BadFile { path, reason } => (path.display().to_string(), reason),
        other => ("<image>".to_string(), other.to_string()),
    };
    Error::BadImage { what, reason }
}

/// Decodes the image file at `path` ([`segkit_data::image::open`]: format from its content,
/// PNG and JPEG built in, EXIF orientation applied).
///
/// Errors: [`Error::BadImage`] naming the file, for a missing or unreadable file, an
/// unsupported format, corrupt data or an empty (0-pixel) image.
pub fn open(path: impl AsRef<Path>) -> Result<DynamicImage> {
    segkit_data::image::open(path).map_err(image_err)
}

/// Decodes an image held in memory ([`segkit_data::image::decode`]).
///
/// Errors: [`Error::BadImage`] for an unsupported format, corrupt data or an empty image.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    segkit_data::image::decode(bytes).map_err(image_err)
}

/// The image as 8-bit RGB, as OpenCV's `IMREAD_COLOR` sees it
/// ([`segkit_data::image::to_rgb8`]).
///
/// Errors: [`Error::BadImage`] for an empty image.
pub fn to_rgb8(img: &DynamicImage) -> Result<RgbImage> {
    segkit_data::image::to_rgb8(img).map_err(image_err)
}

/// Resizes an 8-bit RGB image to `width x height` as `cv2.resize(.., INTER_LINEAR)` (what
/// mmcv's `imresize` calls), byte-equal to OpenCV 5.0 ([`segkit_data::image::resize_rgb8`]).
/// The same size returns a copy.
///
/// Errors: [`Error::BadImage`] for an empty input or an empty or too large target size.
pub fn resize_rgb8(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    segkit_data::image::resize_rgb8(img, width, height).map_err(image_err)
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
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::BadImage {
            what: "<image>".into(),
            reason: format!("the image is empty ({w} x {h} pixels)"),
        });
    }
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
    fn test_resize_runs_segkit_datas_opencv_kernel() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 50) as u8, 7]));
        assert_eq!(resize_rgb8(&img, 7, 5).unwrap(), img);
        // ADE20K's test resize (2048, 512), keep_ratio: 7x5 -> 717x512, both axes upscaled.
        let r = TestResize {
            scale: [2048, 512],
            keep_ratio: true,
        };
        assert_eq!(test_resize_size((7, 5), &r), (717, 512));
        let got = apply_test_resize(&img, Some(&r)).unwrap();
        let want =
            segkit_data::image::resize::resize_bilinear(img.as_raw(), 7, 5, 3, 717, 512).unwrap();
        assert_eq!(got.into_raw(), want);
        assert_eq!(apply_test_resize(&img, None).unwrap(), img);
        assert_eq!(ratio_resize_size((512, 512), 0.25), (128, 128));
        assert!(matches!(
            resize_rgb8(&img, 0, 3),
            Err(Error::BadImage { .. })
        ));
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

    /// segkit-data's image errors (tested there) arrive as the models' `Error::BadImage`,
    /// still naming the file.
    #[test]
    fn image_errors_map_to_bad_image() {
        let e = open("/nonexistent/x.png").unwrap_err();
        assert!(
            matches!(&e, Error::BadImage { what, .. } if what.contains("x.png")),
            "{e}"
        );
        assert!(matches!(
            decode(b"not an image"),
            Err(Error::BadImage { .. })
        ));
        let empty = DynamicImage::new_rgb8(0, 4);
        assert!(matches!(to_rgb8(&empty), Err(Error::BadImage { .. })));
    }
}
