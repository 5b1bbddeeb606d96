//! The one preset table: every named configuration of every architecture (backbones on their
//! own, mmseg segmentors, segkit's demo model, OneFormer), by name.

use segkit_backbones::ResNetConfig;

use crate::encoder_decoder::demo;
use crate::{Error, ModelConfig, OneFormerConfig, Preset, Result};

/// One preset: its name, its architecture and a one-line description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresetInfo {
    /// The name [`preset`] takes.
    pub name: String,
    /// The architecture (the [`ModelConfig`] variant, as its `"type"` tag).
    pub architecture: &'static str,
    /// What it is, in one line.
    pub about: String,
}

type Ctor = fn() -> Result<ModelConfig>;

fn rn(cfg: ResNetConfig) -> Result<ModelConfig> {
    Ok(ModelConfig::ResNet(cfg))
}

/// The backbone presets: name, description, constructor.
const BACKBONES: &[(&str, &str, Ctor)] = &[
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
    ("swin_tiny", "HF Swin-T (patch 4, window 7)", || {
        Ok(ModelConfig::Swin(Box::new(
            segkit_backbones::SwinConfig::tiny(),
        )))
    }),
];

/// Every preset, in a stable order: backbones, mmseg segmentors, segkit's demo model,
/// OneFormer.
pub fn presets() -> Vec<PresetInfo> {
    let mut v: Vec<PresetInfo> = BACKBONES
        .iter()
        .map(|(n, about, ctor)| PresetInfo {
            name: n.to_string(),
            architecture: ctor().map(|c| c.type_name()).unwrap_or("ResNet"),
            about: about.to_string(),
        })
        .collect();
    for p in Preset::all() {
        let cfg = p.config();
        let outputs = cfg.output_names().join(", ");
        v.push(PresetInfo {
            name: p.name(),
            architecture: "EncoderDecoder",
            about: format!(
                "mmseg {} ({} classes; outputs {outputs})",
                p.arch.name(),
                p.dataset.num_classes()
            ),
        });
    }
    v.push(PresetInfo {
        name: demo::DEMO_PRESET.to_string(),
        architecture: "EncoderDecoder",
        about: "segkit's demo: ResNetV1c-18 at width 16 + PSP head, 11 Fashion-MNIST canvas \
                classes"
            .into(),
    });
    for name in crate::oneformer::presets::ONEFORMER_PRESETS {
        v.push(PresetInfo {
            name: name.to_string(),
            architecture: "OneFormer",
            about: "OneFormer (HF shi-labs; semantic / instance / panoptic)".into(),
        });
    }
    for name in crate::gscnn::GSCNN_PRESETS {
        v.push(PresetInfo {
            name: name.to_string(),
            architecture: "Gscnn",
            about: "Gated-SCNN (Cityscapes 19 classes; outputs seg, edge, alpha1..3, acts)".into(),
        });
    }
    for name in crate::panet::PANET_PRESETS {
        v.push(PresetInfo {
            name: name.to_string(),
            architecture: "Panet",
            about: "PANet instance segmentation (COCO 80 classes; Detectron test pipeline, \
                    outputs n2..n6, proposals, detections, mask logits)"
                .into(),
        });
    }
    for (name, about) in crate::classifier::CLASSIFIER_PRESETS {
        v.push(PresetInfo {
            name: name.to_string(),
            architecture: "Classifier",
            about: about.to_string(),
        });
    }
    v
}

/// The config of preset `name`, or [`Error::UnknownPreset`] listing every name.
pub fn preset(name: &str) -> Result<ModelConfig> {
    if let Some((_, _, ctor)) = BACKBONES.iter().find(|(n, _, _)| *n == name) {
        return ctor();
    }
    if name == demo::DEMO_PRESET {
        return Ok(demo::demo_config().into());
    }
    if let Ok(p) = name.parse::<Preset>() {
        return Ok(p.config().into());
    }
    if crate::oneformer::presets::ONEFORMER_PRESETS.contains(&name) {
        return Ok(OneFormerConfig::preset(name)?.into());
    }
    if crate::gscnn::GSCNN_PRESETS.contains(&name) {
        return Ok(ModelConfig::Gscnn(Box::new(crate::GscnnConfig::preset(
            name,
        )?)));
    }
    if crate::panet::PANET_PRESETS.contains(&name) {
        let c = crate::PanetConfig::preset(name)?;
        return Ok(ModelConfig::Panet(Box::new(c)));
    }
    if crate::classifier::CLASSIFIER_PRESETS
        .iter()
        .any(|p| p.0 == name)
    {
        let c = crate::classifier::classifier_preset(name)?;
        return Ok(ModelConfig::Classifier(Box::new(c)));
    }
    Err(Error::UnknownPreset {
        name: name.to_string(),
        valid: presets().into_iter().map(|p| p.name).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_all_build() {
        let all = presets();
        let mut names: Vec<_> = all.iter().map(|p| p.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for p in &all {
            let cfg = preset(&p.name).unwrap();
            assert_eq!(cfg.type_name(), p.architecture, "{}", p.name);
        }
        let e = preset("danet_r50_d8").unwrap_err().to_string();
        assert!(
            e.contains("danet_r50-d8_cityscapes-512x1024") && e.contains("resnet50"),
            "{e}"
        );
    }
}
