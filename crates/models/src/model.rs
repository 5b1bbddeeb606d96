//! [`ModelConfig`]: the one typed description of every model segkit builds, as a closed
//! `#[serde(tag = "type")]` enum. segkit's own `config.json` (written by `segkit train`, read by
//! `Segmenter::load` and `segkit dump`) is this enum serialised, so a model directory carries its
//! type; an unknown `"type"` fails at parse time and lists the valid ones.

use std::any::Any;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::DynamicImage;
use segkit_backbones::{ResNet, ResNetConfig, Swin, SwinConfig};
use segkit_core::checkpoint::{self, StateDict};
use segkit_core::Backbone;
use serde::{Deserialize, Serialize};

use crate::segment::{unsupported, Model, Segmentation, Task};
use crate::{
    EncoderDecoder, Error, OneFormer, OneFormerConfig, PredictOptions, Result, SegmentorConfig,
};

/// Every model segkit builds, by architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ModelConfig {
    /// A ResNet backbone on its own (features `c2`..`c5`; `segkit dump`).
    ResNet(ResNetConfig),
    /// A Swin backbone on its own (features of its `out_features` stages; `segkit dump`).
    Swin(Box<SwinConfig>),
    /// An mmseg-style encoder-decoder segmentor (DANet, PSPNet, FastFCN, ...;
    /// [`crate::EncoderDecoder`]).
    EncoderDecoder(Box<SegmentorConfig>),
    /// OneFormer ([`crate::OneFormer`]).
    OneFormer(Box<OneFormerConfig>),
    /// Gated-SCNN ([`crate::Gscnn`]).
    Gscnn(Box<crate::GscnnConfig>),
    /// An image classifier: backbone + global pooling + fc ([`crate::classifier::Classifier`]).
    Classifier(Box<crate::classifier::ClassifierConfig>),
    /// PANet instance segmentation ([`crate::Panet`]).
    Panet(Box<crate::PanetConfig>),
}

impl ModelConfig {
    /// The architecture's name, as the `"type"` tag writes it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ModelConfig::ResNet(_) => "ResNet",
            ModelConfig::Swin(_) => "Swin",
            ModelConfig::EncoderDecoder(_) => "EncoderDecoder",
            ModelConfig::OneFormer(_) => "OneFormer",
            ModelConfig::Gscnn(_) => "Gscnn",
            ModelConfig::Classifier(_) => "Classifier",
            ModelConfig::Panet(_) => "Panet",
        }
    }

    /// The model's name where the config carries one (segmentors, OneFormer).
    pub fn name(&self) -> Option<&str> {
        match self {
            ModelConfig::EncoderDecoder(c) => Some(&c.name),
            ModelConfig::OneFormer(c) => Some(&c.name),
            ModelConfig::Gscnn(c) => Some(&c.name),
            ModelConfig::Classifier(c) => Some(&c.name),
            ModelConfig::Panet(c) => Some(&c.name),
            _ => None,
        }
    }

    /// Parses a JSON config (`{"type": "EncoderDecoder", ...}`). A missing or unknown
    /// `"type"`, an unknown field or a wrong value is [`Error::InvalidConfig`] with serde's
    /// message (which lists the valid variants).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::InvalidConfig(e.to_string()))
    }

    /// Reads a JSON config file; a failure is [`Error::BadModel`] naming the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| Error::BadModel {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
    }

    /// The config as pretty JSON (with its `"type"`).
    pub fn to_json_pretty(&self) -> String {
        // Serialising plain data structs cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl ModelConfig {
    /// Builds the model with its weights under `vb` (paths equal the reference checkpoint's
    /// keys: mmseg's for encoder-decoders, HF's for OneFormer, the backbone's key style).
    pub fn build(&self, vb: VarBuilder<'_>) -> Result<Box<dyn Model>> {
        let dev = vb.device().clone();
        Ok(match self {
            ModelConfig::ResNet(c) => {
                Box::new(BackboneModel::new("ResNet", ResNet::new(c, vb)?, dev))
            }
            ModelConfig::Swin(c) => Box::new(BackboneModel::new("Swin", Swin::new(c, vb)?, dev)),
            ModelConfig::EncoderDecoder(c) => Box::new(EncoderDecoder::new(c, vb)?),
            ModelConfig::OneFormer(c) => Box::new(OneFormer::new(c, vb)?),
            ModelConfig::Gscnn(c) => Box::new(crate::Gscnn::new(c, vb)?),
            ModelConfig::Classifier(c) => Box::new(crate::classifier::model(c, vb)?),
            ModelConfig::Panet(c) => Box::new(crate::Panet::new(c, vb)?),
        })
    }

    /// Builds the model from a state dict, strictly (every key used — BatchNorm's
    /// `num_batches_tracked` aside — and every weight found with its shape), weights in f32
    /// on `device`. A mismatch is an [`Error::Checkpoint`] naming `name`, `path` and the key.
    pub fn from_state_dict(
        &self,
        name: &str,
        sd: &StateDict,
        path: &Path,
        device: &Device,
    ) -> Result<Box<dyn Model>> {
        checkpoint::load_model(sd, DType::F32, device, |vb| self.build(vb))
            .map_err(|e| e.in_checkpoint(name, path))
    }

    /// Reads a checkpoint (`.safetensors`, any PyTorch `.pth` layout segkit reads) and builds
    /// the model from it, strictly ([`ModelConfig::from_state_dict`]).
    pub fn load(&self, name: &str, path: &Path, device: &Device) -> Result<Box<dyn Model>> {
        let sd = StateDict::load(path).map_err(|e| Error::checkpoint(name, path, e))?;
        self.from_state_dict(name, &sd, path, device)
    }
}

