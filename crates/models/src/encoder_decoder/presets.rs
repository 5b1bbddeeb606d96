//! Presets named after mmsegmentation 1.2.2's configs (`configs/danet`, `configs/pspnet`,
//! `configs/fastfcn`): an [`Architecture`] (the `_base_/models/*.py` model plus its head)
//! trained on a [`Dataset`] (the `_base_/datasets/*.py` test pipeline, class count, names and
//! palette). A preset's name is `{architecture}_{dataset}`, e.g. `danet_r50-d8_cityscapes-512x1024`
//! or `fastfcn_r50-d32_jpu_enc_ade20k-512x512`.
//!
//! What the presets reproduce, per mmseg's configs:
//! - backbone `ResNetV1c` (deep stem), depth 50 / 101; `-d8`: strides (1, 2, 1, 1), dilations
//!   (1, 1, 2, 4), contracted; `-d32` (FastFCN): strides (1, 2, 2, 2) with the same
//!   dilations (mmseg's config keeps them), and a `JPU` neck over C3..C5;
//! - decode head DAHead / PSPHead (`in_index` 3, or 2 behind the JPU) / ASPPHead (dilations
//!   1, 12, 24, 36) / EncHead (32 codes, SE branch), 512 channels, dropout 0.1, BN,
//!   `align_corners = false`; auxiliary FCNHead on C4 (1024 -> 256, one conv);
//! - data preprocessor: mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375), RGB,
//!   no test-time padding;
//! - test pipeline: `Resize(scale=(2048, 1024), keep_ratio=True)` for Cityscapes,
//!   `(2048, 512)` for ADE20K; `test_cfg = dict(mode='whole')` for both (mmseg 1.x's
//!   512x1024 Cityscapes configs use whole-image inference; switch to sliding windows with
//!   [`crate::TestMode::slide_two_thirds`] on the crop size);
//! - training crop (`data_preprocessor.size`) 512x1024 / 512x512.
//!
//! ```
//! use segkit_models::{Architecture, Dataset, Preset};
//! let p: Preset = "pspnet_r101-d8_ade20k-512x512".parse().unwrap();
//! assert_eq!(p, Preset::new(Architecture::PspnetR101D8, Dataset::Ade20k));
//! let cfg = p.config();
//! assert_eq!(cfg.num_classes(), 150);
//! assert_eq!(Preset::all().len(), 14);
//! assert!("danet_r50_d8".parse::<Preset>().unwrap_err().to_string().contains("danet_r50-d8_cityscapes-512x1024"));
//! ```

use std::fmt;
use std::str::FromStr;

use segkit_backbones::ResNetConfig;
use segkit_heads::{AsppHeadConfig, DaHeadConfig, EncHeadConfig, FcnHeadConfig, PspHeadConfig};
use segkit_necks::JpuConfig;

use crate::datasets::DatasetMeta;
use crate::encoder_decoder::config::{
    BackboneConfig, DataPreprocessorConfig, HeadConfig, NeckConfig, SegmentorConfig, TestMode,
    TestResize,
};
use crate::Error;

/// A model architecture, named after mmseg's config prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// `danet_r50-d8`: DANet head on a dilated ResNetV1c-50.
    DanetR50D8,
    /// `danet_r101-d8`: DANet head on a dilated ResNetV1c-101.
    DanetR101D8,
    /// `pspnet_r50-d8`: PSP head on a dilated ResNetV1c-50.
    PspnetR50D8,
    /// `pspnet_r101-d8`: PSP head on a dilated ResNetV1c-101.
    PspnetR101D8,
    /// `fastfcn_r50-d32_jpu_psp`: ResNetV1c-50 (output stride 32) + JPU + PSP head.
    FastfcnR50D32JpuPsp,
    /// `fastfcn_r50-d32_jpu_aspp`: ResNetV1c-50 + JPU + ASPP head.
    FastfcnR50D32JpuAspp,
    /// `fastfcn_r50-d32_jpu_enc`: ResNetV1c-50 + JPU + EncNet head (the FastFCN paper's).
    FastfcnR50D32JpuEnc,
}

impl Architecture {
    /// Every architecture.
    pub const ALL: [Architecture; 7] = [
        Architecture::DanetR50D8,
        Architecture::DanetR101D8,
        Architecture::PspnetR50D8,
        Architecture::PspnetR101D8,
        Architecture::FastfcnR50D32JpuPsp,
        Architecture::FastfcnR50D32JpuAspp,
        Architecture::FastfcnR50D32JpuEnc,
    ];

    /// mmseg's config prefix (`danet_r50-d8`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::DanetR50D8 => "danet_r50-d8",
            Architecture::DanetR101D8 => "danet_r101-d8",
            Architecture::PspnetR50D8 => "pspnet_r50-d8",
            Architecture::PspnetR101D8 => "pspnet_r101-d8",
            Architecture::FastfcnR50D32JpuPsp => "fastfcn_r50-d32_jpu_psp",
            Architecture::FastfcnR50D32JpuAspp => "fastfcn_r50-d32_jpu_aspp",
            Architecture::FastfcnR50D32JpuEnc => "fastfcn_r50-d32_jpu_enc",
        }
    }

    fn depth(self) -> usize {
        match self {
            Architecture::DanetR101D8 | Architecture::PspnetR101D8 => 101,
            _ => 50,
        }
    }

    fn is_fastfcn(self) -> bool {
        matches!(
            self,
            Architecture::FastfcnR50D32JpuPsp
                | Architecture::FastfcnR50D32JpuAspp
                | Architecture::FastfcnR50D32JpuEnc
        )
    }
}

/// A training dataset: class count, names, palette and test pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// Cityscapes, 19 classes, 512x1024 crops (`cityscapes-512x1024`).
    Cityscapes,
    /// ADE20K (SceneParsing), 150 classes, 512x512 crops (`ade20k-512x512`).
    Ade20k,
}

