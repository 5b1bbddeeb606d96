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

use crate::encoder_decoder::config::{TestMode, TestPad, TtaConfig};
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
    pub fn inference(&self, x: &Tensor) -> Result<Tensor> {
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
    pub fn predict_image_scores(&self, image: &DynamicImage) -> Result<Tensor> {
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
    fn windows_match_mmseg() {
        // h = 97, crop 64, stride 43: grids = (33 + 42) // 43 + 1 = 2; second window ends at 97.
        assert_eq!(windows(97, 64, 43), vec![(0, 64), (33, 97)]);
        assert_eq!(windows(129, 64, 43), vec![(0, 64), (43, 107), (65, 129)]);
        // A crop larger than the image: one clipped window.
        assert_eq!(windows(50, 64, 43), vec![(0, 50)]);
    }
}
