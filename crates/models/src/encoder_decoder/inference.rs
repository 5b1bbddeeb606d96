//! Inference as mmseg's test step: `whole` / `slide` inference
//! (`EncoderDecoder.inference`), post-processing (padding removed, flip undone, logits
//! resized to the original image and arg-maxed, `BaseSegmentor.postprocess_result`) and
//! test-time augmentation (`SegTTAModel.merge_preds`: the mean of the per-view softmax).
//!
//! - [`EncoderDecoder::inference`] works on a normalised batch and returns logits at its size;
//! - [`EncoderDecoder::predict`] adds the arg-max;
//! - [`EncoderDecoder::predict_image`] is the whole pipeline on a decoded image: the test
//!   `Resize`, the data preprocessor, inference, and the class map at the image's size.
//!
//! # Shapes
//! `inference`: `N x 3 x H x W` -> `N x K x H x W` (f32). `predict`: -> `N x H x W` (u32).
//! `predict_image`: an image of `W x H` -> a [`Prediction`] of `H x W` class ids.

use candle_core::{DType, Tensor, D};
use image::{DynamicImage, RgbImage};
use segkit_core::ops;

use std::path::Path;

use crate::encoder_decoder::config::{SegmentorConfig, TestMode, TestPad, TtaConfig};
use crate::encoder_decoder::EncoderDecoder;
use crate::image as img;
use crate::{Error, Result};

/// The result of [`EncoderDecoder::predict_image`]: one class id per pixel of the input
/// image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `H x W` class ids (u32), at the input image's size.
    pub class_map: Tensor,
}

impl Prediction {
    /// Width of the class map (the input image's).
    pub fn width(&self) -> usize {
        self.class_map.dims().get(1).copied().unwrap_or(0)
    }

    /// Height of the class map.
    pub fn height(&self) -> usize {
        self.class_map.dims().first().copied().unwrap_or(0)
    }

    /// The class ids, row-major.
    pub fn class_ids(&self) -> Result<Vec<u32>> {
        Ok(self.class_map.flatten_all()?.to_vec1::<u32>()?)
    }

    /// The class map painted with `palette` (one RGB colour per class id).
    ///
    /// Errors: [`Error::InvalidConfig`] if a class id has no colour.
    pub fn colorize(&self, palette: &[[u8; 3]]) -> Result<RgbImage> {
        let ids = self.class_ids()?;
        let mut out = Vec::with_capacity(ids.len() * 3);
        for &id in &ids {
            let c = palette.get(id as usize).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "class id {id} has no palette colour ({} colours)",
                    palette.len()
                ))
            })?;
            out.extend_from_slice(c);
        }
        RgbImage::from_raw(self.width() as u32, self.height() as u32, out)
            .ok_or_else(|| Error::InvalidConfig("class map is not 2-d".into()))
    }
}

/// An input batch must be `N x 3 x H x W` with no empty dimension; the error names the
/// dimension that is wrong.
pub fn check_input_shape(dims: &[usize]) -> Result<()> {
    const NAMES: [&str; 4] = ["batch (N)", "channels (C)", "height (H)", "width (W)"];
    if dims.len() != 4 {
        return Err(Error::InvalidConfig(format!(
            "input of shape {dims:?} is not N x 3 x H x W (it has {} dimensions)",
            dims.len()
        )));
    }
    if let Some(i) = dims.iter().position(|&d| d == 0) {
        return Err(Error::InvalidConfig(format!(
            "input of shape {dims:?} is empty: its {} dimension is 0",
            NAMES[i]
        )));
    }
    if dims[1] != 3 {
        return Err(Error::InvalidConfig(format!(
            "input of shape {dims:?} has {} channels; the model takes 3 (RGB)",
            dims[1]
        )));
    }
    Ok(())
}

/// Window origins along one axis, as mmseg's `slide_inference`: `grids` windows every
/// `stride`, each moved back to end inside the image.
fn windows(len: usize, crop: usize, stride: usize) -> Vec<(usize, usize)> {
    let grids = len.saturating_sub(crop).div_ceil(stride) + 1;
    (0..grids)
        .map(|i| {
            let start = i * stride;
            let end = (start + crop).min(len);
            (end.saturating_sub(crop), end)
        })
        .collect()
}

