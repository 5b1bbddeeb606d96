//! Decoding of dataset files, the way mmseg's loading transforms read them
//! (`mmseg/datasets/transforms/loading.py`, mmseg 1.2.2):
//!
//! - [`read_rgb8`]: `LoadImageFromFile` (OpenCV `IMREAD_COLOR`): any PNG or JPEG as 8-bit RGB,
//!   decoded by [`crate::image`] (the decoding inference uses): grey is replicated, alpha
//!   dropped, 16-bit samples scaled to 8 bits, and the EXIF orientation of a JPEG applied as
//!   OpenCV does. JPEG decoders differ by a few levels between libjpeg (OpenCV) and the `image`
//!   crate; PNG images decode identically.
//! - [`read_label_map`]: `LoadAnnotations` (pillow, `flag='unchanged'`): the raw samples of an
//!   8-bit (or lower) grayscale PNG, or the palette *indices* of a palette PNG (VOC's
//!   `SegmentationClass`), never the palette colours.
//! - [`read_id_map`]: instance-id PNGs, 8- or 16-bit grayscale, raw values.
//! - [`read_rgb_png`]: the RGB samples of a PNG (COCO panoptic id PNGs, `R + 256 G + 256^2 B`).
//!
//! Every failure is an [`Error::BadFile`] naming the file.

use std::path::Path;

use crate::image::Rgb8;
use crate::{Error, Result};

/// [`Error::BadFile`] for `path`.
pub(crate) fn bad_file(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A single-channel map (labels or ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map<T> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major `height x width` values.
    pub data: Vec<T>,
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| bad_file(path, format!("cannot read: {e}")))
}

fn check_nonempty(path: &Path, w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(bad_file(path, format!("empty image ({w} x {h})")));
    }
    Ok(())
}

/// Decodes the PNG or JPEG at `path` to 8-bit RGB: [`crate::image::open`] (EXIF orientation
/// applied) then [`crate::image::to_rgb8`].
///
/// Errors: [`Error::BadFile`] naming the file for a missing or unreadable file, an unsupported
/// format, corrupt data or an empty image.
pub fn read_rgb8(path: &Path) -> Result<Rgb8> {
    let as_file_error = |e| match e {
        Error::BadImage { reason, .. } => bad_file(path, reason),
        other => other,
    };
    let img = crate::image::open(path).map_err(as_file_error)?;
    Ok(crate::image::to_rgb8(&img).map_err(as_file_error)?.into())
}

/// A PNG's raw samples: (info, bytes with one or two bytes per sample for 16-bit, row-major,
/// sub-byte depths unpacked to one byte per sample).
struct RawPng {
    width: usize,
    height: usize,
    color: png::ColorType,
    depth: png::BitDepth,
    /// Samples per pixel.
    channels: usize,
    /// Unpacked samples: `u16` values for 16-bit images, else `u8` values widened.
    samples: Vec<u16>,
}

fn read_raw_png(path: &Path) -> Result<RawPng> {
    let bytes = read_bytes(path)?;
    // The png crate's default 64 MiB cap would refuse large label maps; 1 GiB bounds the
    // allocation for a corrupt header all the same.
    let mut decoder =
        png::Decoder::new_with_limits(std::io::Cursor::new(bytes), png::Limits { bytes: 1 << 30 });
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad_file(path, format!("not a valid PNG: {e}")))?;
    let (w, h, color, depth) = {
        let info = reader.info();
        (info.width, info.height, info.color_type, info.bit_depth)
    };
    check_nonempty(path, w, h)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad_file(path, "PNG is too large"))?;
    let mut buf = vec![0u8; size];
    let out = reader
        .next_frame(&mut buf)
        .map_err(|e| bad_file(path, format!("corrupt PNG data: {e}")))?;
    let (width, height) = (w as usize, h as usize);
    let channels = color.samples();
    let bits = depth as usize;
    let line = out.line_size;
    let per_row = width * channels;
    let mut samples = Vec::with_capacity(per_row * height);
    for y in 0..height {
        let row = &buf[y * line..(y + 1) * line];
        match bits {
            16 => samples.extend(
                row.chunks_exact(2)
                    .take(per_row)
                    .map(|c| u16::from_be_bytes([c[0], c[1]])),
            ),
            8 => samples.extend(row.iter().take(per_row).map(|&v| v as u16)),
            _ => {
                // 1, 2 or 4 bits per sample, most significant bits first.
                let per_byte = 8 / bits;
                let mask = (1u16 << bits) - 1;
                for i in 0..per_row {
                    let byte = row[i / per_byte] as u16;
                    let shift = 8 - bits * (i % per_byte + 1);
                    samples.push((byte >> shift) & mask);
                }
            }
        }
    }
    Ok(RawPng {
        width,
        height,
        color,
        depth,
        channels,
        samples,
    })
}

