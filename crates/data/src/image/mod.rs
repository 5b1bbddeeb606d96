//! Images as segkit's models see them, in training and in inference alike: decoding to 8-bit
//! RGB and OpenCV's resizes.
//!
//! mmseg reads an image with OpenCV (`LoadImageFromFile`: `cv2.imdecode(.., IMREAD_COLOR)`,
//! 8-bit BGR) and resizes it with `cv2.resize` on the 8-bit data, in its train pipeline and
//! in its test pipeline. segkit decodes with the `image` crate (PNG and JPEG) and stays RGB:
//!
//! - [`open`] / [`decode`]: a file or bytes in memory, the format guessed from the content and
//!   the EXIF orientation of a JPEG applied (as `IMREAD_COLOR` does); every failure is an
//!   [`Error::BadImage`] naming the file;
//! - [`to_rgb8`]: 8-bit RGB as `IMREAD_COLOR` sees it: grey replicated, alpha dropped, 16-bit
//!   samples scaled to 8 bits; [`Rgb8`] is the plain container datasets and augmentation hold;
//! - [`resize`]: mmcv's resize arithmetic and OpenCV 5.0's `INTER_LINEAR` / `INTER_NEAREST`
//!   kernels on 8-bit data, byte-equal to `cv2.resize`; [`resize_rgb8`] runs the bilinear one
//!   on an [`RgbImage`]. Augmentation and segkit-models' test pipeline both call these.
//!
//! JPEG decoders differ by a few levels between libjpeg (OpenCV) and the `image` crate; PNG
//! images decode identically.
//!
//! ```
//! use segkit_data::image::{decode, resize_rgb8, to_rgb8};
//! # fn main() -> segkit_data::Result<()> {
//! let mut png = Vec::new();
//! let img = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb([60 * x as u8, 100 * y as u8, 7]));
//! img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
//!     .map_err(|e| segkit_data::Error::InvalidArgument(e.to_string()))?;
//! let rgb = to_rgb8(&decode(&png)?)?;
//! assert_eq!(rgb, img);
//! // cv2.resize(img, (8, 2), interpolation=cv2.INTER_LINEAR)
//! let big = resize_rgb8(&rgb, 8, 2)?;
//! assert_eq!(big.get_pixel(1, 0).0, [15, 0, 7]);
//! assert!(decode(b"not an image").is_err());
//! # Ok(())
//! # }
//! ```

pub mod resize;

use std::io::{BufRead, Seek};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::{Error, Result};

/// [`Error::BadImage`] for `what`.
fn bad(what: &str, reason: impl Into<String>) -> Error {
    Error::BadImage {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// An 8-bit RGB image as a plain buffer (what [`crate::Sample::image`] holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major `height x width x 3` bytes.
    pub data: Vec<u8>,
}

impl From<RgbImage> for Rgb8 {
    fn from(img: RgbImage) -> Self {
        Rgb8 {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.into_raw(),
        }
    }
}

fn check_size(what: &str, w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(bad(what, format!("the image is empty ({w} x {h} pixels)")));
    }
    Ok(())
}

/// The most bytes a decoded image may take (a 16k x 16k RGB image is 768 MiB): a header
/// declaring more is refused before the decoder allocates it (found by segkit-fuzz).
const MAX_DECODED_BYTES: u64 = 1 << 30;

/// Decodes what `reader` holds, the format from its content, with the EXIF orientation
/// applied.
fn decode_from<R: BufRead + Seek>(what: &str, reader: ImageReader<R>) -> Result<DynamicImage> {
    let reader = reader
        .with_guessed_format()
        .map_err(|e| bad(what, format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(bad(what, "not an image in a known format (PNG or JPEG)"));
    }
    let cannot = |e: image::ImageError| bad(what, format!("cannot decode: {e}"));
    let mut decoder = reader.into_decoder().map_err(cannot)?;
    // The decoder allocates what the header declares, unchecked: refuse it first.
    let (w, h) = decoder.dimensions();
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(bad(
            what,
            format!(
                "the image declares {w} x {h} pixels ({} bytes decoded), more than the {} MiB \
                 segkit decodes",
                decoder.total_bytes(),
                MAX_DECODED_BYTES >> 20
            ),
        ));
    }
    let orientation = decoder.orientation().map_err(cannot)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(cannot)?;
    img.apply_orientation(orientation);
    check_size(what, img.width(), img.height())?;
    Ok(img)
}

/// Decodes the image file at `path` (see the module doc).
///
/// Errors: [`Error::BadImage`] naming the file, for a missing or unreadable file, an
/// unsupported format, corrupt data or an empty (0-pixel) image.
pub fn open(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let what = path.display().to_string();
    let reader = ImageReader::open(path).map_err(|e| bad(&what, format!("cannot read: {e}")))?;
    decode_from(&what, reader)
}