/// A directory written by Hugging Face's `save_pretrained` (its `config.json` names the
/// `model_type`) as a model: `oneformer` is the one segkit reads.
///
/// Errors: [`Error::BadModel`] for another `model_type` or a config that does not parse;
/// checkpoint errors as [`OneFormer::from_hf_dir`].
pub fn load_hf_dir(dir: &Path, model_type: &str, device: &Device) -> Result<Box<dyn Model>> {
    let config = dir.join("config.json");
    match model_type {
        "oneformer" => Ok(Box::new(OneFormer::from_hf_dir(dir, device).map_err(
            |e| match e {
                Error::InvalidConfig(reason) => Error::BadModel {
                    path: config.clone(),
                    reason,
                },
                other => other,
            },
        )?)),
        t => Err(Error::BadModel {
            path: config,
            reason: format!(
                "Hugging Face model_type `{t}` is not supported (segkit loads `oneformer` \
                 directories, and segkit model configs with a `\"type\"`)"
            ),
        }),
    }
}

/// A backbone on its own as a [`Model`]: its features by name, no segmentation task.
struct BackboneModel {
    architecture: &'static str,
    backbone: Box<dyn Backbone>,
    device: Device,
}

impl BackboneModel {
    fn new<B: Backbone + 'static>(architecture: &'static str, backbone: B, device: Device) -> Self {
        Self {
            architecture,
            backbone: Box::new(backbone),
            device,
        }
    }
}

impl Model for BackboneModel {
    fn architecture(&self) -> &'static str {
        self.architecture
    }

    fn name(&self) -> &str {
        self.architecture
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn tasks(&self) -> &'static [Task] {
        &[]
    }

    fn classes(&self) -> Vec<String> {
        Vec::new()
    }

    fn forward_named(&self, x: &Tensor, _task: Option<Task>) -> Result<Vec<(String, Tensor)>> {
        let feats = self.backbone.forward_features(x, false)?;
        Ok(self
            .backbone
            .feature_names()
            .into_iter()
            .zip(feats)
            .collect())
    }

    fn segment(
        &self,
        _image: &DynamicImage,
        task: Task,
        _options: &PredictOptions,
    ) -> Result<Segmentation> {
        Err(unsupported(self, task))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl From<SegmentorConfig> for ModelConfig {
    fn from(c: SegmentorConfig) -> Self {
        ModelConfig::EncoderDecoder(Box::new(c))
    }
}

impl From<OneFormerConfig> for ModelConfig {
    fn from(c: OneFormerConfig) -> Self {
        ModelConfig::OneFormer(Box::new(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_lists_the_valid_ones() {
        let e = ModelConfig::from_json(r#"{"type": "Nope"}"#)
            .unwrap_err()
            .to_string();
        for v in ["ResNet", "Swin", "EncoderDecoder", "OneFormer"] {
            assert!(e.contains(v), "{e}");
        }
        let e = ModelConfig::from_json(r#"{"name": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("type"), "{e}");
    }

    #[test]
    fn every_preset_round_trips_through_json() {
        for p in crate::presets() {
            let cfg = crate::preset(&p.name).unwrap();
            let back = ModelConfig::from_json(&cfg.to_json_pretty()).unwrap();
            assert_eq!(back, cfg, "{}", p.name);
        }
    }
}
