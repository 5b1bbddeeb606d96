//! [`Augmented`]: a sample in flight through a pipeline, and the deterministic operations the
//! transforms apply to it (image, semantic map and instance masks together).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::color::{photometric, PhotoMetricParams};
use crate::image::resize::{resize_bilinear, resize_nearest};
use crate::{Error, InstanceAnnotation, Result, Sample};

/// A crop window in mmseg's `crop_bbox` order, clamped to the image: rows `y1..y2`, columns
/// `x1..x2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    /// First row.
    pub y1: usize,
    /// One past the last row.
    pub y2: usize,
    /// First column.
    pub x1: usize,
    /// One past the last column.
    pub x2: usize,
}

impl CropBox {
    /// Width of the window.
    pub fn width(&self) -> usize {
        self.x2 - self.x1
    }

    /// Height of the window.
    pub fn height(&self) -> usize {
        self.y2 - self.y1
    }
}

/// mmcv `imflip` directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlipDirection {
    /// Left-right (`np.flip(img, axis=1)`).
    #[default]
    Horizontal,
    /// Top-bottom (`axis=0`).
    Vertical,
    /// Both (`axis=(0, 1)`).
    Diagonal,
}

/// Padding values (mmcv `Pad`'s `pad_val=dict(img=.., seg=..)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PadVal {
    /// Image padding value: an integer 0..=255 on an 8-bit image, any value on a normalised
    /// one (mmseg's data preprocessor pads the normalised image with 0).
    #[serde(default)]
    pub img: f64,
    /// Semantic-map padding value (mmseg: 255, ignored by the loss).
    #[serde(default = "default_seg_pad")]
    pub seg: u16,
}

fn default_seg_pad() -> u16 {
    255
}

impl Default for PadVal {
    fn default() -> Self {
        PadVal { img: 0.0, seg: 255 }
    }
}

/// What one transform did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// Resized to this size.
    Resize {
        /// New width.
        width: usize,
        /// New height.
        height: usize,
    },
    /// Cropped to this window of the previous image.
    Crop(CropBox),
    /// Flipped (or not: `None`).
    Flip(Option<FlipDirection>),
    /// Photometric distortion with these draws.
    PhotoMetric(PhotoMetricParams),
    /// Padded (bottom / right) to this size.
    Pad {
        /// New width.
        width: usize,
        /// New height.
        height: usize,
    },
    /// Normalised.
    Normalize,
}

/// The image of an [`Augmented`] sample: row-major `height x width x 3` either way.
#[derive(Debug, Clone, PartialEq)]
pub enum AugImage {
    /// 8-bit RGB, before normalisation.
    Rgb8(Vec<u8>),
    /// `(x - mean) / std` in f32, channels in the order `Normalize` chose (RGB unless
    /// `to_rgb = false`).
    Normalized(Vec<f32>),
}

/// A sample in flight through a [`super::Pipeline`]: the image (8-bit or normalised), its
/// semantic map and instances at the same size, and what was applied to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmented {
    /// Where the image came from.
    pub path: PathBuf,
    /// Current width.
    pub width: usize,
    /// Current height.
    pub height: usize,
    /// Current image.
    pub image: AugImage,
    /// Row-major `height x width` class indices, padding = the pad's `seg` value.
    pub semantic: Option<Vec<u16>>,
    /// Instances with `height x width` masks.
    pub instances: Option<Vec<InstanceAnnotation>>,
    /// The transforms applied so far, with their draws.
    pub applied: Vec<Applied>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

fn crop_buf<T: Copy>(buf: &[T], w: usize, c: usize, b: &CropBox) -> Vec<T> {
    let mut out = Vec::with_capacity(b.width() * b.height() * c);
    for y in b.y1..b.y2 {
        out.extend_from_slice(&buf[(y * w + b.x1) * c..(y * w + b.x2) * c]);
    }
    out
}

