//! The typed configuration of an [`crate::EncoderDecoder`]: mmseg's `model` dict (backbone,
//! neck, decode head, auxiliary head, `data_preprocessor`, `test_cfg`) plus the parts of the
//! dataset config that inference needs (the test pipeline's `Resize`, class names).
//!
//! Component choices are closed `#[serde(tag = "type")]` enums named after mmseg's types
//! (`"ResNet"`, `"JPU"`, `"PSPHead"`, ...): a JSON config with an unknown type or field fails
//! when parsed, and the message lists the valid ones.
//!
//! ```
//! use segkit_models::SegmentorConfig;
//! let cfg = SegmentorConfig::preset("danet_r50-d8_cityscapes-512x1024").unwrap();
//! let json = serde_json::to_string(&cfg).unwrap();
//! assert_eq!(SegmentorConfig::from_json(&json).unwrap(), cfg);
//! let err = SegmentorConfig::from_json(r#"{"name": "x", "backbone": {"type": "Swin"}}"#);
//! assert!(err.unwrap_err().to_string().contains("ResNet"));
//! ```

use serde::{Deserialize, Serialize};

pub use super::backbone::BackboneConfig;
pub use super::heads::{HeadConfig, HeadRole, SegmentorLosses};
pub use super::neck::NeckConfig;

use crate::datasets::DatasetMeta;
use crate::{Error, Result};

/// Padding of the network input at test time (mmseg `data_preprocessor.test_cfg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum TestPad {
    /// Pad bottom / right up to a multiple of `size_divisor` (`test_cfg=dict(size_divisor=..)`).
    SizeDivisor {
        /// The divisor.
        size_divisor: usize,
    },
    /// Pad bottom / right up to at least `(h, w)` (`test_cfg=dict(size=..)`).
    Size {
        /// Minimum height and width.
        size: [usize; 2],
    },
}

fn default_mean() -> [f64; 3] {
    [123.675, 116.28, 103.53]
}
fn default_std() -> [f64; 3] {
    [58.395, 57.12, 57.375]
}
fn default_true() -> bool {
    true
}

/// mmseg's `SegDataPreProcessor` (`model.data_preprocessor`): how an 8-bit image becomes the
/// network input. `Default` is the configs' ImageNet normalisation in RGB order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPreprocessorConfig {
    /// Per-channel mean on the 0..255 scale, in the network's channel order (mmseg `mean`;
    /// ImageNet's R, G, B means 123.675, 116.28, 103.53).
    #[serde(default = "default_mean")]
    pub mean: [f64; 3],
    /// Per-channel standard deviation on the 0..255 scale (mmseg `std`; 58.395, 57.12,
    /// 57.375).
    #[serde(default = "default_std")]
    pub std: [f64; 3],
    /// The network takes RGB (mmseg `bgr_to_rgb=True` on OpenCV's BGR images). `false`
    /// feeds BGR. Default true.
    #[serde(default = "default_true")]
    pub rgb: bool,
    /// Value of padded pixels, after normalisation (mmseg `pad_val`). Default 0.
    #[serde(default)]
    pub pad_val: f64,
    /// Training-time padding size `(h, w)` (mmseg `size = crop_size`); not used at
    /// inference.
    #[serde(default)]
    pub size: Option<[usize; 2]>,
    /// Test-time padding (mmseg `test_cfg`); `None` in the configs of segkit's presets, so
    /// images go to the network at their resized size.
    #[serde(default)]
    pub test_pad: Option<TestPad>,
}

impl Default for DataPreprocessorConfig {
    fn default() -> Self {
        Self {
            mean: default_mean(),
            std: default_std(),
            rgb: true,
            pad_val: 0.0,
            size: None,
            test_pad: None,
        }
    }
}

