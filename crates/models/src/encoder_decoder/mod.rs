//! mmseg's `EncoderDecoder` (`mmseg/models/segmentors/encoder_decoder.py`): backbone ->
//! optional neck -> decode head, plus an optional auxiliary head that only training uses.
//!
//! Weights live under mmseg's state-dict prefixes `backbone.`, `neck.`, `decode_head.` and
//! `auxiliary_head.`, so mmseg checkpoints load without renames
//! ([`EncoderDecoder::from_checkpoint`]); loading is strict (every checkpoint key used, every
//! model key found) and a mismatch is an [`Error::Checkpoint`] naming the model, the key and,
//! for a wrong shape, both shapes.
//!
//! # Shapes
//! Input `N x 3 x H x W` (normalised, see [`crate::image::to_tensor`]). The decode head's
//! logits are `N x K x ceil(H / s) x ceil(W / s)` at its output stride `s` (8 for the `-d8`
//! models and for FastFCN's JPU); [`EncoderDecoder::encode_decode`] resizes them to `H x W`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_models::{EncoderDecoder, SegmentorConfig};
//! let cfg = SegmentorConfig::from_json(
//!     r#"{"name": "tiny", "backbone": {"type": "ResNet", "depth": 18},
//!         "decode_head": {"type": "FCNHead", "base": {"channels": 8, "num_classes": 3}}}"#,
//! )
//! .unwrap();
//! let model = EncoderDecoder::new(&cfg, candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap();
//! let x = Tensor::zeros((1, 3, 64, 96), DType::F32, &Device::Cpu).unwrap();
//! let out = model.forward_t(&x, false).unwrap();
//! assert_eq!(out.logits().dims(), &[1, 3, 2, 3]); // stride 32
//! assert_eq!(out.get("logits").unwrap().dims(), &[1, 3, 2, 3]);
//! assert_eq!(model.output_names(), ["logits"]);
//! assert_eq!(model.encode_decode(&x).unwrap().dims(), &[1, 3, 64, 96]);
//! ```

pub mod backbone;
pub mod config;
pub mod demo;
pub mod heads;
pub mod inference;
mod model_impl;
pub mod neck;
pub mod presets;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_core::checkpoint::{self, StateDict};
use segkit_core::{Backbone, DecodeHead, HeadOutput, Neck};

use crate::{Error, Result};
use config::{HeadRole, SegmentorConfig};

/// Every output of an [`EncoderDecoder`] forward pass, by name, at the heads' output strides:
/// each head's [`HeadOutput`] under its [`HeadRole`].
///
/// The segmentor's names ([`SegmentorOutput::named`], [`HeadRole::output_name`]): `logits`
/// (the decode head's prediction; DANet: the fused PAM + CAM logits), `aux_logits` (the
/// auxiliary head's), then the decode head's other outputs as `{name}_logits` (DANet's
/// `pam_logits`, `cam_logits`; EncNet's class-presence `se_logits`, `N x K`).
#[derive(Debug, Clone)]
pub struct SegmentorOutput {
    /// The decode head's outputs.
    pub decode: HeadOutput,
    /// The auxiliary head's outputs, when the model has one.
    pub auxiliary: Option<HeadOutput>,
    /// The segmentor's name of each output, in [`SegmentorOutput::named`]'s order, with the
    /// head and the head's name of the output.
    names: Vec<(String, HeadRole, String)>,
}

impl SegmentorOutput {
    /// Names the outputs of `decode` and `auxiliary`.
    pub fn new(decode: HeadOutput, auxiliary: Option<HeadOutput>) -> Self {
        let heads: Vec<(HeadRole, &HeadOutput)> = std::iter::once((HeadRole::Decode, &decode))
            .chain(auxiliary.iter().map(|a| (HeadRole::Auxiliary, a)))
            .collect();
        let mut names = Vec::new();
        // The heads' logits first, then their other outputs.
        for main in [true, false] {
            for (role, out) in &heads {
                for n in out.names() {
                    if (n == HeadOutput::LOGITS) == main {
                        names.push((role.output_name(n), *role, n.to_string()));
                    }
                }
            }
        }
        Self {
            decode,
            auxiliary,
            names,
        }
    }

    /// The decode head's logits `N x K x h x w`.
    pub fn logits(&self) -> &Tensor {
        &self.decode.logits
    }

    /// The auxiliary head's logits, when the model has one.
    pub fn aux_logits(&self) -> Option<&Tensor> {
        self.auxiliary.as_ref().map(|a| &a.logits)
    }

    /// The outputs of the head in `role`, if the model has it.
    pub fn head(&self, role: HeadRole) -> Option<&HeadOutput> {
        match role {
            HeadRole::Decode => Some(&self.decode),
            HeadRole::Auxiliary => self.auxiliary.as_ref(),
        }
    }