fn flip_buf<T: Copy>(buf: &[T], w: usize, h: usize, c: usize, d: FlipDirection) -> Vec<T> {
    let (fx, fy) = match d {
        FlipDirection::Horizontal => (true, false),
        FlipDirection::Vertical => (false, true),
        FlipDirection::Diagonal => (true, true),
    };
    let mut out = Vec::with_capacity(buf.len());
    for y in 0..h {
        let sy = if fy { h - 1 - y } else { y };
        let row = &buf[sy * w * c..(sy + 1) * w * c];
        if fx {
            for x in (0..w).rev() {
                out.extend_from_slice(&row[x * c..(x + 1) * c]);
            }
        } else {
            out.extend_from_slice(row);
        }
    }
    out
}

fn pad_buf<T: Copy>(buf: &[T], w: usize, h: usize, c: usize, nw: usize, nh: usize, v: T) -> Vec<T> {
    let mut out = vec![v; nw * nh * c];
    for y in 0..h {
        out[y * nw * c..(y * nw + w) * c].copy_from_slice(&buf[y * w * c..(y + 1) * w * c]);
    }
    out
}

impl Augmented {
    /// Starts from a loaded sample.
    ///
    /// Errors: [`Error::InvalidArgument`] when the buffers do not match `width x height`.
    pub fn new(sample: Sample) -> Result<Self> {
        let Sample {
            path,
            width,
            height,
            image,
            semantic,
            instances,
        } = sample;
        let n = width * height;
        if n == 0 || image.len() != n * 3 {
            return Err(bad(format!(
                "{}: image has {} bytes, expected {width} x {height} x 3",
                path.display(),
                image.len()
            )));
        }
        if let Some(s) = &semantic {
            if s.len() != n {
                return Err(bad(format!(
                    "{}: semantic map has {} values, expected {width} x {height}",
                    path.display(),
                    s.len()
                )));
            }
        }
        if let Some(inst) = &instances {
            if let Some(i) = inst.iter().position(|a| a.mask.len() != n) {
                return Err(bad(format!(
                    "{}: instance {i}'s mask has {} values, expected {width} x {height}",
                    path.display(),
                    inst[i].mask.len()
                )));
            }
        }
        Ok(Augmented {
            path,
            width,
            height,
            image: AugImage::Rgb8(image),
            semantic,
            instances,
            applied: Vec::new(),
        })
    }

    /// Back to a [`Sample`] (8-bit images only).
    ///
    /// Errors: [`Error::InvalidArgument`] once the image is normalised.
    pub fn into_sample(self) -> Result<Sample> {
        match self.image {
            AugImage::Rgb8(image) => Ok(Sample {
                path: self.path,
                width: self.width,
                height: self.height,
                image,
                semantic: self.semantic,
                instances: self.instances,
            }),
            AugImage::Normalized(_) => Err(bad(
                "the image is normalised; it has no 8-bit form (use image_chw)",
            )),
        }
    }

    /// The 8-bit image, unless normalised.
    pub fn rgb8(&self) -> Option<&[u8]> {
        match &self.image {
            AugImage::Rgb8(v) => Some(v),
            AugImage::Normalized(_) => None,
        }
    }

    /// Fails unless every buffer matches `width x height` (the fields are public).
    fn check(&self) -> Result<()> {
        let n = self.width.saturating_mul(self.height);
        let img_len = match &self.image {
            AugImage::Rgb8(v) => v.len(),
            AugImage::Normalized(v) => v.len(),
        };
        let ok = n > 0
            && n.checked_mul(3) == Some(img_len)
            && self.semantic.as_ref().is_none_or(|s| s.len() == n)
            && self
                .instances
                .as_ref()
                .is_none_or(|v| v.iter().all(|a| a.mask.len() == n));
        if ok {
            Ok(())
        } else {
            Err(bad(format!(
                "{}: buffers do not match the {} x {} size",
                self.path.display(),
                self.width,
                self.height
            )))
        }
    }

    fn rgb8_mut(&mut self, what: &str) -> Result<&mut Vec<u8>> {
        match &mut self.image {
            AugImage::Rgb8(v) => Ok(v),
            AugImage::Normalized(_) => Err(bad(format!(
                "{what} needs the 8-bit image; put Normalize after it"
            ))),
        }
    }