impl EncoderDecoder {
    /// Logits at the input's size, by the config's `test_cfg` (mmseg `inference`).
    ///
    /// `x`: `N x 3 x H x W`, normalised (see [`crate::image::to_tensor`]).
    ///
    /// Errors: [`Error::InvalidConfig`] for an input that is not `N x 3 x H x W` with every
    /// dimension positive (naming the empty dimension).
    pub fn inference(&self, x: &Tensor) -> Result<Tensor> {
        check_input_shape(x.dims())?;
        match self.config().test_cfg {
            TestMode::Whole => self.encode_decode(x),
            TestMode::Slide { crop_size, stride } => self.slide_inference(x, crop_size, stride),
        }
    }

    /// mmseg `slide_inference`: windows of `crop_size` (`(h, w)`) every `stride`, the last
    /// window of each row / column moved back to end at the border (a window larger than
    /// the image is clipped to it); each window's logits are resized to the window, summed
    /// into the full map and divided by the number of windows covering each pixel.
    pub fn slide_inference(
        &self,
        x: &Tensor,
        crop_size: [usize; 2],
        stride: [usize; 2],
    ) -> Result<Tensor> {
        if crop_size.contains(&0) || stride.contains(&0) {
            return Err(Error::InvalidConfig(format!(
                "slide inference needs positive crop_size and stride, got {crop_size:?} and \
                 {stride:?}"
            )));
        }
        let (n, _, h, w) = x.dims4()?;
        let k = self.num_classes();
        let mut preds = vec![0f32; n * k * h * w];
        let mut count = vec![0f32; h * w];
        for &(y1, y2) in &windows(h, crop_size[0], stride[0]) {
            for &(x1, x2) in &windows(w, crop_size[1], stride[1]) {
                let crop = x.narrow(2, y1, y2 - y1)?.narrow(3, x1, x2 - x1)?;
                let logits = self
                    .encode_decode(&crop)?
                    .to_device(&candle_core::Device::Cpu)?
                    .to_dtype(DType::F32)?;
                let v = logits.flatten_all()?.to_vec1::<f32>()?;
                let cw = x2 - x1;
                let ch = y2 - y1;
                for plane in 0..n * k {
                    let src = &v[plane * ch * cw..(plane + 1) * ch * cw];
                    let dst = &mut preds[plane * h * w..(plane + 1) * h * w];
                    for (r, row) in src.chunks_exact(cw).enumerate() {
                        let o = (y1 + r) * w + x1;
                        for (d, s) in dst[o..o + cw].iter_mut().zip(row) {
                            *d += *s;
                        }
                    }
                }
                for r in y1..y2 {
                    for c in &mut count[r * w + x1..r * w + x2] {
                        *c += 1.0;
                    }
                }
            }
        }
        for plane in preds.chunks_exact_mut(h * w) {
            for (p, c) in plane.iter_mut().zip(&count) {
                *p /= *c;
            }
        }
        Ok(Tensor::from_vec(preds, (n, k, h, w), self.device())?)
    }

