//! Named model presets and JSON model configs.
//!
//! Two kinds: backbones (the `PRESETS` table) and segmentors (the `segkit` facade's mmseg
//! presets, `danet_r50-d8_cityscapes-512x1024` etc., see [`segkit::Preset`]).

use segkit::{Preset, SegmentorConfig};
use segkit_backbones::ResNetConfig;
use serde::{Deserialize, Serialize};

use crate::CliError;

/// A model `segkit dump` can run: a closed, tagged enum (`{"type": "ResNet", ...}`), so that a
/// config file with an unknown type fails at parse time and lists the valid ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ModelConfig {
    /// A ResNet backbone (outputs `c2`..`c5`).
    ResNet(ResNetConfig),
    /// An mmseg-style encoder-decoder segmentor (outputs `logits` at the decode head's
    /// stride, and `aux_logits`, `pam_logits`, `cam_logits`, `se_logits` where the model has
    /// them). Checkpoints are whole mmseg checkpoints (`backbone.*`, `decode_head.*`, ...).
    EncoderDecoder(Box<SegmentorConfig>),
}

type Ctor = fn() -> Result<ModelConfig, CliError>;

fn rn(cfg: ResNetConfig) -> Result<ModelConfig, CliError> {
    Ok(ModelConfig::ResNet(cfg))
}

/// Every preset: name, what it is, constructor.
pub const PRESETS: &[(&str, &str, Ctor)] = &[
    ("resnet18", "torchvision resnet18 (C2..C5)", || {
        rn(ResNetConfig::torchvision(18))
    }),
    ("resnet34", "torchvision resnet34", || {
        rn(ResNetConfig::torchvision(34))
    }),
    ("resnet50", "torchvision resnet50", || {
        rn(ResNetConfig::torchvision(50))
    }),
    ("resnet101", "torchvision resnet101", || {
        rn(ResNetConfig::torchvision(101))
    }),
    ("resnet152", "torchvision resnet152", || {
        rn(ResNetConfig::torchvision(152))
    }),
    (
        "resnet50_os8",
        "torchvision resnet50, dilated to output stride 8",
        || rn(ResNetConfig::torchvision(50).with_output_stride(8)?),
    ),
    (
        "resnet50d",
        "timm resnet50d (deep stem, avg-pool shortcuts)",
        || rn(ResNetConfig::timm_d(50, 32)?),
    ),
    ("resnet50d_os8", "timm resnet50d, output_stride=8", || {
        rn(ResNetConfig::timm_d(50, 8)?)
    }),
    ("resnet50d_os16", "timm resnet50d, output_stride=16", || {
        rn(ResNetConfig::timm_d(50, 16)?)
    }),
    ("resnet101d", "timm resnet101d", || {
        rn(ResNetConfig::timm_d(101, 32)?)
    }),
    (
        "resnetv1c50_d8",
        "mmseg ResNetV1c-50, dilations (1,1,2,4), contracted",
        || rn(ResNetConfig::mmseg_v1c(50)),
    ),
    (
        "resnetv1c101_d8",
        "mmseg ResNetV1c-101, dilations (1,1,2,4), contracted",
        || rn(ResNetConfig::mmseg_v1c(101)),
    ),
    (
        "resnetv1d50_d8",
        "mmseg ResNetV1d-50 (avg-pool shortcuts), output stride 8",
        || rn(ResNetConfig::mmseg_v1d(50)),
    ),
];

/// Every preset name with a one-line description: the backbones, then the segmentors.
pub fn list() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = PRESETS
        .iter()
        .map(|(n, about, _)| (n.to_string(), about.to_string()))
        .collect();
    for name in segkit::oneformer::presets::ONEFORMER_PRESETS {
        v.push((
            name.to_string(),
            "OneFormer (HF shi-labs; --weights HF_DIR or --synthetic; --task; \
             class_queries_logits, masks_queries_logits, segmentation)"
                .to_string(),
        ));
    }
    for p in Preset::all() {
        let about = format!(
            "mmseg {} ({} classes; logits, aux_logits{})",
            p.arch.name(),
            p.dataset.num_classes(),
            match p.arch {
                segkit::Architecture::DanetR50D8 | segkit::Architecture::DanetR101D8 =>
                    ", pam_logits, cam_logits",
                segkit::Architecture::FastfcnR50D32JpuEnc => ", se_logits",
                _ => "",
            }
        );
        v.push((p.name(), about));
    }
    for name in segkit::train::demo::preset_names() {
        v.push((
            name,
            "segkit's demo: ResNetV1c-18 at width 16 + PSP head, 11 Fashion-MNIST canvas classes"
                .into(),
        ));
    }
    v
}

/// The config of preset `name`, or an error listing the valid names.
pub fn preset(name: &str) -> Result<ModelConfig, CliError> {
    if let Some((_, _, ctor)) = PRESETS.iter().find(|(n, _, _)| *n == name) {
        return ctor();
    }
    if let Some(cfg) = segkit::train::demo::preset(name) {
        return Ok(ModelConfig::EncoderDecoder(Box::new(cfg)));
    }
    match name.parse::<Preset>() {
        Ok(p) => Ok(ModelConfig::EncoderDecoder(Box::new(p.config()))),
        Err(_) => Err(CliError::UnknownPreset {
            name: name.to_string(),
            valid: list().into_iter().map(|(n, _)| n).collect(),
        }),
    }
}

/// Parses a JSON model config file.
pub fn from_file(path: &std::path::Path) -> Result<ModelConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| CliError::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