    /// The image as `3 x height x width` f32 planes (normalised values, or 0..255 before
    /// `Normalize`).
    pub fn image_chw(&self) -> Vec<f32> {
        let hw = self.width * self.height;
        let mut out = vec![0f32; 3 * hw];
        let get = |i: usize| -> f32 {
            match &self.image {
                AugImage::Rgb8(v) => v[i] as f32,
                AugImage::Normalized(v) => v[i],
            }
        };
        for p in 0..hw {
            for c in 0..3 {
                out[c * hw + p] = get(p * 3 + c);
            }
        }
        out
    }

    /// [`Augmented::image_chw`] as a `3 x height x width` f32 tensor.
    pub fn image_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.image_chw(),
            (3, self.height, self.width),
            device,
        )?)
    }

    /// The semantic map as a `height x width` u32 tensor.
    pub fn semantic_tensor(&self, device: &Device) -> Result<Option<Tensor>> {
        match &self.semantic {
            Some(s) => {
                let v: Vec<u32> = s.iter().map(|&x| x as u32).collect();
                Ok(Some(Tensor::from_vec(
                    v,
                    (self.height, self.width),
                    device,
                )?))
            }
            None => Ok(None),
        }
    }

    /// Resizes to `width x height`: the image with OpenCV's bilinear kernel, the semantic map
    /// and instance masks with nearest neighbour (mmseg `Resize` / mmdet `BitmapMasks.resize`).
    ///
    /// Errors: [`Error::InvalidArgument`] for an empty size, a normalised image or buffers
    /// that do not match the size.
    pub fn resize(&mut self, width: usize, height: usize) -> Result<()> {
        self.check()?;
        let (w, h) = (self.width, self.height);
        let img = self.rgb8_mut("Resize")?;
        *img = resize_bilinear(img, w, h, 3, width, height)?;
        if let Some(s) = &mut self.semantic {
            *s = resize_nearest(s, w, h, 1, width, height)?;
        }
        if let Some(inst) = &mut self.instances {
            for a in inst.iter_mut() {
                a.mask = resize_nearest(&a.mask, w, h, 1, width, height)?;
            }
        }
        self.width = width;
        self.height = height;
        self.applied.push(Applied::Resize { width, height });
        Ok(())
    }

    /// Crops to `b` (mmseg `RandomCrop.crop` / numpy slicing). Instances left without a pixel
    /// are dropped (mmdet's `RandomCrop` drops boxes that become empty).
    ///
    /// Errors: [`Error::InvalidArgument`] for an empty window or one outside the image.
    pub fn crop(&mut self, b: CropBox) -> Result<()> {
        self.check()?;
        if b.x1 >= b.x2 || b.y1 >= b.y2 || b.x2 > self.width || b.y2 > self.height {
            return Err(bad(format!(
                "crop window {b:?} is empty or outside the {} x {} image",
                self.width, self.height
            )));
        }
        let w = self.width;
        self.image = match &self.image {
            AugImage::Rgb8(v) => AugImage::Rgb8(crop_buf(v, w, 3, &b)),
            AugImage::Normalized(v) => AugImage::Normalized(crop_buf(v, w, 3, &b)),
        };
        if let Some(s) = &mut self.semantic {
            *s = crop_buf(s, w, 1, &b);
        }
        if let Some(inst) = &mut self.instances {
            for a in inst.iter_mut() {
                a.mask = crop_buf(&a.mask, w, 1, &b);
            }
            inst.retain(|a| a.mask.iter().any(|&m| m));
        }
        self.width = b.width();
        self.height = b.height();
        self.applied.push(Applied::Crop(b));
        Ok(())
    }

    /// Flips everything (mmcv `imflip`; mmseg `RandomFlip._flip`).
    ///
    /// Errors: [`Error::InvalidArgument`] when the buffers do not match the size.
    pub fn flip(&mut self, d: FlipDirection) -> Result<()> {
        self.check()?;
        let (w, h) = (self.width, self.height);
        self.image = match &self.image {
            AugImage::Rgb8(v) => AugImage::Rgb8(flip_buf(v, w, h, 3, d)),
            AugImage::Normalized(v) => AugImage::Normalized(flip_buf(v, w, h, 3, d)),
        };
        if let Some(s) = &mut self.semantic {
            *s = flip_buf(s, w, h, 1, d);
        }
        if let Some(inst) = &mut self.instances {
            for a in inst.iter_mut() {
                a.mask = flip_buf(&a.mask, w, h, 1, d);
            }
        }
        self.applied.push(Applied::Flip(Some(d)));
        Ok(())
    }

    /// Applies `PhotoMetricDistortion` with the given draws (see [`super::color`]).
    ///
    /// Errors: [`Error::InvalidArgument`] on a normalised image.
    pub fn photometric(&mut self, p: &PhotoMetricParams) -> Result<()> {
        self.check()?;
        let w = self.width;
        photometric(self.rgb8_mut("PhotoMetricDistortion")?, w, p);
        self.applied.push(Applied::PhotoMetric(*p));
        Ok(())
    }

    /// Pads at the bottom and right to at least `width x height` (mmcv `impad`; a smaller
    /// target leaves that side as is): the image with `val.img`, the semantic map with
    /// `val.seg`, masks with `false`.
    ///
    /// Errors: [`Error::InvalidArgument`] for a non-integer or out-of-range `val.img` on an
    /// 8-bit image.
    pub fn pad(&mut self, width: usize, height: usize, val: &PadVal) -> Result<()> {
        self.check()?;
        let (w, h) = (self.width, self.height);
        let (nw, nh) = (width.max(w), height.max(h));
        self.image = match &self.image {
            AugImage::Rgb8(v) => {
                if val.img.fract() != 0.0 || !(0.0..=255.0).contains(&val.img) {
                    return Err(bad(format!(
                        "pad value {} for an 8-bit image is not an integer in 0..=255",
                        val.img
                    )));
                }
                AugImage::Rgb8(pad_buf(v, w, h, 3, nw, nh, val.img as u8))
            }
            AugImage::Normalized(v) => {
                AugImage::Normalized(pad_buf(v, w, h, 3, nw, nh, val.img as f32))
            }
        };
        if let Some(s) = &mut self.semantic {
            *s = pad_buf(s, w, h, 1, nw, nh, val.seg);
        }
        if let Some(inst) = &mut self.instances {
            for a in inst.iter_mut() {
                a.mask = pad_buf(&a.mask, w, h, 1, nw, nh, false);
            }
        }
        self.width = nw;
        self.height = nh;
        self.applied.push(Applied::Pad {
            width: nw,
            height: nh,
        });
        Ok(())
    }

    /// Normalises the 8-bit image: output channel `c` is `(x - mean[c]) / std[c]` in f32 of
    /// input channel `c` (RGB, `to_rgb = true`) or `2 - c` (BGR), as mmseg's
    /// `SegDataPreProcessor` (`bgr_to_rgb`) on a BGR-loaded image.
    ///
    /// Errors: [`Error::InvalidArgument`] if already normalised or a `std` is 0.
    pub fn normalize(&mut self, mean: [f64; 3], std: [f64; 3], to_rgb: bool) -> Result<()> {
        self.check()?;
        if std.contains(&0.0) {
            return Err(bad("Normalize: std must be nonzero"));
        }
        let img = self.rgb8_mut("Normalize")?;
        let m = mean.map(|v| v as f32);
        let s = std.map(|v| v as f32);
        let mut out = Vec::with_capacity(img.len());
        for p in img.chunks_exact(3) {
            for c in 0..3 {
                let x = if to_rgb { p[c] } else { p[2 - c] } as f32;
                out.push((x - m[c]) / s[c]);
            }
        }
        self.image = AugImage::Normalized(out);
        self.applied.push(Applied::Normalize);
        Ok(())
    }
}