/// The test pipeline's `Resize` (mmcv `Resize(scale=.., keep_ratio=..)`), applied to the
/// decoded 8-bit image with OpenCV's bilinear interpolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestResize {
    /// Target scale `(w, h)` as mmcv writes it: with `keep_ratio` the image is scaled as
    /// large as possible with its long edge <= max(scale) and its short edge <= min(scale)
    /// (Cityscapes (2048, 1024), ADE20K (2048, 512)); without, resized to exactly `w x h`.
    pub scale: [usize; 2],
    /// Keep the aspect ratio. Default true.
    #[serde(default = "default_true")]
    pub keep_ratio: bool,
}

/// How the network is applied to a (resized, normalised) image: mmseg `model.test_cfg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum TestMode {
    /// The whole image at once (`mode='whole'`; what the configs of segkit's presets use).
    #[default]
    Whole,
    /// Overlapping crops (`mode='slide'`): windows of `crop_size` every `stride` pixels,
    /// the last window of a row / column moved back to end at the border, logits of each
    /// window resized to the window and summed, then divided by the number of windows that
    /// cover each pixel.
    Slide {
        /// Window size `(h, w)`.
        crop_size: [usize; 2],
        /// Step between windows `(h, w)`.
        stride: [usize; 2],
    },
}

impl TestMode {
    /// Sliding windows of `crop_size` with a stride of two thirds of it, rounded (the
    /// common mmseg choice: 512x512 -> 341x341, 512x1024 -> 341x683).
    pub fn slide_two_thirds(crop_size: [usize; 2]) -> Self {
        let third = |c: usize| ((2 * c) as f64 / 3.0).round().max(1.0) as usize;
        TestMode::Slide {
            crop_size,
            stride: [third(crop_size[0]), third(crop_size[1])],
        }
    }
}

fn default_ratios() -> Vec<f64> {
    vec![0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
}

/// Test-time augmentation, as mmseg's `tta_pipeline` + `SegTTAModel`: the image is resized
/// by each ratio (relative to the *original* image, `Resize(scale_factor=r, keep_ratio=True)`),
/// optionally also flipped horizontally, each variant is predicted, its logits are un-flipped,
/// resized to the original size and soft-maxed, and the probabilities are averaged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtaConfig {
    /// Resize ratios (mmseg `img_ratios`: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
    #[serde(default = "default_ratios")]
    pub scale_ratios: Vec<f64>,
    /// Also predict the horizontally flipped image at each ratio. Default true.
    #[serde(default = "default_true")]
    pub flip: bool,
}

impl Default for TtaConfig {
    /// mmseg's `tta_pipeline`: six ratios and flip.
    fn default() -> Self {
        Self {
            scale_ratios: default_ratios(),
            flip: true,
        }
    }
}

/// Everything needed to build and run an [`crate::EncoderDecoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentorConfig {
    /// Name of the model (the preset name), used in error messages.
    pub name: String,
    /// The backbone.
    pub backbone: BackboneConfig,
    /// The neck, if any (FastFCN's JPU). Default none.
    #[serde(default)]
    pub neck: Option<NeckConfig>,
    /// The decode head; its `align_corners` is also the segmentor's.
    pub decode_head: HeadConfig,
    /// The auxiliary head (training only; its weights are part of mmseg checkpoints).
    #[serde(default)]
    pub auxiliary_head: Option<HeadConfig>,
    /// Normalisation and padding of the network input.
    #[serde(default)]
    pub data_preprocessor: DataPreprocessorConfig,
    /// The test pipeline's resize of the decoded image; `None` feeds the image at its size.
    #[serde(default)]
    pub test_resize: Option<TestResize>,
    /// Whole-image or sliding-window inference.
    #[serde(default)]
    pub test_cfg: TestMode,
    /// Test-time augmentation for [`crate::EncoderDecoder::predict_image`]; `None` (the
    /// default) predicts the test pipeline's single view.
    #[serde(default)]
    pub tta: Option<TtaConfig>,
    /// Class names and palette.
    #[serde(default)]
    pub meta: DatasetMeta,
    /// The training losses per head and named output (mmseg's `loss_decode`); unset lists
    /// take mmseg's defaults for the head type (see [`SegmentorLosses`]).
    #[serde(default, skip_serializing_if = "SegmentorLosses::is_default")]
    pub losses: SegmentorLosses,
}