    /// The output with the segmentor's name `name` (`logits`, `aux_logits`, `pam_logits`, ...).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        let (_, role, n) = self.names.iter().find(|(s, _, _)| s == name)?;
        self.head(*role)?.get(n)
    }

    /// Every output by the segmentor's name: `logits`, `aux_logits` (with an auxiliary
    /// head), then the decode head's other outputs (`pam_logits`, `cam_logits`, `se_logits`)
    /// and the auxiliary head's (`aux_{name}_logits`), in that order.
    pub fn named(&self) -> Vec<(&str, &Tensor)> {
        self.names
            .iter()
            .filter_map(|(s, role, n)| Some((s.as_str(), self.head(*role)?.get(n)?)))
            .collect()
    }
}

/// mmseg's encoder-decoder segmentor.
pub struct EncoderDecoder {
    cfg: SegmentorConfig,
    device: Device,
    backbone: Box<dyn Backbone>,
    neck: Option<Box<dyn Neck>>,
    decode_head: Box<dyn DecodeHead>,
    auxiliary_head: Option<Box<dyn DecodeHead>>,
}

impl std::fmt::Debug for EncoderDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderDecoder")
            .field("name", &self.cfg.name)
            .field("num_classes", &self.num_classes())
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl EncoderDecoder {
    /// Builds the segmentor, loading weights from `vb` under mmseg's prefixes (`backbone`,
    /// `neck`, `decode_head`, `auxiliary_head`).
    pub fn new(cfg: &SegmentorConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let device = vb.device().clone();
        let backbone = cfg.backbone.build(vb.pp("backbone"))?;
        let mut specs = backbone.feature_specs();
        let neck = match &cfg.neck {
            None => None,
            Some(n) => Some(n.build(&specs, vb.pp("neck"))?),
        };
        if let Some(n) = &neck {
            specs = n.output_specs();
        }
        let decode_head = cfg.decode_head.build(&specs, vb.pp("decode_head"))?;
        let auxiliary_head = match &cfg.auxiliary_head {
            Some(c) => Some(c.build(&specs, vb.pp("auxiliary_head"))?),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            device,
            backbone,
            neck,
            decode_head,
            auxiliary_head,
        })
    }

    /// Builds the segmentor from a state dict with mmseg's keys, strictly (every key of `sd`
    /// used — BatchNorm's `num_batches_tracked` aside — and every weight found with its
    /// shape). Weights are converted to f32 on `device`.
    ///
    /// A mismatch is an [`Error::Checkpoint`] whose `source` names the key (and both shapes
    /// for a wrong shape, e.g. `decode_head.conv_seg.weight` for another class count).
    pub fn from_state_dict(cfg: &SegmentorConfig, sd: &StateDict, device: &Device) -> Result<Self> {
        Self::load(cfg, sd, device, Path::new("<state dict>"))
    }

    /// Reads an mmseg checkpoint (a model-zoo `.pth` with `{meta, state_dict, ..}`, a plain
    /// state dict, or a `.safetensors` written by `cargo xtask convert`) and builds the
    /// segmentor from it, strictly (see [`EncoderDecoder::from_state_dict`]).
    ///
    /// Every failure — unreadable file, missing key, wrong shape, unused keys — is an
    /// [`Error::Checkpoint`] naming the model (`cfg.name`) and the file.
    pub fn from_checkpoint(
        cfg: &SegmentorConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        let sd = StateDict::load(path).map_err(|e| Error::checkpoint(&cfg.name, path, e))?;
        Self::load(cfg, &sd, device, path)
    }

    fn load(cfg: &SegmentorConfig, sd: &StateDict, device: &Device, path: &Path) -> Result<Self> {
        cfg.validate()?;
        checkpoint::load_model(sd, DType::F32, device, |vb| Self::new(cfg, vb))
            .map_err(|e| e.in_checkpoint(&cfg.name, path))
    }

    /// The configuration.
    pub fn config(&self) -> &SegmentorConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.cfg.num_classes()
    }

    /// Output stride of the decode head's logits.
    pub fn output_stride(&self) -> usize {
        self.decode_head.output_stride()
    }

    /// The backbone (and neck) features the heads read (mmseg `extract_feat`).
    pub fn extract_feat(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let feats = self.backbone.forward_features(x, train)?;
        Ok(match &self.neck {
            Some(n) => n.forward_t(&feats, train)?,
            None => feats,
        })
    }

    /// The head in `role`, if the model has it.
    pub fn head(&self, role: HeadRole) -> Option<&dyn DecodeHead> {
        match role {
            HeadRole::Decode => Some(self.decode_head.as_ref()),
            HeadRole::Auxiliary => self.auxiliary_head.as_deref(),
        }
    }

    /// The names of the outputs [`EncoderDecoder::forward_t`] returns
    /// ([`SegmentorOutput::named`]), from the built heads; equal to
    /// [`SegmentorConfig::output_names`].
    pub fn output_names(&self) -> Vec<String> {
        let roles = [HeadRole::Decode, HeadRole::Auxiliary];
        let heads: Vec<(HeadRole, Vec<String>)> = roles
            .iter()
            .filter_map(|&r| Some((r, self.head(r)?.output_names())))
            .collect();
        let mut v = Vec::new();
        for main in [true, false] {
            for (role, names) in &heads {
                v.extend(
                    names
                        .iter()
                        .filter(|n| (n.as_str() == HeadOutput::LOGITS) == main)
                        .map(|n| role.output_name(n)),
                );
            }
        }
        v
    }

    /// Runs every head, the auxiliary one included, on `x` (`N x 3 x H x W`, normalised).
    /// `train` selects BatchNorm batch statistics and enables dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<SegmentorOutput> {
        let feats = self.extract_feat(x, train)?;
        let decode = self.decode_head.forward_t(&feats, train)?;
        let auxiliary = match &self.auxiliary_head {
            Some(h) => Some(h.forward_t(&feats, train)?),
            None => None,
        };
        Ok(SegmentorOutput::new(decode, auxiliary))
    }

    /// The decode head's logits at its output stride (the auxiliary head is not run).
    pub fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let feats = self.extract_feat(x, train)?;
        Ok(self.decode_head.forward_t(&feats, train)?.logits)
    }

    /// mmseg `encode_decode` in inference mode: the decode head's logits bilinearly resized
    /// to the input's `H x W` (`align_corners` of the decode head).
    pub fn encode_decode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let logits = self.logits(x, false)?;
        if logits.dims()[2..] == [h, w] {
            return Ok(logits);
        }
        Ok(segkit_core::ops::resize_bilinear(
            &logits,
            (h, w),
            self.cfg.align_corners(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every encoder-decoder preset's config names the outputs its built model returns.
    #[test]
    fn config_output_names_agree_with_the_built_heads() {
        let mut n = 0;
        for info in crate::presets() {
            let Ok(crate::ModelConfig::EncoderDecoder(cfg)) = crate::preset(&info.name) else {
                continue;
            };
            let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
            let model = EncoderDecoder::new(&cfg, vb).unwrap();
            assert_eq!(model.output_names(), cfg.output_names(), "{}", info.name);
            for role in [HeadRole::Decode, HeadRole::Auxiliary] {
                let head = cfg.head_losses().into_iter().find(|h| h.0 == role);
                if let (Some(built), Some((_, c, _))) = (model.head(role), head) {
                    assert_eq!(built.outputs(), c.outputs(), "{}", info.name);
                }
            }
            n += 1;
        }
        assert!(n >= 15, "only {n} encoder-decoder presets");
    }

    /// A forward pass returns exactly the outputs the config names, DANet's and EncNet's
    /// included.
    #[test]
    fn forward_returns_the_named_outputs() {
        let tiny = |head: &str| {
            SegmentorConfig::from_json(&format!(
                r#"{{"name": "tiny", "backbone": {{"type": "ResNet", "depth": 18,
                    "base_channels": 4, "stem": {{"type": "Deep", "width": 4}},
                    "key_style": "Mmseg", "strides": [1, 2, 1, 1], "dilations": [1, 1, 2, 4],
                    "contract_dilation": true}},
                    "decode_head": {head},
                    "auxiliary_head": {{"type": "FCNHead", "base": {{"channels": 4,
                        "num_classes": 3, "in_index": 2}}, "num_convs": 1,
                        "concat_input": false}}}}"#
            ))
            .unwrap()
        };
        let da = tiny(
            r#"{"type": "DAHead", "base": {"channels": 4, "num_classes": 3}, "pam_channels": 2}"#,
        );
        let enc = tiny(
            r#"{"type": "EncHead", "base": {"channels": 4, "num_classes": 3, "in_index": [1, 2, 3],
                "input_transform": "multiple_select"}, "num_codes": 4}"#,
        );
        let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        for (cfg, want) in [
            (da, vec!["logits", "aux_logits", "pam_logits", "cam_logits"]),
            (enc, vec!["logits", "aux_logits", "se_logits"]),
        ] {
            assert_eq!(cfg.output_names(), want);
            let m = EncoderDecoder::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap();
            let out = m.forward_t(&x, false).unwrap();
            let names: Vec<&str> = out.named().iter().map(|(n, _)| *n).collect();
            assert_eq!(names, want);
            for n in want {
                assert!(out.get(n).is_some(), "{n}");
            }
        }
    }
}