impl Dataset {
    /// Every dataset.
    pub const ALL: [Dataset; 2] = [Dataset::Cityscapes, Dataset::Ade20k];

    /// mmseg's config suffix (`cityscapes-512x1024`, `ade20k-512x512`).
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Cityscapes => "cityscapes-512x1024",
            Dataset::Ade20k => "ade20k-512x512",
        }
    }

    /// Number of classes.
    pub fn num_classes(self) -> usize {
        match self {
            Dataset::Cityscapes => 19,
            Dataset::Ade20k => 150,
        }
    }

    /// Training crop `(h, w)` (mmseg `crop_size`).
    pub fn crop_size(self) -> [usize; 2] {
        match self {
            Dataset::Cityscapes => [512, 1024],
            Dataset::Ade20k => [512, 512],
        }
    }

    /// The test pipeline's resize (`_base_/datasets/{cityscapes,ade20k}.py`).
    pub fn test_resize(self) -> TestResize {
        let scale = match self {
            Dataset::Cityscapes => [2048, 1024],
            Dataset::Ade20k => [2048, 512],
        };
        TestResize {
            scale,
            keep_ratio: true,
        }
    }

    /// Class names and palette.
    pub fn meta(self) -> DatasetMeta {
        match self {
            Dataset::Cityscapes => DatasetMeta::cityscapes(),
            Dataset::Ade20k => DatasetMeta::ade20k(),
        }
    }
}

/// An architecture trained on a dataset: one of mmseg's configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Preset {
    /// The model.
    pub arch: Architecture,
    /// The dataset it is configured for.
    pub dataset: Dataset,
}

impl Preset {
    /// `arch` for `dataset`.
    pub const fn new(arch: Architecture, dataset: Dataset) -> Self {
        Self { arch, dataset }
    }

    /// Every preset, architectures in [`Architecture::ALL`] order, Cityscapes first.
    pub fn all() -> Vec<Preset> {
        Architecture::ALL
            .iter()
            .flat_map(|&a| Dataset::ALL.iter().map(move |&d| Preset::new(a, d)))
            .collect()
    }

    /// The name, `{architecture}_{dataset}`.
    pub fn name(&self) -> String {
        format!("{}_{}", self.arch.name(), self.dataset.name())
    }

    /// The full segmentor config.
    pub fn config(&self) -> SegmentorConfig {
        let k = self.dataset.num_classes();
        let arch = self.arch;
        let backbone = if arch.is_fastfcn() {
            // mmseg's `-d32` backbone: strides (1, 2, 2, 2) (output stride 32) *and* the
            // `-d8` dilations (1, 1, 2, 4), contracted, as `fastfcn_r50-d32_jpu_psp.py` says.
            let mut c = ResNetConfig::mmseg_v1c(arch.depth());
            c.strides = [1, 2, 2, 2];
            c
        } else {
            ResNetConfig::mmseg_v1c(arch.depth())
        };
        // mmseg's JPU consumes the backbone's `out_indices = (1, 2, 3)` = C3..C5; segkit's
        // ResNet returns C2..C5, so the JPU starts at level 1. It returns C3, C4 and the
        // fused map, which the heads index exactly as mmseg's configs do.
        let neck = arch
            .is_fastfcn()
            .then(|| NeckConfig::Jpu(JpuConfig::mmseg().with_start_level(1)));
        let decode_head = match arch {
            Architecture::DanetR50D8 | Architecture::DanetR101D8 => {
                HeadConfig::Da(DaHeadConfig::danet_r50_d8(k))
            }
            Architecture::PspnetR50D8 | Architecture::PspnetR101D8 => {
                HeadConfig::Psp(PspHeadConfig::pspnet_r50_d8(k))
            }
            Architecture::FastfcnR50D32JpuPsp => {
                HeadConfig::Psp(PspHeadConfig::fastfcn_r50_d32_jpu_psp(k))
            }
            Architecture::FastfcnR50D32JpuAspp => {
                HeadConfig::Aspp(AsppHeadConfig::fastfcn_r50_d32_jpu_aspp(k))
            }
            Architecture::FastfcnR50D32JpuEnc => {
                HeadConfig::Enc(EncHeadConfig::fastfcn_r50_d32_jpu_enc(k))
            }
        };
        let aux = if arch.is_fastfcn() {
            FcnHeadConfig::aux_fastfcn_r50_d32_jpu(k)
        } else {
            FcnHeadConfig::aux_r50_d8(k)
        };
        SegmentorConfig {
            name: self.name(),
            backbone: BackboneConfig::ResNet(backbone),
            neck,
            decode_head,
            auxiliary_head: Some(HeadConfig::Fcn(aux)),
            data_preprocessor: DataPreprocessorConfig {
                size: Some(self.dataset.crop_size()),
                ..DataPreprocessorConfig::default()
            },
            test_resize: Some(self.dataset.test_resize()),
            test_cfg: TestMode::Whole,
            tta: None,
            meta: self.dataset.meta(),
            losses: Default::default(),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    /// Parses a preset name; an unknown one fails with [`Error::UnknownPreset`] listing all.
    fn from_str(s: &str) -> Result<Self, Error> {
        Preset::all()
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::UnknownPreset {
                name: s.to_string(),
                valid: Preset::all().iter().map(Preset::name).collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_configs_validate() {
        for p in Preset::all() {
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
            let c = p.config();
            c.validate().unwrap();
            assert_eq!(c.num_classes(), p.dataset.num_classes());
            let j = serde_json::to_string(&c).unwrap();
            assert_eq!(SegmentorConfig::from_json(&j).unwrap(), c);
        }
    }
}