/// Decodes an image held in memory (see the module doc).
///
/// Errors: [`Error::BadImage`] for an unsupported format, corrupt data or an empty image.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    let what = format!("<{} bytes in memory>", bytes.len());
    decode_from(&what, ImageReader::new(std::io::Cursor::new(bytes)))
}

/// The image as 8-bit RGB, as OpenCV's `IMREAD_COLOR` sees it: grey is replicated, alpha
/// dropped; 16-bit and float channels are scaled to 8 bits.
///
/// Errors: [`Error::BadImage`] for an empty image.
pub fn to_rgb8(img: &DynamicImage) -> Result<RgbImage> {
    check_size("<image>", img.width(), img.height())?;
    Ok(match img {
        DynamicImage::ImageRgb8(i) => i.clone(),
        other => other.to_rgb8(),
    })
}

/// Resizes an 8-bit RGB image to `width x height` as `cv2.resize(.., interpolation=
/// cv2.INTER_LINEAR)` does (what mmcv's `imresize` calls): [`resize::resize_bilinear`],
/// byte-equal to OpenCV 5.0. The same size returns a copy.
///
/// Errors: [`Error::BadImage`] for an empty image, [`Error::InvalidArgument`] for an empty or
/// too large target size.
pub fn resize_rgb8(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    check_size("<image>", img.width(), img.height())?;
    let (w32, h32) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => {
            return Err(Error::InvalidArgument(format!(
                "resize: target size {width} x {height} is too large"
            )))
        }
    };
    let (sw, sh) = (img.width() as usize, img.height() as usize);
    let data = resize::resize_bilinear(img.as_raw(), sw, sh, 3, width, height)?;
    RgbImage::from_raw(w32, h32, data).ok_or_else(|| {
        Error::InvalidArgument(format!("resize: {width} x {height} does not fit a buffer"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_images_are_typed_and_name_the_file() {
        assert!(matches!(
            decode(b"not an image"),
            Err(Error::BadImage { .. })
        ));
        let e = open("/nonexistent/x.png").unwrap_err();
        assert!(
            matches!(&e, Error::BadImage { what, .. } if what.contains("x.png")),
            "{e}"
        );
        assert!(e.to_string().contains("x.png"), "{e}");
        let empty = DynamicImage::new_rgb8(0, 4);
        assert!(matches!(to_rgb8(&empty), Err(Error::BadImage { .. })));
        let img = RgbImage::new(3, 2);
        assert!(resize_rgb8(&img, 0, 2).is_err());
        assert!(matches!(
            resize_rgb8(&RgbImage::new(0, 2), 3, 2),
            Err(Error::BadImage { .. })
        ));
    }

    #[test]
    fn grey_and_alpha_convert_as_imread_color() {
        let g = DynamicImage::ImageLuma8(image::GrayImage::from_raw(2, 1, vec![9, 200]).unwrap());
        assert_eq!(to_rgb8(&g).unwrap().into_raw(), [9, 9, 9, 200, 200, 200]);
        let rgba =
            DynamicImage::ImageRgba8(image::RgbaImage::from_raw(1, 1, vec![1, 2, 3, 0]).unwrap());
        assert_eq!(to_rgb8(&rgba).unwrap().into_raw(), [1, 2, 3]);
    }

    #[test]
    fn exif_orientation_is_applied_as_imread_color() {
        // A 4x2 JPEG tagged orientation 6 (rotate 90 degrees clockwise): OpenCV's
        // `cv2.imread` gives a 2-wide, 4-high image (checked with OpenCV 5.0).
        let tiff = [
            b'M', b'M', 0, 42, 0, 0, 0, 8, // big-endian TIFF header, IFD at 8
            0, 1, // one entry
            0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // Orientation, SHORT, 1 value: 6
            0, 0, 0, 0, // no next IFD
        ];
        let mut jpeg = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new(&mut jpeg);
        image::ImageEncoder::set_exif_metadata(&mut enc, tiff.to_vec()).unwrap();
        enc.encode(&[128u8; 4 * 2 * 3], 4, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        let img = decode(&jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (2, 4));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o6.jpg");
        std::fs::write(&path, &jpeg).unwrap();
        let img = open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (2, 4));
    }

    #[test]
    fn resize_rgb8_is_the_kernel() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 50) as u8, 7]));
        assert_eq!(resize_rgb8(&img, 7, 5).unwrap(), img);
        let r = resize_rgb8(&img, 11, 9).unwrap();
        let k = resize::resize_bilinear(img.as_raw(), 7, 5, 3, 11, 9).unwrap();
        assert_eq!((r.width(), r.height()), (11, 9));
        assert_eq!(r.into_raw(), k);
    }
}