    /// Class ids `N x H x W` (u32) of a normalised batch: [`EncoderDecoder::inference`], then
    /// the arg-max over classes (the first maximum wins, as PyTorch).
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inference(x)?.argmax(1)?)
    }

    /// Logits of one 8-bit image at its own size, after the preprocessor's padding,
    /// un-padded and (if `flipped`) un-flipped: `1 x K x h x w`.
    fn view_logits(&self, rgb: &RgbImage, flipped: bool) -> Result<Tensor> {
        let cfg = self.config();
        let x = img::to_tensor(rgb, &cfg.data_preprocessor, self.device())?;
        let (_, _, h, w) = x.dims4()?;
        let (ph, pw) = match cfg.data_preprocessor.test_pad {
            None => (h, w),
            Some(TestPad::SizeDivisor { size_divisor: d }) => {
                (h.div_ceil(d) * d, w.div_ceil(d) * d)
            }
            Some(TestPad::Size { size }) => (h.max(size[0]), w.max(size[1])),
        };
        let x = if (ph, pw) != (h, w) {
            let pad = cfg.data_preprocessor.pad_val;
            let full = Tensor::full(pad as f32, (1, 3, ph, pw), self.device())?;
            full.slice_assign(&[0..1, 0..3, 0..h, 0..w], &x)?
        } else {
            x
        };
        let mut logits = self.inference(&x)?;
        if (ph, pw) != (h, w) {
            logits = logits.narrow(2, 0, h)?.narrow(3, 0, w)?;
        }
        if flipped {
            logits = flip_last(&logits)?;
        }
        Ok(logits)
    }

    /// The class map of a decoded image through mmseg's whole test pipeline: the config's
    /// test `Resize` (or, with `tta`, each ratio's resize of the original image and its
    /// horizontal flip), the data preprocessor, [`EncoderDecoder::inference`], the logits
    /// resized to the image (bilinear, the decode head's `align_corners`) and arg-maxed; with
    /// TTA the per-view softmax is averaged first.
    pub fn predict_image(&self, image: &DynamicImage) -> Result<Prediction> {
        let scores = self.predict_image_scores(image)?;
        Ok(Prediction {
            class_map: scores.argmax(1)?.squeeze(0)?,
        })
    }

    /// What [`EncoderDecoder::predict_image`] arg-maxes: `1 x K x H x W` logits at the
    /// image's size (without TTA), or the averaged class probabilities (with TTA).
    ///
    /// Errors: [`Error::InvalidConfig`] naming `test_resize.scale` or `tta.scale_ratios`
    /// when a view's tensors cannot fit in memory (see [`check_view_memory`]), before
    /// anything of that size is allocated.
    pub fn predict_image_scores(&self, image: &DynamicImage) -> Result<Tensor> {
        check_view_memory(
            self.config(),
            (image.width() as usize, image.height() as usize),
        )?;
        let rgb = img::to_rgb8(image)?;
        match &self.config().tta {
            None => self.single_view_scores(&rgb),
            Some(tta) => self.tta_scores(&rgb, tta),
        }
    }

    fn to_original(&self, logits: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        if logits.dims()[2..] == [h, w] {
            return Ok(logits.clone());
        }
        Ok(ops::resize_bilinear(
            logits,
            (h, w),
            self.config().align_corners(),
        )?)
    }

    fn single_view_scores(&self, rgb: &RgbImage) -> Result<Tensor> {
        let size = (rgb.height() as usize, rgb.width() as usize);
        let resized = img::apply_test_resize(rgb, self.config().test_resize.as_ref())?;
        let logits = self.view_logits(&resized, false)?;
        self.to_original(&logits, size)
    }

    fn tta_scores(&self, rgb: &RgbImage, tta: &TtaConfig) -> Result<Tensor> {
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let mut sum: Option<Tensor> = None;
        let mut views = 0usize;
        for &ratio in &tta.scale_ratios {
            let (rw, rh) = img::ratio_resize_size((w, h), ratio);
            let resized = img::resize_rgb8(rgb, rw, rh)?;
            let flips: &[bool] = if tta.flip { &[false, true] } else { &[false] };
            for &flip in flips {
                let view = if flip {
                    image::imageops::flip_horizontal(&resized)
                } else {
                    resized.clone()
                };
                let logits = self.view_logits(&view, flip)?;
                let probs = candle_nn::ops::softmax(&self.to_original(&logits, (h, w))?, 1)?;
                sum = Some(match sum {
                    None => probs,
                    Some(s) => (s + probs)?,
                });
                views += 1;
            }
        }
        let sum = sum.ok_or_else(|| Error::InvalidConfig("tta has no scale ratios".into()))?;
        Ok((sum / views as f64)?)
    }
}

/// Environment variable overriding the memory limit: bytes with an optional `K`, `M`, `G`
/// or `T` suffix (powers of 1024), or `off` (or `0`) for no check.
pub const MEMORY_LIMIT_ENV: &str = "SEGKIT_MEMORY_LIMIT";

/// The memory a run may use, and where that figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// `SEGKIT_MEMORY_LIMIT`, `MemAvailable in /proc/meminfo`, ...
    pub source: String,
}

/// `"12G"`, `"512m"`, `"1000"` -> bytes (suffixes are powers of 1024).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return None,
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * mult as f64).min(u64::MAX as f64) as u64)
}

/// Bytes as `12.3 GiB` / `512.0 MiB` / `100 B`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if b >= size {
            return format!("{:.1} {unit}", b as f64 / size as f64);
        }
    }
    format!("{b} B")
}

