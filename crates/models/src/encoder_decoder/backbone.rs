//! The segmentor's backbone choice (mmseg `model.backbone`): a closed, tagged enum of every
//! backbone the workspace has, each reporting the `FeatureSpec`s its outputs have, so that
//! the neck and the heads take their input channels from the backbone, never from the config.
//!
//! ```
//! use segkit_models::BackboneConfig;
//! // mmseg's `configs/_base_/models/upernet_swin.py` backbone, as JSON.
//! let cfg: BackboneConfig = serde_json::from_str(
//!     r#"{"type": "SwinTransformer", "embed_dims": 96, "depths": [2, 2, 6, 2],
//!         "num_heads": [3, 6, 12, 24], "window_size": 7, "out_indices": [0, 1, 2, 3],
//!         "drop_path_rate": 0.3, "patch_norm": true}"#,
//! )
//! .unwrap();
//! let specs = cfg.feature_specs().unwrap();
//! let channels: Vec<usize> = specs.iter().map(|s| s.channels).collect();
//! assert_eq!(channels, [96, 192, 384, 768]);
//! assert_eq!(specs[3].stride, 32);
//! assert_eq!(cfg, BackboneConfig::Swin(segkit_backbones::SwinConfig::mmseg_tiny()));
//! ```

use candle_nn::VarBuilder;
use segkit_backbones::{ResNet, ResNetConfig, Swin, SwinConfig};
use segkit_core::{Backbone, FeatureSpec};
use serde::{Deserialize, Deserializer, Serialize};

use crate::Result;

/// The backbone (mmseg `model.backbone`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum BackboneConfig {
    /// A ResNet in any of segkit-backbones' layouts (mmseg `ResNetV1c` / `ResNetV1d` with
    /// `key_style: "Mmseg"`). It returns C2..C5, as mmseg's `out_indices = (0, 1, 2, 3)`;
    /// configs that use fewer stages select them in the neck (`JPU.start_level`) or the
    /// heads (`in_index`).
    ResNet(ResNetConfig),
    /// A Swin Transformer (mmseg `SwinTransformer`; [`SwinConfig`], which also reads mmseg's
    /// argument names). Here `key_style` defaults to `"Mmseg"` (mmseg's checkpoint keys under
    /// `backbone.`, and `out_indices` counted from stage 0 as mmseg counts them, default every
    /// stage), so an mmseg backbone dict reads as written; `"key_style": "Hf"` takes HF
    /// `SwinBackbone` weights instead.
    #[serde(rename = "SwinTransformer", deserialize_with = "mmseg_swin")]
    Swin(SwinConfig),
}

/// Reads a [`SwinConfig`] whose `key_style`, when absent, is mmseg's.
fn mmseg_swin<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<SwinConfig, D::Error> {
    let mut v = serde_json::Value::deserialize(d)?;
    if let Some(m) = v.as_object_mut() {
        m.entry("key_style")
            .or_insert_with(|| serde_json::Value::from("Mmseg"));
    }
    SwinConfig::deserialize(v).map_err(serde::de::Error::custom)
}

impl BackboneConfig {
    /// Builds the backbone with its weights under `vb` (mmseg's `backbone.` prefix is the
    /// caller's).
    pub fn build(&self, vb: VarBuilder<'_>) -> Result<Box<dyn Backbone>> {
        Ok(match self {
            BackboneConfig::ResNet(c) => Box::new(ResNet::new(c, vb)?),
            BackboneConfig::Swin(c) => Box::new(Swin::new(c, vb)?),
        })
    }

    /// The specs of the backbone's outputs, without building it.
    pub fn feature_specs(&self) -> Result<Vec<FeatureSpec>> {
        Ok(match self {
            BackboneConfig::ResNet(c) => c.feature_specs()?,
            BackboneConfig::Swin(c) => c.feature_specs()?,
        })
    }
}
