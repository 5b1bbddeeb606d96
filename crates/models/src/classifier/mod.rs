//! Image classifiers built from the workspace's backbones: a ResNet (any depth, width and stem)
//! or a Swin, global average pooling of the last stage, and a fully connected layer — the
//! ensemble members of PSSL (Distilling Ensemble of Explanations for Weakly-Supervised
//! Pre-Training of Image Segmentation Models) and anything else that needs ImageNet-style
//! classification.
//!
//! Key layouts (so that reference checkpoints load as a format change):
//! - ResNet: torchvision's `torchvision.models.resnet*` and timm's `resnet*` (`conv1`, `bn1`,
//!   `layer{1..4}`, `fc.{weight,bias}`): the backbone's [`segkit_backbones::KeyStyle`] picks
//!   between them, the head is `fc` in both.
//! - Swin: Hugging Face `SwinForImageClassification` (`swin.embeddings..`, `swin.encoder..`,
//!   `swin.layernorm`, `classifier`). The final LayerNorm is read from `swin.layernorm`
//!   through [`hf_swin_classifier_keys`], the one rename (the backbone calls it
//!   `hidden_states_norms.stage4`). Unlike `SwinBackbone`, `SwinModel` calls its encoder
//!   without `always_partition`, so a block whose map's shorter side is at most the window
//!   (at 224x224: stage 4, 7x7, window 7) attends over one unshifted window; the classifier
//!   sets [`SwinConfig::always_partition`] to `false` accordingly (maps smaller than the
//!   window are an error, as in transformers).
//!
//! # Shapes
//! - input: `N x 3 x H x W`, normalised with the config's mean / std;
//! - [`Classifier::forward_t`]: logits `N x num_classes`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! use segkit_models::classifier::{Classifier, ClassifierConfig};
//! let cfg = ClassifierConfig::resnet("r18_w8", 18, 8, 10);
//! let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let m = Classifier::new(&cfg, vb).unwrap();
//! let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
//! assert_eq!(m.forward_t(&x, false).unwrap().dims(), &[2, 10]);
//! ```

mod model_impl;
mod presets;

pub use presets::{classifier_preset, CLASSIFIER_PRESETS};

use candle_core::{Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use segkit_backbones::{ResNet, ResNetConfig, Stem, Swin, SwinConfig};
use segkit_core::checkpoint::StateDict;
use segkit_core::Backbone;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The feature extractor under the pooling + fc head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ClassifierBackbone {
    /// A ResNet (its last stage, `c5`, is pooled); weights at the root (`conv1`, `layer1`..).
    ResNet(ResNetConfig),
    /// A Swin (its last stage, normalised, is pooled); weights under `swin.` with HF keys.
    Swin(Box<SwinConfig>),
}

/// Configuration of a [`Classifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// The model's name.
    pub name: String,
    /// The feature extractor.
    pub backbone: ClassifierBackbone,
    /// Number of classes (the fc's output size; 1000 for ImageNet).
    pub num_classes: usize,
    /// Per-channel mean subtracted from 0-255 RGB pixels (ImageNet's by default).
    #[serde(default = "imagenet_mean")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation dividing 0-255 RGB pixels (ImageNet's by default).
    #[serde(default = "imagenet_std")]
    pub std: [f32; 3],
    /// Class names by class id (`class_<i>` where empty).
    #[serde(default)]
    pub classes: Vec<String>,
}

fn imagenet_mean() -> [f32; 3] {
    [123.675, 116.28, 103.53]
}

fn imagenet_std() -> [f32; 3] {
    [58.395, 57.12, 57.375]
}

impl ClassifierConfig {
    /// torchvision's `resnet{depth}` with `num_classes` outputs (`base_channels` 64).
    pub fn torchvision_resnet(depth: usize, num_classes: usize) -> Self {
        Self::with_backbone(
            &format!("resnet{depth}"),
            ClassifierBackbone::ResNet(ResNetConfig::torchvision(depth)),
            num_classes,
        )
    }

    /// timm's `resnet{depth}d` (deep stem, average-pool shortcuts) with `num_classes` outputs.
    pub fn timm_resnet_d(depth: usize, num_classes: usize) -> Result<Self> {
        Ok(Self::with_backbone(
            &format!("resnet{depth}d"),
            ClassifierBackbone::ResNet(ResNetConfig::timm_d(depth, 32)?),
            num_classes,
        ))
    }

    /// A narrow ResNet for small images: timm-style deep stem of width `width / 2`, stage
    /// widths `width * 2^i`, torchvision shortcuts.
    pub fn resnet(name: &str, depth: usize, width: usize, num_classes: usize) -> Self {
        let mut r = ResNetConfig::torchvision(depth);
        r.base_channels = width;
        r.stem = Stem::Deep {
            width: (width / 2).max(1),
        };
        r.key_style = segkit_backbones::KeyStyle::Timm;
        Self::with_backbone(name, ClassifierBackbone::ResNet(r), num_classes)
    }