/// The memory limit that size checks compare their estimates with: `SEGKIT_MEMORY_LIMIT` when
/// set (`off` disables the checks: `Ok(None)`), else the kernel's `MemAvailable`
/// (`/proc/meminfo`), lowered to a cgroup v2 limit's headroom (`memory.max - memory.current`)
/// when the process runs under one; `Ok(None)` where neither can be read (not Linux).
///
/// Errors: [`Error::InvalidConfig`] for a `SEGKIT_MEMORY_LIMIT` that does not parse.
pub fn memory_limit() -> Result<Option<MemoryLimit>> {
    if let Ok(v) = std::env::var(MEMORY_LIMIT_ENV) {
        if v.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        return match parse_bytes(&v) {
            Some(0) => Ok(None),
            Some(bytes) => Ok(Some(MemoryLimit {
                bytes,
                source: format!("{MEMORY_LIMIT_ENV}={v}"),
            })),
            None => Err(Error::InvalidConfig(format!(
                "{MEMORY_LIMIT_ENV}={v:?} is not a size (bytes, or a number with K, M, G or T; \
                 `off` disables the memory checks)"
            ))),
        };
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| MemoryLimit {
            bytes: kib * 1024,
            source: "MemAvailable in /proc/meminfo; set SEGKIT_MEMORY_LIMIT to override".into(),
        });
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(cur)) => Some(MemoryLimit {
            bytes: max.saturating_sub(cur),
            source: "the cgroup's memory.max - memory.current; set SEGKIT_MEMORY_LIMIT to \
                     override"
                .into(),
        }),
        _ => None,
    };
    Ok(match (avail, cgroup) {
        (Some(a), Some(c)) => Some(if c.bytes < a.bytes { c } else { a }),
        (a, c) => a.or(c),
    })
}

/// Bytes that one test view of `(w, h)` pixels certainly allocates: the resized 8-bit image
/// (and its flip), the f32 input and the f32 logits (`classes` channels) at the view's size,
/// and, at the original image's size `orig`, the logits resized back and, with TTA, their
/// softmax and the running sum. A lower bound: the network's activations come on top.
pub fn view_bytes((w, h): (usize, usize), orig: (usize, usize), classes: usize) -> u64 {
    let view = (w as u64).saturating_mul(h as u64);
    let orig = (orig.0 as u64).saturating_mul(orig.1 as u64);
    let per_view = 3 * 2 + 4 * 3 + 4 * classes as u64;
    let per_orig = 4 * 3 * classes as u64;
    view.saturating_mul(per_view)
        .saturating_add(orig.saturating_mul(per_orig))
}

/// Refuses, before allocating, a test view whose tensors ([`view_bytes`]) exceed the memory
/// limit ([`memory_limit`]): the view of `test_resize.scale`, or of each `tta.scale_ratios`
/// entry, for an image of `size` (`(w, h)`). The error names the field, the view's size, the
/// estimate and the limit.
pub fn check_view_memory(cfg: &SegmentorConfig, size: (usize, usize)) -> Result<()> {
    let Some(limit) = memory_limit()? else {
        return Ok(());
    };
    let k = cfg.num_classes();
    let mut views: Vec<(String, (usize, usize))> = Vec::new();
    match &cfg.tta {
        Some(t) => {
            for (i, &r) in t.scale_ratios.iter().enumerate() {
                let field = format!("tta.scale_ratios[{i}] = {r}");
                views.push((field, img::ratio_resize_size(size, r)));
            }
        }
        None => {
            if let Some(r) = &cfg.test_resize {
                let field = format!("test_resize.scale {:?}", r.scale);
                views.push((field, img::test_resize_size(size, r)));
            }
        }
    }
    for (field, view) in views {
        let est = view_bytes(view, size, k);
        if est > limit.bytes {
            return Err(Error::InvalidConfig(format!(
                "`{}`: {field} makes a {} x {} view of a {} x {} image: an estimated {} \
                 (input, logits and their copies alone) is more than the memory limit {} ({})",
                cfg.name,
                view.0,
                view.1,
                size.0,
                size.1,
                fmt_bytes(est),
                fmt_bytes(limit.bytes),
                limit.source
            )));
        }
    }
    Ok(())
}

