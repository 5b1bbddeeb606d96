//! The segmentor's decode and auxiliary head choices (mmseg `model.decode_head`,
//! `model.auxiliary_head`), the names of their outputs in the segmentor, and the default
//! losses of each head type (mmseg's `loss_decode` / `loss_se_decode` in its configs).
//!
//! [`HeadConfig::build`] is the one place a config becomes a head: everything downstream
//! holds a `Box<dyn DecodeHead>` and reads its outputs by name.

use candle_nn::VarBuilder;
use segkit_core::{DecodeHead, FeatureSpec, HeadOutput, HeadOutputSpec, OutputKind};
use segkit_heads::{
    AsppHead, AsppHeadConfig, DaHead, DaHeadConfig, EncHead, EncHeadConfig, FcnHead, FcnHeadConfig,
    PspHead, PspHeadConfig, DA_HEAD_EXTRA_OUTPUTS, ENC_HEAD_SE_OUTPUT,
};
use segkit_losses::{LossConfig, OutputLosses};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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
    /// Builds the head on features described by `inputs`, with its weights under `vb`.
    pub fn build(&self, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Box<dyn DecodeHead>> {
        Ok(match self {
            HeadConfig::Fcn(c) => Box::new(FcnHead::new(c, inputs, vb)?),
            HeadConfig::Psp(c) => Box::new(PspHead::new(c, inputs, vb)?),
            HeadConfig::Da(c) => Box::new(DaHead::new(c, inputs, vb)?),
            HeadConfig::Aspp(c) => Box::new(AsppHead::new(c, inputs, vb)?),
            HeadConfig::Enc(c) => Box::new(EncHead::new(c, inputs, vb)?),
        })
    }

    /// Number of classes the head predicts.
    pub fn num_classes(&self) -> usize {
        self.base().num_classes
    }

    /// `align_corners` of the head (mmseg uses the decode head's for the segmentor's resizes).
    pub fn align_corners(&self) -> bool {
        self.base().align_corners
    }

    /// Name and kind of the outputs the built head returns ([`DecodeHead::outputs`]),
    /// `logits` first: DANet adds `pam`, `cam`; EncNet with `use_se_loss` adds `se`.
    pub fn outputs(&self) -> Vec<HeadOutputSpec> {
        let mut v = vec![HeadOutputSpec::logits()];
        match self {
            HeadConfig::Da(_) => v.extend(
                DA_HEAD_EXTRA_OUTPUTS
                    .iter()
                    .map(|n| HeadOutputSpec::new(*n, OutputKind::PixelLogits)),
            ),
            HeadConfig::Enc(c) if c.use_se_loss => v.push(HeadOutputSpec::new(
                ENC_HEAD_SE_OUTPUT,
                OutputKind::ClassPresence,
            )),
            _ => {}
        }
        v
    }

    /// The names of [`HeadConfig::outputs`].
    pub fn output_names(&self) -> Vec<String> {
        self.outputs().into_iter().map(|o| o.name).collect()
    }

    /// mmseg's losses for this head type as a decode head, per output:
    /// - `DAHead`: `CrossEntropyLoss` (weight 1.0) on each of `logits`, `pam`, `cam`, logged as
    ///   `pam_cam.loss_ce`, `pam.loss_ce`, `cam.loss_ce` (`DAHead.loss_by_feat`);
    /// - `EncHead`: `CrossEntropyLoss` 1.0 on `logits` (`loss_ce`) and, with `use_se_loss`, a
    ///   sigmoid `CrossEntropyLoss` 0.2 on `se` (`loss_se`);
    /// - `FCNHead`, `PSPHead`, `ASPPHead`: `CrossEntropyLoss` 1.0 on `logits` (`loss_ce`).
    pub fn mmseg_losses(&self) -> Vec<OutputLosses> {
        let ce = || vec![LossConfig::cross_entropy(1.0)];
        match self {
            HeadConfig::Da(_) => {
                let [pam, cam] = DA_HEAD_EXTRA_OUTPUTS;
                vec![
                    OutputLosses::new(HeadOutput::LOGITS, ce()).prefixed("pam_cam"),
                    OutputLosses::new(pam, ce()).prefixed(pam),
                    OutputLosses::new(cam, ce()).prefixed(cam),
                ]
            }
            HeadConfig::Enc(c) if c.use_se_loss => vec![
                OutputLosses::new(HeadOutput::LOGITS, ce()),
                OutputLosses::new(
                    ENC_HEAD_SE_OUTPUT,
                    vec![LossConfig::sigmoid_cross_entropy(0.2, "loss_se")],
                ),
            ],
            _ => vec![OutputLosses::new(HeadOutput::LOGITS, ce())],
        }
    }

    /// Checks `losses` against the head: every scored output exists, and every loss fits its
    /// output (class weights per class, a sigmoid for class presence).
    pub fn validate_losses(&self, what: &str, losses: &[OutputLosses]) -> Result<()> {
        let outputs = self.outputs();
        for l in losses {
            let spec = outputs.iter().find(|o| o.name == l.output).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "{what}: no output `{}` to score; the head's outputs are {}",
                    l.output,
                    self.output_names().join(", ")
                ))
            })?;
            for loss in &l.losses {
                loss.validate(self.num_classes(), spec.kind).map_err(|e| {
                    Error::InvalidConfig(format!("{what}, output `{}`: {e}", l.output))
                })?;
            }
        }
        Ok(())
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

