//! [`ModelConfig`]: the one typed description of every model segkit builds, as a closed
//! `#[serde(tag = "type")]` enum. segkit's own `config.json` (written by `segkit train`, read by
//! `Segmenter::load` and `segkit dump`) is this enum serialised, so a model directory carries its
//! type; an unknown `"type"` fails at parse time and lists the valid ones.

use std::path::Path;

use segkit_backbones::{ResNetConfig, SwinConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, OneFormerConfig, Result, SegmentorConfig};

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
}

impl ModelConfig {
    /// The architecture's name, as the `"type"` tag writes it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ModelConfig::ResNet(_) => "ResNet",
            ModelConfig::Swin(_) => "Swin",
            ModelConfig::EncoderDecoder(_) => "EncoderDecoder",
            ModelConfig::OneFormer(_) => "OneFormer",
        }
    }

    /// The model's name where the config carries one (segmentors, OneFormer).
    pub fn name(&self) -> Option<&str> {
        match self {
            ModelConfig::EncoderDecoder(c) => Some(&c.name),
            ModelConfig::OneFormer(c) => Some(&c.name),
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