/// Reverses the last dimension.
fn flip_last(x: &Tensor) -> Result<Tensor> {
    let w = x.dim(D::Minus1)?;
    let idx: Vec<u32> = (0..w as u32).rev().collect();
    let idx = Tensor::from_vec(idx, w, x.device())?;
    Ok(x.contiguous()?.index_select(&idx, x.rank() - 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder_decoder::config::{SegmentorConfig, TestResize};
    use segkit_core::testing::synthetic_var_builder;

    fn tiny() -> SegmentorConfig {
        SegmentorConfig::from_json(
            r#"{"name": "tiny", "backbone": {"type": "ResNet", "depth": 18},
                "decode_head": {"type": "FCNHead", "base": {"channels": 8, "num_classes": 3}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn image_pipeline_shapes_in_every_mode() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8])
        }));
        let mut cfg = tiny();
        cfg.test_resize = Some(TestResize {
            scale: [64, 32],
            keep_ratio: true,
        });
        cfg.data_preprocessor.test_pad = Some(TestPad::SizeDivisor { size_divisor: 32 });
        let vb = synthetic_var_builder(DType::F32, &candle_core::Device::Cpu);
        let m = EncoderDecoder::new(&cfg, vb.clone()).unwrap();
        let p = m.predict_image(&img).unwrap();
        assert_eq!((p.height(), p.width()), (23, 37));
        cfg.tta = Some(TtaConfig {
            scale_ratios: vec![0.5, 1.0],
            flip: true,
        });
        cfg.test_cfg = TestMode::Slide {
            crop_size: [16, 16],
            stride: [11, 11],
        };
        let m = EncoderDecoder::new(&cfg, vb).unwrap();
        let s = m.predict_image_scores(&img).unwrap();
        assert_eq!(s.dims(), &[1, 3, 23, 37]);
        // Averaged probabilities sum to one per pixel.
        let total = s
            .sum(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(total.iter().all(|t| (t - 1.0).abs() < 1e-5));
        assert!(
            p.colorize(&[[0, 0, 0]; 2]).is_err() || p.class_ids().unwrap().iter().all(|&c| c < 2)
        );
    }

    #[test]
    fn absurd_test_sizes_fail_before_allocating() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(40, 30));
        let vb = synthetic_var_builder(DType::F32, &candle_core::Device::Cpu);
        let mut cfg = tiny();
        cfg.test_resize = Some(TestResize {
            scale: [200_000, 100_000],
            keep_ratio: false,
        });
        let m = EncoderDecoder::new(&cfg, vb.clone()).unwrap();
        let e = m.predict_image(&img).unwrap_err().to_string();
        assert!(
            e.contains("test_resize.scale [200000, 100000]")
                && e.contains("200000 x 100000 view")
                && e.contains("memory limit"),
            "{e}"
        );
        cfg.test_resize = None;
        cfg.tta = Some(TtaConfig {
            scale_ratios: vec![1.0, 5000.0],
            flip: false,
        });
        let m = EncoderDecoder::new(&cfg, vb).unwrap();
        let e = m.predict_image(&img).unwrap_err().to_string();
        assert!(e.contains("tta.scale_ratios[1] = 5000"), "{e}");
        // 30 GB of logits for 3 classes: at least 200000 * 100000 * 24 bytes.
        assert!(view_bytes((200_000, 100_000), (40, 30), 3) > 30 << 30);
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("12x"), None);
        assert_eq!(fmt_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn empty_inputs_name_the_empty_dimension() {
        let vb = synthetic_var_builder(DType::F32, &candle_core::Device::Cpu);
        let m = EncoderDecoder::new(&tiny(), vb).unwrap();
        let x = Tensor::zeros((1, 3, 0, 64), DType::F32, &candle_core::Device::Cpu).unwrap();
        let e = m.inference(&x).unwrap_err().to_string();
        assert!(
            e.contains("[1, 3, 0, 64]") && e.contains("height (H)"),
            "{e}"
        );
        let e = check_input_shape(&[1, 4, 8, 8]).unwrap_err().to_string();
        assert!(e.contains("4 channels"), "{e}");
    }

    #[test]
    fn windows_match_mmseg() {
        // h = 97, crop 64, stride 43: grids = (33 + 42) // 43 + 1 = 2; second window ends at 97.
        assert_eq!(windows(97, 64, 43), vec![(0, 64), (33, 97)]);
        assert_eq!(windows(129, 64, 43), vec![(0, 64), (43, 107), (65, 129)]);
        // A crop larger than the image: one clipped window.
        assert_eq!(windows(50, 64, 43), vec![(0, 50)]);
    }
}
