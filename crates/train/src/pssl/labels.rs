//! PSSL label files: one 8-bit grayscale PNG per image whose pixels are the consensus deciles
//! 0..=9 (255 = ignore) and whose `tEXt` chunk `pssl-class` holds the image's class id, so
//! the foreground threshold can be changed later without recomputing explanations; and
//! PaddleSeg's released format (`*.JPEG_eiseg.npz`, key `arr_0`: a binary mask) as an input.
//!
//! Writes are atomic: the PNG goes to `.NAME.tmp-PID` beside the target and is renamed, so a
//! killed run leaves either a complete label or none.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use crate::{TrainError, TrainResult};

/// The `tEXt` keyword holding the class id.
pub const CLASS_KEY: &str = "pssl-class";

/// Decile value of pixels to ignore (padding).
pub const IGNORE_DECILE: u8 = 255;

/// One image's PSSL label: deciles and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsslLabel {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Row-major deciles 0..=9 ([`IGNORE_DECILE`] = ignore).
    pub deciles: Vec<u8>,
    /// The image's class id.
    pub class: u32,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    segkit_core::Error::BadFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
    .into()
}

impl PsslLabel {
    /// Training targets: `class` where the decile is at least `min_decile` (PSSL: 9),
    /// `background` elsewhere, `ignore` where the decile is [`IGNORE_DECILE`].
    pub fn targets(&self, min_decile: u8, background: u32, ignore: u32) -> Vec<u32> {
        self.deciles
            .iter()
            .map(|&d| match d {
                IGNORE_DECILE => ignore,
                d if d >= min_decile => self.class,
                _ => background,
            })
            .collect()
    }

    /// The PNG bytes (grayscale 8-bit, class in `tEXt`).
    pub fn to_png(&self) -> TrainResult<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            enc.add_text_chunk(CLASS_KEY.into(), self.class.to_string())
                .map_err(|e| bad(Path::new("<png>"), e))?;
            let mut w = enc.write_header().map_err(|e| bad(Path::new("<png>"), e))?;
            w.write_image_data(&self.deciles)
                .map_err(|e| bad(Path::new("<png>"), e))?;
        }
        Ok(out)
    }

    /// Reads a label PNG written by [`PsslLabel::write`]; a missing class chunk, another
    /// colour type or a decile above 9 (other than 255) is an error naming the file.
    pub fn read(path: &Path) -> TrainResult<Self> {
        let bytes = std::fs::read(path).map_err(|e| bad(path, e))?;
        Self::from_png(&bytes, path)
    }

    /// Parses label PNG bytes (`path` names them in errors).
    pub fn from_png(bytes: &[u8], path: &Path) -> TrainResult<Self> {
        let mut reader = png::Decoder::new(Cursor::new(bytes))
            .read_info()
            .map_err(|e| bad(path, e))?;
        let info = reader.info();
        if info.color_type != png::ColorType::Grayscale || info.bit_depth != png::BitDepth::Eight {
            return Err(bad(path, "a PSSL label is an 8-bit grayscale PNG"));
        }
        let class = info
            .uncompressed_latin1_text
            .iter()
            .find(|t| t.keyword == CLASS_KEY)
            .ok_or_else(|| bad(path, format!("no `{CLASS_KEY}` text chunk")))?
            .text
            .trim()
            .parse::<u32>()
            .map_err(|e| bad(path, format!("`{CLASS_KEY}`: {e}")))?;
        let (w, h) = (info.width as usize, info.height as usize);
        let mut buf = vec![0u8; reader.output_buffer_size().unwrap_or(w * h)];
        reader.next_frame(&mut buf).map_err(|e| bad(path, e))?;
        buf.truncate(w * h);
        if let Some(d) = buf.iter().find(|d| **d > 9 && **d != IGNORE_DECILE) {
            return Err(bad(path, format!("decile {d} (0..=9 or 255 expected)")));
        }
        Ok(Self {
            width: w,
            height: h,
            deciles: buf,
            class,
        })
    }

    /// Writes the label to `path` atomically (temporary file in the same directory, renamed).
    pub fn write(&self, path: &Path) -> TrainResult<()> {
        write_atomic(path, &self.to_png()?)
    }
}

