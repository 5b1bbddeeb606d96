//! The segmentor's neck choice (mmseg `model.neck`).

use candle_nn::VarBuilder;
use segkit_core::{FeatureSpec, Neck};
use segkit_necks::{Fpn, FpnConfig, Jpu, JpuConfig};
use serde::{Deserialize, Serialize};

use crate::Result;

/// The neck (mmseg `model.neck`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum NeckConfig {
    /// FastFCN's Joint Pyramid Upsampling (mmseg `JPU`).
    #[serde(rename = "JPU")]
    Jpu(JpuConfig),
    /// A Feature Pyramid Network (mmseg / mmdet `FPN`, or torchvision's layout).
    #[serde(rename = "FPN")]
    Fpn(FpnConfig),
}

impl NeckConfig {
    /// Builds the neck on features described by `inputs`, with its weights under `vb`.
    pub fn build(&self, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Box<dyn Neck>> {
        Ok(match self {
            NeckConfig::Jpu(c) => Box::new(Jpu::new(c, inputs, vb)?),
            NeckConfig::Fpn(c) => Box::new(Fpn::new(c, inputs, vb)?),
        })
    }
}
