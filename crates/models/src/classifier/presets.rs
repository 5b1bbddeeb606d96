//! Named classifier configs: the ImageNet checkpoints a PSSL ensemble is built from.

use segkit_backbones::SwinConfig;

use super::ClassifierConfig;
use crate::{Error, Result};

/// Every classifier preset: name and one-line description.
pub const CLASSIFIER_PRESETS: &[(&str, &str)] = &[
    (
        "resnet18_imagenet",
        "torchvision resnet18 classifier (1000 classes, fc)",
    ),
    (
        "resnet34_imagenet",
        "torchvision resnet34 classifier (1000 classes, fc)",
    ),
    (
        "resnet50_imagenet",
        "torchvision resnet50 classifier (1000 classes, fc)",
    ),
    (
        "resnet101_imagenet",
        "torchvision resnet101 classifier (1000 classes, fc)",
    ),
    (
        "resnet50d_imagenet",
        "timm resnet50d classifier (1000 classes, fc)",
    ),
    (
        "swin_tiny_imagenet",
        "HF SwinForImageClassification swin-tiny-patch4-window7-224 (1000 classes)",
    ),
];

/// The config of classifier preset `name`.
pub fn classifier_preset(name: &str) -> Result<ClassifierConfig> {
    let mut c = match name {
        "resnet18_imagenet" => ClassifierConfig::torchvision_resnet(18, 1000),
        "resnet34_imagenet" => ClassifierConfig::torchvision_resnet(34, 1000),
        "resnet50_imagenet" => ClassifierConfig::torchvision_resnet(50, 1000),
        "resnet101_imagenet" => ClassifierConfig::torchvision_resnet(101, 1000),
        "resnet50d_imagenet" => ClassifierConfig::timm_resnet_d(50, 1000)?,
        "swin_tiny_imagenet" => ClassifierConfig::swin(name, SwinConfig::tiny(), 1000),
        _ => {
            return Err(Error::UnknownPreset {
                name: name.to_string(),
                valid: CLASSIFIER_PRESETS.iter().map(|p| p.0.to_string()).collect(),
            })
        }
    };
    c.name = name.to_string();
    Ok(c)
}
