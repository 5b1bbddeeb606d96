//! The segmentor's decode and auxiliary head choices (mmseg `model.decode_head`,
//! `model.auxiliary_head`).

use segkit_heads::{AsppHeadConfig, DaHeadConfig, EncHeadConfig, FcnHeadConfig, PspHeadConfig};
use serde::{Deserialize, Serialize};

/// A decode or auxiliary head (mmseg `model.decode_head` / `model.auxiliary_head`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum HeadConfig {
    /// FCN head (mmseg `FCNHead`; the auxiliary head of most configs).
    #[serde(rename = "FCNHead")]
    Fcn(FcnHeadConfig),
    /// PSPNet's pyramid pooling head (mmseg `PSPHead`).
    #[serde(rename = "PSPHead")]
    Psp(PspHeadConfig),
    /// DANet's dual attention head (mmseg `DAHead`).
    #[serde(rename = "DAHead")]
    Da(DaHeadConfig),
    /// DeepLabV3's ASPP head (mmseg `ASPPHead`).
    #[serde(rename = "ASPPHead")]
    Aspp(AsppHeadConfig),
    /// EncNet's context encoding head (mmseg `EncHead`).
    #[serde(rename = "EncHead")]
    Enc(EncHeadConfig),
}

impl HeadConfig {
    /// Number of classes the head predicts.
    pub fn num_classes(&self) -> usize {
        self.base().num_classes
    }

    /// `align_corners` of the head (mmseg uses the decode head's for the segmentor's resizes).
    pub fn align_corners(&self) -> bool {
        self.base().align_corners
    }

    /// The names of the head's outputs besides its main logits, in the order the head
    /// returns them (DANet: `pam`, `cam`; EncNet with `use_se_loss`: `se`).
    pub fn extra_output_names(&self) -> Vec<&'static str> {
        match self {
            HeadConfig::Da(_) => vec!["pam", "cam"],
            HeadConfig::Enc(c) if c.use_se_loss => vec!["se"],
            _ => vec![],
        }
    }

    /// The settings every head shares.
    pub fn base(&self) -> &segkit_heads::DecodeHeadConfig {
        match self {
            HeadConfig::Fcn(c) => &c.base,
            HeadConfig::Psp(c) => &c.base,
            HeadConfig::Da(c) => &c.base,
            HeadConfig::Aspp(c) => &c.base,
            HeadConfig::Enc(c) => &c.base,
        }
    }

    /// The settings every head shares, mutably (e.g. to change `num_classes`).
    pub fn base_mut(&mut self) -> &mut segkit_heads::DecodeHeadConfig {
        match self {
            HeadConfig::Fcn(c) => &mut c.base,
            HeadConfig::Psp(c) => &mut c.base,
            HeadConfig::Da(c) => &mut c.base,
            HeadConfig::Aspp(c) => &mut c.base,
            HeadConfig::Enc(c) => &mut c.base,
        }
    }
}
