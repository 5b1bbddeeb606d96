//! The segmentor's backbone choice (mmseg `model.backbone`): a closed, tagged enum of every
//! backbone the workspace has, each reporting the `FeatureSpec`s its outputs have.

use candle_nn::VarBuilder;
use segkit_backbones::{ResNet, ResNetConfig};
use segkit_core::{Backbone, FeatureSpec};
use serde::{Deserialize, Serialize};

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
}

impl BackboneConfig {
    /// Builds the backbone with its weights under `vb` (mmseg's `backbone.` prefix is the
    /// caller's).
    pub fn build(&self, vb: VarBuilder<'_>) -> Result<Box<dyn Backbone>> {
        Ok(match self {
            BackboneConfig::ResNet(c) => Box::new(ResNet::new(c, vb)?),
        })
    }

    /// The specs of the backbone's outputs, without building it.
    pub fn feature_specs(&self) -> Result<Vec<FeatureSpec>> {
        Ok(match self {
            BackboneConfig::ResNet(c) => c.feature_specs()?,
        })
    }
}