    /// HF `SwinForImageClassification` of the given Swin config.
    pub fn swin(name: &str, swin: SwinConfig, num_classes: usize) -> Self {
        Self::with_backbone(name, ClassifierBackbone::Swin(Box::new(swin)), num_classes)
    }

    fn with_backbone(name: &str, backbone: ClassifierBackbone, num_classes: usize) -> Self {
        Self {
            name: name.to_string(),
            backbone,
            num_classes,
            mean: imagenet_mean(),
            std: imagenet_std(),
            classes: Vec::new(),
        }
    }

    /// Checks the class count and normalisation.
    pub fn validate(&self) -> Result<()> {
        if self.num_classes == 0 {
            return Err(Error::InvalidConfig(format!(
                "classifier `{}`: num_classes must be at least 1",
                self.name
            )));
        }
        if self.std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return Err(Error::InvalidConfig(format!(
                "classifier `{}`: every std must be > 0, got {:?}",
                self.name, self.std
            )));
        }
        if !self.classes.is_empty() && self.classes.len() != self.num_classes {
            return Err(Error::InvalidConfig(format!(
                "classifier `{}`: {} class names for {} classes",
                self.name,
                self.classes.len(),
                self.num_classes
            )));
        }
        Ok(())
    }
}

/// Renames an HF `SwinForImageClassification` state dict's final norm (`swin.layernorm.*`)
/// to the backbone's name for it (`swin.hidden_states_norms.stage{n}.*`, `n` = `num_stages`);
/// every other key is kept.
pub fn hf_swin_classifier_keys(sd: StateDict, num_stages: usize) -> StateDict {
    let to = format!("swin.hidden_states_norms.stage{num_stages}.");
    sd.into_map()
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("swin.layernorm.") {
            Some(rest) => (format!("{to}{rest}"), v),
            None => (k, v),
        })
        .collect()
}

/// A backbone + global average pooling + fc classifier.
pub struct Classifier {
    cfg: ClassifierConfig,
    backbone: Box<dyn Backbone>,
    fc: Linear,
}

impl Classifier {
    /// Builds the classifier with its weights under `vb` (see the module docs for the keys).
    pub fn new(cfg: &ClassifierConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let (backbone, fc): (Box<dyn Backbone>, _) = match &cfg.backbone {
            ClassifierBackbone::ResNet(r) => (Box::new(ResNet::new(r, vb.clone())?), "fc"),
            ClassifierBackbone::Swin(s) => {
                let mut s = (**s).clone();
                let last = format!("stage{}", s.num_stages());
                s = s.with_out_features([last]);
                // SwinModel runs its encoder without `always_partition`: blocks on a map no
                // larger than the window (stage 4 at 224x224) are not shifted.
                s.always_partition = false;
                (Box::new(Swin::new(&s, vb.pp("swin"))?), "classifier")
            }
        };
        let channels = backbone
            .feature_specs()
            .last()
            .map(|s| s.channels)
            .ok_or_else(|| {
                Error::InvalidConfig(format!("classifier `{}`: no features", cfg.name))
            })?;
        let fc = candle_nn::linear(channels, cfg.num_classes, vb.pp(fc))?;
        Ok(Self {
            cfg: cfg.clone(),
            backbone,
            fc,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClassifierConfig {
        &self.cfg
    }

    /// Pooled features `N x C` of a normalised batch.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let feats = self.backbone.forward_features(x, train)?;
        let last = feats
            .last()
            .ok_or_else(|| Error::InvalidConfig("classifier backbone returned nothing".into()))?;
        Ok(last.mean(D::Minus1)?.mean(D::Minus1)?)
    }

    /// Logits `N x num_classes` of a normalised batch `N x 3 x H x W`; `train` selects batch
    /// statistics for BatchNorm (and dropout where the backbone has it).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.fc.forward(&self.features(x, train)?)?)
    }

    /// Normalises `N x 3 x H x W` pixels in 0-255 with the config's mean / std.
    pub fn normalize(&self, pixels: &Tensor) -> Result<Tensor> {
        let dev = pixels.device();
        let mean = Tensor::new(&self.cfg.mean, dev)?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&self.cfg.std, dev)?.reshape((1, 3, 1, 1))?;
        Ok(pixels.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }
}

/// Builds the classifier as a [`crate::Model`] (the `Classifier` arm of
/// [`crate::ModelConfig::build`]).
pub(crate) fn model(
    cfg: &ClassifierConfig,
    vb: VarBuilder<'_>,
) -> Result<model_impl::ClassifierModel> {
    let device = vb.device().clone();
    Ok(model_impl::ClassifierModel {
        inner: Classifier::new(cfg, vb)?,
        device,
    })
}