/// Which of the segmentor's heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadRole {
    /// The decode head (the prediction).
    Decode,
    /// The auxiliary head (training only).
    Auxiliary,
}

impl HeadRole {
    /// The prefix of the head's loss names (mmseg's `add_prefix`: `decode`, `aux`).
    pub fn loss_prefix(self) -> &'static str {
        match self {
            HeadRole::Decode => "decode",
            HeadRole::Auxiliary => "aux",
        }
    }

    /// The segmentor's name of the head's output `output`
    /// ([`crate::SegmentorOutput::named`]): the decode head's `logits` is `logits`, its other
    /// outputs `{output}_logits` (`pam_logits`, `se_logits`); the auxiliary head's `logits`
    /// is `aux_logits`, its others `aux_{output}_logits`.
    pub fn output_name(self, output: &str) -> String {
        match (self, output == HeadOutput::LOGITS) {
            (HeadRole::Decode, true) => "logits".into(),
            (HeadRole::Decode, false) => format!("{output}_logits"),
            (HeadRole::Auxiliary, true) => "aux_logits".into(),
            (HeadRole::Auxiliary, false) => format!("aux_{output}_logits"),
        }
    }
}

/// The loss weight of mmseg's auxiliary FCN heads (`loss_weight=0.4` in every config of
/// segkit's presets).
pub const MMSEG_AUX_LOSS_WEIGHT: f64 = 0.4;

/// Losses per head and named output (mmseg's `loss_decode` of each head, plus EncNet's
/// `loss_se_decode`). A head whose list is unset takes mmseg's defaults for its type
/// ([`HeadConfig::mmseg_losses`]; the auxiliary head's weights times
/// [`MMSEG_AUX_LOSS_WEIGHT`]).
///
/// ```
/// use segkit_models::encoder_decoder::heads::SegmentorLosses;
/// let l: SegmentorLosses = serde_json::from_str(r#"{"auxiliary_head": [
///     {"output": "logits", "losses": [{"type": "CrossEntropyLoss", "loss_weight": 0.2}]}]}"#)
/// .unwrap();
/// assert!(l.decode_head.is_none());
/// assert_eq!(l.auxiliary_head.unwrap()[0].losses[0].loss_weight(), 0.2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentorLosses {
    /// The decode head's losses per output. Default: mmseg's for the head type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_head: Option<Vec<OutputLosses>>,
    /// The auxiliary head's losses per output. Default: mmseg's for the head type with
    /// weight 0.4 (mmseg's auxiliary FCN heads: `CrossEntropyLoss`, `loss_weight=0.4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auxiliary_head: Option<Vec<OutputLosses>>,
}

impl SegmentorLosses {
    /// Both lists unset (mmseg's defaults).
    pub fn is_default(&self) -> bool {
        self.decode_head.is_none() && self.auxiliary_head.is_none()
    }
}

/// mmseg's auxiliary-head losses for `head`: its type's defaults with every weight times
/// [`MMSEG_AUX_LOSS_WEIGHT`].
pub fn mmseg_auxiliary_losses(head: &HeadConfig) -> Vec<OutputLosses> {
    let mut v = head.mmseg_losses();
    for o in &mut v {
        for l in &mut o.losses {
            let w = l.loss_weight() * MMSEG_AUX_LOSS_WEIGHT;
            l.set_loss_weight(w);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmentor_names() {
        assert_eq!(HeadRole::Decode.output_name("logits"), "logits");
        assert_eq!(HeadRole::Decode.output_name("pam"), "pam_logits");
        assert_eq!(HeadRole::Auxiliary.output_name("logits"), "aux_logits");
        assert_eq!(HeadRole::Auxiliary.output_name("se"), "aux_se_logits");
    }

    #[test]
    fn mmseg_default_losses() {
        let da = HeadConfig::Da(DaHeadConfig::danet_r50_d8(19));
        let keys: Vec<String> = da
            .mmseg_losses()
            .iter()
            .flat_map(|o| o.losses.iter().map(|l| o.loss_key(l)).collect::<Vec<_>>())
            .collect();
        assert_eq!(keys, ["pam_cam.loss_ce", "pam.loss_ce", "cam.loss_ce"]);
        let enc = HeadConfig::Enc(EncHeadConfig::encnet_r50_d8(19));
        let l = enc.mmseg_losses();
        assert_eq!(l[1].output, "se");
        assert_eq!(
            l[1].losses,
            [LossConfig::sigmoid_cross_entropy(0.2, "loss_se")]
        );
        let aux = mmseg_auxiliary_losses(&HeadConfig::Fcn(FcnHeadConfig::aux_r50_d8(19)));
        assert_eq!(aux[0].losses, [LossConfig::cross_entropy(0.4)]);
        for h in [da, enc] {
            h.validate_losses("decode_head", &h.mmseg_losses()).unwrap();
        }
    }

    #[test]
    fn bad_losses_name_the_outputs() {
        let fcn = HeadConfig::Fcn(FcnHeadConfig::fcn_r50_d8(19));
        let e = fcn
            .validate_losses(
                "decode_head",
                &[OutputLosses::new(
                    "pam",
                    vec![LossConfig::cross_entropy(1.0)],
                )],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("`pam`") && e.contains("logits"), "{e}");
        let enc = HeadConfig::Enc(EncHeadConfig::encnet_r50_d8(19));
        let e = enc
            .validate_losses(
                "decode_head",
                &[OutputLosses::new(
                    "se",
                    vec![LossConfig::cross_entropy(1.0)],
                )],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_sigmoid"), "{e}");
    }
}