impl SegmentorConfig {
    /// The config of a preset, by name (see [`crate::Preset`]; e.g.
    /// `"fastfcn_r50-d32_jpu_psp_ade20k-512x512"`). An unknown name fails with
    /// [`Error::UnknownPreset`] listing the valid ones.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(name.parse::<crate::Preset>()?.config())
    }

    /// Parses a JSON config; unknown component types and fields are errors that name the
    /// valid ones.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The names of the segmentor's outputs ([`crate::SegmentorOutput::named`], named by
    /// [`HeadRole::output_name`]): `logits`, `aux_logits` when there is an auxiliary head,
    /// the decode head's other outputs as `{name}_logits` (`pam_logits`, `cam_logits`,
    /// `se_logits`), then the auxiliary head's other outputs as `aux_{name}_logits`.
    pub fn output_names(&self) -> Vec<String> {
        let mut v = vec![HeadRole::Decode.output_name("logits")];
        let aux = self.auxiliary_head.as_ref().map(HeadConfig::output_names);
        if aux.is_some() {
            v.push(HeadRole::Auxiliary.output_name("logits"));
        }
        let extra = |role: HeadRole, names: Vec<String>| {
            names.into_iter().skip(1).map(move |n| role.output_name(&n))
        };
        v.extend(extra(HeadRole::Decode, self.decode_head.output_names()));
        v.extend(aux.into_iter().flat_map(|n| extra(HeadRole::Auxiliary, n)));
        v
    }

    /// The heads and their losses per output: the configured lists, or mmseg's defaults
    /// ([`HeadConfig::mmseg_losses`]; the auxiliary head's weighted 0.4).
    pub fn head_losses(&self) -> Vec<(HeadRole, &HeadConfig, Vec<segkit_losses::OutputLosses>)> {
        let mut v = vec![(
            HeadRole::Decode,
            &self.decode_head,
            self.losses
                .decode_head
                .clone()
                .unwrap_or_else(|| self.decode_head.mmseg_losses()),
        )];
        if let Some(aux) = &self.auxiliary_head {
            let l = self
                .losses
                .auxiliary_head
                .clone()
                .unwrap_or_else(|| super::heads::mmseg_auxiliary_losses(aux));
            v.push((HeadRole::Auxiliary, aux, l));
        }
        v
    }

    /// Number of classes (of the decode head).
    pub fn num_classes(&self) -> usize {
        self.decode_head.num_classes()
    }

    /// `align_corners` of the segmentor's resizes (the decode head's, as mmseg).
    pub fn align_corners(&self) -> bool {
        self.decode_head.align_corners()
    }

    /// Checks what the component constructors cannot: consistent class counts and
    /// inference settings.
    pub fn validate(&self) -> Result<()> {
        let n = self.num_classes();
        if let Some(aux) = &self.auxiliary_head {
            if aux.num_classes() != n {
                return Err(Error::InvalidConfig(format!(
                    "`{}`: auxiliary head has {} classes, decode head {n}",
                    self.name,
                    aux.num_classes()
                )));
            }
        }
        if self.auxiliary_head.is_none() && self.losses.auxiliary_head.is_some() {
            return Err(Error::InvalidConfig(format!(
                "`{}`: losses.auxiliary_head is set but the model has no auxiliary head",
                self.name
            )));
        }
        for (role, head, losses) in self.head_losses() {
            let what = format!("`{}` losses of the {} head", self.name, role.loss_prefix());
            head.validate_losses(&what, &losses)?;
        }
        if !self.meta.classes.is_empty() && self.meta.classes.len() != n {
            return Err(Error::InvalidConfig(format!(
                "`{}`: {} class names for {n} classes",
                self.name,
                self.meta.classes.len()
            )));
        }
        if !self.meta.palette.is_empty() && self.meta.palette.len() != n {
            return Err(Error::InvalidConfig(format!(
                "`{}`: {} palette colours for {n} classes",
                self.name,
                self.meta.palette.len()
            )));
        }
        let p = &self.data_preprocessor;
        if p.std.iter().any(|s| !(s.is_finite() && *s != 0.0)) {
            return Err(Error::InvalidConfig(format!(
                "`{}`: data_preprocessor.std must be finite and non-zero, got {:?}",
                self.name, p.std
            )));
        }
        match p.test_pad {
            Some(TestPad::SizeDivisor { size_divisor: 0 }) => {
                return Err(Error::InvalidConfig(format!(
                    "`{}`: test_pad size_divisor must be positive",
                    self.name
                )))
            }
            Some(TestPad::Size { size }) if size.contains(&0) => {
                return Err(Error::InvalidConfig(format!(
                    "`{}`: test_pad size must be positive, got {size:?}",
                    self.name
                )))
            }
            _ => {}
        }
        if let Some(r) = &self.test_resize {
            if r.scale.contains(&0) {
                return Err(Error::InvalidConfig(format!(
                    "`{}`: test_resize scale must be positive, got {:?}",
                    self.name, r.scale
                )));
            }
        }
        if let TestMode::Slide { crop_size, stride } = self.test_cfg {
            if crop_size.contains(&0) || stride.contains(&0) {
                return Err(Error::InvalidConfig(format!(
                    "`{}`: slide inference needs positive crop_size and stride, got {crop_size:?} \
                     and {stride:?}",
                    self.name
                )));
            }
        }
        if let Some(t) = &self.tta {
            if t.scale_ratios.is_empty()
                || t.scale_ratios.iter().any(|r| !(r.is_finite() && *r > 0.0))
            {
                return Err(Error::InvalidConfig(format!(
                    "`{}`: tta scale_ratios must be a non-empty list of positive numbers, got {:?}",
                    self.name, t.scale_ratios
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_list_valid_variants() {
        let e = SegmentorConfig::from_json(
            r#"{"name": "x", "backbone": {"type": "ResNet"}, "decode_head": {"type": "UPerHead"}}"#,
        )
        .unwrap_err()
        .to_string();
        for v in ["FCNHead", "PSPHead", "DAHead", "ASPPHead", "EncHead"] {
            assert!(e.contains(v), "{e}");
        }
        let e = SegmentorConfig::from_json(
            r#"{"name": "x", "backbone": {"type": "ResNet"}, "neck": {"type": "PAFPN"},
                "decode_head": {"type": "FCNHead", "base": {"channels": 8, "num_classes": 2}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("JPU") && e.contains("FPN"), "{e}");
    }

    #[test]
    fn minimal_json_takes_defaults() {
        let c = SegmentorConfig::from_json(
            r#"{"name": "tiny", "backbone": {"type": "ResNet", "depth": 18},
                "decode_head": {"type": "FCNHead", "base": {"channels": 8, "num_classes": 2}},
                "test_cfg": {"mode": "slide", "crop_size": [64, 64], "stride": [43, 43]}}"#,
        )
        .unwrap();
        assert_eq!(c.data_preprocessor, DataPreprocessorConfig::default());
        assert_eq!(
            c.test_cfg,
            TestMode::Slide {
                crop_size: [64, 64],
                stride: [43, 43]
            }
        );
        assert!(SegmentorConfig::from_json(
            r#"{"name": "tiny", "backbone": {"type": "ResNet"}, "decode_head": {"type": "FCNHead",
                "base": {"channels": 8, "num_classes": 2}}, "test_cfg": {"mode": "slide"}}"#
        )
        .is_err());
    }

    #[test]
    fn slide_two_thirds() {
        assert_eq!(
            TestMode::slide_two_thirds([512, 1024]),
            TestMode::Slide {
                crop_size: [512, 1024],
                stride: [341, 683]
            }
        );
    }
}