fn describe(color: png::ColorType, depth: png::BitDepth) -> String {
    format!("{color:?} {}-bit", depth as u8)
}

/// Reads a label map as mmseg's `LoadAnnotations` does (`unchanged`): the samples of a
/// grayscale PNG of up to 16 bits (16-bit maps hold more than 255 classes), or the palette
/// indices of a palette PNG.
///
/// Errors: [`Error::BadFile`] naming the file for a missing, corrupt or non-PNG file, and for
/// any other colour type.
pub fn read_label_map(path: &Path) -> Result<Map<u16>> {
    let raw = read_raw_png(path)?;
    let ok = raw.color == png::ColorType::Grayscale
        || (raw.color == png::ColorType::Indexed && (raw.depth as u8) <= 8);
    if !ok {
        return Err(bad_file(
            path,
            format!(
                "a label map must be an 8- or 16-bit grayscale or a palette PNG, got {}",
                describe(raw.color, raw.depth)
            ),
        ));
    }
    Ok(Map {
        width: raw.width,
        height: raw.height,
        data: raw.samples,
    })
}

/// Reads an instance-id map: the raw values of an 8- or 16-bit grayscale PNG (also 1-4 bit).
///
/// Errors: [`Error::BadFile`] naming the file for a missing, corrupt or non-PNG file, and for
/// any colour type other than grayscale.
pub fn read_id_map(path: &Path) -> Result<Map<u16>> {
    let raw = read_raw_png(path)?;
    if raw.color != png::ColorType::Grayscale {
        return Err(bad_file(
            path,
            format!(
                "an instance-id map must be an 8- or 16-bit grayscale PNG, got {}",
                describe(raw.color, raw.depth)
            ),
        ));
    }
    Ok(Map {
        width: raw.width,
        height: raw.height,
        data: raw.samples,
    })
}

/// Reads the RGB samples of an 8-bit RGB (or RGBA, alpha dropped) PNG, as mmdet reads a COCO
/// panoptic PNG (`imfrombytes(flag='color', channel_order='rgb')`).
///
/// Errors: [`Error::BadFile`] naming the file for a missing, corrupt or non-PNG file and for
/// other colour types or depths.
pub fn read_rgb_png(path: &Path) -> Result<Rgb8> {
    let raw = read_raw_png(path)?;
    let ok = matches!(raw.color, png::ColorType::Rgb | png::ColorType::Rgba)
        && raw.depth == png::BitDepth::Eight;
    if !ok {
        return Err(bad_file(
            path,
            format!(
                "expected an 8-bit RGB PNG, got {}",
                describe(raw.color, raw.depth)
            ),
        ));
    }
    let data = raw
        .samples
        .chunks_exact(raw.channels)
        .flat_map(|p| [p[0] as u8, p[1] as u8, p[2] as u8])
        .collect();
    Ok(Rgb8 {
        width: raw.width,
        height: raw.height,
        data,
    })
}