/// The temporary name `.NAME.tmp-PID` of `path` for an atomic write.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` through [`temp_path`] + rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> TrainResult<()> {
    let tmp = temp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| bad(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        bad(path, e)
    })
}

/// Reads a PaddleSeg PSSL mask (`*.JPEG_eiseg.npz`, array `arr_0`: `H x W`, non-zero =
/// foreground, dtype bool / u8 / i64 / f32...) as a label of `class`: pixels equal to 1 (as
/// PaddleSeg's `pssl_seg == 1`) get decile 9, all others 0.
pub fn read_paddleseg_mask(path: &Path, class: u32) -> TrainResult<PsslLabel> {
    let f = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(path, e))?;
    let mut entry = zip
        .by_name("arr_0.npy")
        .map_err(|_| bad(path, "no `arr_0` array"))?;
    let mut bytes = Vec::new();
    entry
        .by_ref()
        .take(1 << 30)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(path, e))?;
    let (shape, descr, data) = parse_npy(&bytes).map_err(|r| bad(path, r))?;
    if shape.len() != 2 {
        return Err(bad(
            path,
            format!("arr_0 has shape {shape:?}, H x W expected"),
        ));
    }
    let n = shape[0] * shape[1];
    let width = match descr.as_str() {
        "|b1" | "|u1" | "|i1" => 1,
        "<i2" | "<u2" => 2,
        "<i4" | "<u4" | "<f4" => 4,
        "<i8" | "<u8" | "<f8" => 8,
        d => return Err(bad(path, format!("arr_0 dtype {d} is not supported"))),
    };
    if data.len() < n * width {
        return Err(bad(path, "arr_0 is truncated"));
    }
    // PaddleSeg's `gt[pssl_seg == 1] = class_id`: exactly 1 is foreground, anything else
    // (0, and any other value) background.
    let float = descr.ends_with("f4") || descr.ends_with("f8");
    let deciles = data
        .chunks_exact(width)
        .take(n)
        .map(|c| if is_one(c, float) { 9 } else { 0 })
        .collect();
    Ok(PsslLabel {
        width: shape[1],
        height: shape[0],
        deciles,
        class,
    })
}

/// Whether a little-endian element equals 1.
fn is_one(c: &[u8], float: bool) -> bool {
    match (float, c.len()) {
        (true, 4) => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) == 1.0,
        (true, _) => {
            c.len() == 8
                && f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) == 1.0
        }
        (false, _) => c[0] == 1 && c[1..].iter().all(|b| *b == 0),
    }
}

/// `(shape, descr, data)` of a C-order `.npy` v1-3 file.
fn parse_npy(b: &[u8]) -> Result<(Vec<usize>, String, &[u8]), String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy array".into());
    }
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else if b.len() >= 12 {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    } else {
        return Err("truncated .npy header".into());
    };
    let header = b
        .get(start..start + hlen)
        .ok_or("truncated .npy header")
        .map(|h| String::from_utf8_lossy(h).into_owned())?;
    if header.contains("'fortran_order': True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let field = |key: &str| -> Option<String> {
        let at = header.find(key)? + key.len();
        Some(header[at..].trim_start_matches([':', ' ']).to_string())
    };
    let descr = field("'descr'")
        .and_then(|s| {
            s.strip_prefix('\'')
                .and_then(|s| s.split('\'').next())
                .map(String::from)
        })
        .ok_or("no descr in .npy header")?;
    let shape_s = field("'shape'").ok_or("no shape in .npy header")?;
    let inner = shape_s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("bad shape in .npy header")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((shape, descr, &b[start + hlen..]))
}
