//! EncNet head: "Context Encoding for Semantic Segmentation" (Zhang et al., 2018), as mmseg's
//! `EncHead` / `EncModule` (`mmseg/models/decode_heads/enc_head.py`) with the `Encoding` layer
//! of `mmseg/models/utils/encoding.py`.
//!
//! The head selects several maps (`in_index`, always mmseg's `multiple_select`). The last one
//! goes through a 3x3 ConvModule (`bottleneck`); with `add_lateral`, each other map goes
//! through a 1x1 ConvModule (`lateral_convs.{i}`), is resized bilinearly to the bottleneck's
//! size, and all are fused by a 3x3 ConvModule (`fusion`). The context encoding module
//! (`enc_module`) then:
//! - projects the features with a 1x1 ConvModule (`encoding_project`);
//! - encodes them against `K` learnt codewords `c_k` with smoothing factors `s_k`
//!   (`encoding.0.codewords`, `encoding.0.scale`): for pixel features `x_i`,
//!   `a_ik = softmax_k(s_k ||x_i - c_k||^2)`, `e_k = sum_i a_ik (x_i - c_k)`;
//! - applies BatchNorm1d over the `K` codes (`encoding.1`) and ReLU, and averages over the
//!   codes to the encoded vector `e` (`N x C`);
//! - scales the features' channels by `gamma = sigmoid(fc(e))` (`fc.0`):
//!   `y = relu(x + x * gamma)`.
//!
//! `Dropout2d` and `conv_seg` classify `y`; with `use_se_loss`, `se_layer` (a linear layer)
//! maps `e` to per-image class-presence logits for the semantic encoding loss. Through
//! [`DecodeHead`] the outputs are `logits` and, with `use_se_loss`, `se`
//! ([`OutputKind::ClassPresence`]).
//!
//! In training the encoding layer's BatchNorm1d uses batch statistics and updates its running
//! statistics in place (PyTorch's momentum update), as the ConvModules' BatchNorms do.
//!
//! # Shapes
//! Selected maps `N x C_i x H_i x W_i` -> logits `N x num_classes x H x W` at the size of the
//! last selected map, and SE logits `N x num_classes`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::FeatureSpec;
//! use segkit_heads::{EncHead, EncHeadConfig};
//! let dev = Device::Cpu;
//! let specs = [FeatureSpec::new(512, 8), FeatureSpec::new(1024, 16), FeatureSpec::new(2048, 8)];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let head = EncHead::new(&EncHeadConfig::fastfcn_r50_d32_jpu_enc(19), &specs, vb).unwrap();
//! let xs = [
//!     Tensor::zeros((2, 512, 9, 11), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((2, 1024, 5, 6), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((2, 2048, 9, 11), DType::F32, &dev).unwrap(),
//! ];
//! let out = head.forward(&xs, false).unwrap();
//! assert_eq!(out.seg.dims(), &[2, 19, 9, 11]);
//! assert_eq!(out.se.unwrap().dims(), &[2, 19]);
//! use segkit_core::DecodeHead;
//! assert_eq!(head.output_names(), ["logits", "se"]);
//! ```

use candle_core::{Module, ModuleT, Tensor, D};
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops;
use segkit_core::{DecodeHead, FeatureSpec, HeadOutput, HeadOutputSpec, OutputKind};

use crate::decode_head::{
    softmax_last_dim, ClsSeg, DecodeHeadConfig, HeadInputs, InIndex, InputTransform,
};
use crate::{Error, Result};

fn default_num_codes() -> usize {
    32
}
fn default_true() -> bool {
    true
}

/// Configuration of an [`EncHead`] (mmseg `EncHead`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncHeadConfig {
    /// The settings every decode head shares. `in_index` must be a list; `input_transform` is
    /// always `multiple_select` (leave it unset or set it to that).
    pub base: DecodeHeadConfig,
    /// Number of codewords `K` of the encoding layer. Default 32.
    #[serde(default = "default_num_codes")]
    pub num_codes: usize,
    /// Build the semantic encoding loss branch (`se_layer`) and return its logits. Default
    /// true.
    #[serde(default = "default_true")]
    pub use_se_loss: bool,
    /// Fuse the earlier selected maps through lateral 1x1 convs (the paper's EncNet uses
    /// features from stage 3 as well). Default false.
    #[serde(default)]
    pub add_lateral: bool,
}

impl EncHeadConfig {
    /// mmseg `encnet_r50-d8` (and r101): `in_index = (1, 2, 3)` (C3, C4, C5), channels 512,
    /// 32 codes, SE loss on, no laterals.
    pub fn encnet_r50_d8(num_classes: usize) -> Self {
        Self {
            base: DecodeHeadConfig {
                input_transform: Some(InputTransform::MultipleSelect),
                ..DecodeHeadConfig::mmseg(512, num_classes, InIndex::Many(vec![1, 2, 3]))
                    .designed_for(&[
                        FeatureSpec::new(512, 8),
                        FeatureSpec::new(1024, 8),
                        FeatureSpec::new(2048, 8),
                    ])
            },
            num_codes: 32,
            use_se_loss: true,
            add_lateral: false,
        }
    }

    /// mmseg `fastfcn_r50-d32_jpu_enc`: as EncNet on the JPU's outputs (`in_index = (0, 1,
    /// 2)`: C3, C4, fused).
    pub fn fastfcn_r50_d32_jpu_enc(num_classes: usize) -> Self {
        let mut c = Self::encnet_r50_d8(num_classes);
        c.base.in_index = InIndex::Many(vec![0, 1, 2]);
        // C3, C4 passed through by the JPU, and its fused map.
        c.base.designed_for = Some(vec![
            FeatureSpec::new(512, 8),
            FeatureSpec::new(1024, 16),
            FeatureSpec::new(2048, 8),
        ]);
        c
    }
}

/// mmseg's `Encoding` layer followed by its BatchNorm1d over the codes and ReLU.
struct Encoding {
    /// `K x C`.
    codewords: Tensor,
    /// `1 x 1 x K`.
    scale: Tensor,
    /// BatchNorm1d over the `K` codes (`encoding.1`).
    bn: candle_nn::BatchNorm,
}

impl Encoding {
    fn new(
        channels: usize,
        num_codes: usize,
        norm: Option<Norm>,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let (eps, momentum) =
            match norm {
                Some(Norm::BatchNorm { eps, momentum }) => (eps, momentum),
                None => (1e-5, 0.1),
                Some(Norm::GroupNorm { .. }) => return Err(Error::InvalidConfig(
                    "EncHead: the encoding layer's norm is BatchNorm1d; GroupNorm is not supported"
                        .into(),
                )),
            };
        let e = vb.pp("0");
        let bn = vb.pp("1");
        let k = num_codes;
        Ok(Self {
            codewords: e.get((k, channels), "codewords")?,
            scale: e.get(k, "scale")?.reshape((1, 1, k))?,
            bn: candle_nn::BatchNorm::new_with_momentum(
                k,
                bn.get(k, "running_mean")?,
                bn.get(k, "running_var")?,
                bn.get(k, "weight")?,
                bn.get(k, "bias")?,
                eps,
                momentum,
            )?,
        })
    }

    /// `N x C x H x W` -> `N x K x C` (after BatchNorm1d and ReLU).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (k, _) = self.codewords.dims2()?;
        let hw = h * w;
        // x: N x HW x C
        let xt = x.reshape((n, c, hw))?.transpose(1, 2)?.contiguous()?;
        // ||x_i - c_k||^2 = ||x_i||^2 - 2 x_i . c_k + ||c_k||^2
        let x2 = xt.sqr()?.sum_keepdim(D::Minus1)?; // N x HW x 1
        let xc = xt
            .reshape((n * hw, c))?
            .matmul(&self.codewords.t()?)?
            .reshape((n, hw, k))?;
        let c2 = self.codewords.sqr()?.sum(D::Minus1)?.reshape((1, 1, k))?;
        let dist = (xc * -2.0)?.broadcast_add(&x2)?.broadcast_add(&c2)?;
        let a = softmax_last_dim(&dist.broadcast_mul(&self.scale)?)?; // N x HW x K
                                                                      // e_k = sum_i a_ik x_i - (sum_i a_ik) c_k
        let at = a.transpose(1, 2)?.contiguous()?; // N x K x HW
        let ax = at.matmul(&xt)?; // N x K x C
        let asum = at.sum_keepdim(D::Minus1)?; // N x K x 1
        let e = ax.sub(&asum.broadcast_mul(&self.codewords.unsqueeze(0)?)?)?;
        // BatchNorm1d over the K codes of an N x K x C tensor.
        Ok(self.bn.forward_t(&e, train)?.relu()?)
    }
}

/// mmseg's `EncModule`.
struct EncModule {
    project: ConvNormAct,
    encoding: Encoding,
    fc: candle_nn::Linear,
}

impl EncModule {
    /// Returns the encoded vector (`N x C`) and the rescaled features.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let p = self.project.forward_t(x, train)?;
        let e = self.encoding.forward_t(&p, train)?.mean(1)?; // N x C
        let (n, c, _, _) = x.dims4()?;
        let gamma = candle_nn::ops::sigmoid(&self.fc.forward(&e)?)?.reshape((n, c, 1, 1))?;
        let y = x.add(&x.broadcast_mul(&gamma)?)?.relu()?;
        Ok((e, y))
    }
}

/// The outputs of an [`EncHead`].
#[derive(Debug, Clone)]
pub struct EncHeadOutput {
    /// Segmentation logits `N x num_classes x H x W`.
    pub seg: Tensor,
    /// Semantic-encoding logits `N x num_classes` (class presence per image; trained with a
    /// sigmoid BCE, weight 0.2 in mmseg); `None` without `use_se_loss`.
    pub se: Option<Tensor>,
}

/// The name of [`EncHead`]'s semantic-encoding output (with `use_se_loss`).
pub const ENC_HEAD_SE_OUTPUT: &str = "se";

impl From<EncHeadOutput> for HeadOutput {
    /// `logits` = the segmentation logits, then `se` when present.
    fn from(o: EncHeadOutput) -> Self {
        let out = HeadOutput::new(o.seg);
        match o.se {
            Some(se) => out.with(ENC_HEAD_SE_OUTPUT, se),
            None => out,
        }
    }
}

/// mmseg's EncNet head.
pub struct EncHead {
    cfg: EncHeadConfig,
    inputs: HeadInputs,
    bottleneck: ConvNormAct,
    laterals: Vec<ConvNormAct>,
    fusion: Option<ConvNormAct>,
    enc: EncModule,
    se_layer: Option<candle_nn::Linear>,
    cls: ClsSeg,
}

impl EncHead {
    /// Builds the head for features with `inputs` specs, loading mmseg's keys from `vb`
    /// (`bottleneck`, `lateral_convs.*`, `fusion`, `enc_module.*`, `se_layer`, `conv_seg`).
    pub fn new(cfg: &EncHeadConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        if cfg.base.input_transform == Some(InputTransform::ResizeConcat) {
            return Err(Error::InvalidConfig(
                "EncHead always uses input_transform multiple_select".into(),
            ));
        }
        if cfg.num_codes == 0 {
            return Err(Error::InvalidConfig(
                "EncHead num_codes must be positive".into(),
            ));
        }
        let sel = HeadInputs::new(
            "EncHead",
            &cfg.base,
            Some(InputTransform::MultipleSelect),
            inputs,
        )?;
        let b = &cfg.base;
        let ch = b.channels;
        let specs = sel.selected();
        let (last, rest) = specs
            .split_last()
            .ok_or_else(|| Error::InvalidConfig("EncHead needs at least one input".into()))?;
        let cm = |cin: usize, k: usize| ConvModuleConfig::new(cin, ch, k).norm(b.norm).act(b.act);
        let bottleneck = ConvNormAct::new(&cm(last.channels, 3), vb.pp("bottleneck"))?;
        let (laterals, fusion) = if cfg.add_lateral {
            let mut l = Vec::with_capacity(rest.len());
            for (i, s) in rest.iter().enumerate() {
                l.push(ConvNormAct::new(
                    &cm(s.channels, 1),
                    vb.pp("lateral_convs").pp(i),
                )?);
            }
            let f = ConvNormAct::new(&cm(specs.len() * ch, 3), vb.pp("fusion"))?;
            (l, Some(f))
        } else {
            (Vec::new(), None)
        };
        let evb = vb.pp("enc_module");
        let enc = EncModule {
            project: ConvNormAct::new(&cm(ch, 1), evb.pp("encoding_project"))?,
            encoding: Encoding::new(ch, cfg.num_codes, b.norm, evb.pp("encoding"))?,
            fc: candle_nn::linear(ch, ch, evb.pp("fc").pp(0))?,
        };
        let se_layer = if cfg.use_se_loss {
            Some(candle_nn::linear(ch, b.num_classes, vb.pp("se_layer"))?)
        } else {
            None
        };
        let cls = ClsSeg::new(ch, b.num_classes, b.dropout_ratio, vb.pp("conv_seg"))?;
        Ok(Self {
            cfg: cfg.clone(),
            inputs: sel,
            bottleneck,
            laterals,
            fusion,
            enc,
            se_layer,
            cls,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EncHeadConfig {
        &self.cfg
    }

    /// Runs the head on one map per input spec; returns the segmentation logits and, with
    /// `use_se_loss`, the SE logits. `train` enables dropout and batch statistics.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Result<EncHeadOutput> {
        let xs = self.inputs.select(features)?;
        let (last, rest) = xs
            .split_last()
            .ok_or_else(|| Error::InvalidConfig("EncHead needs at least one input".into()))?;
        let mut feat = self.bottleneck.forward_t(last, train)?;
        if let Some(fusion) = &self.fusion {
            let (_, _, h, w) = feat.dims4()?;
            let mut cat = Vec::with_capacity(xs.len());
            cat.push(feat);
            for (conv, x) in self.laterals.iter().zip(rest) {
                let l = conv.forward_t(x, train)?;
                cat.push(ops::resize_bilinear(
                    &l,
                    (h, w),
                    self.cfg.base.align_corners,
                )?);
            }
            feat = fusion.forward_t(&Tensor::cat(&cat, 1)?, train)?;
        }
        let (e, y) = self.enc.forward_t(&feat, train)?;
        let seg = self.cls.forward_t(&y, train)?;
        let se = match &self.se_layer {
            Some(l) => Some(l.forward(&e)?),
            None => None,
        };
        Ok(EncHeadOutput { seg, se })
    }
}

impl DecodeHead for EncHead {
    fn num_classes(&self) -> usize {
        self.cfg.base.num_classes
    }

    /// The stride of the last selected map (the bottleneck's input).
    fn output_stride(&self) -> usize {
        self.inputs.selected().last().map_or(1, |s| s.stride)
    }

    fn align_corners(&self) -> bool {
        self.cfg.base.align_corners
    }

    /// `logits` (what mmseg's `predict` uses) and, with `use_se_loss`, the class-presence
    /// logits `se`.
    fn outputs(&self) -> Vec<HeadOutputSpec> {
        let mut v = vec![HeadOutputSpec::logits()];
        if self.cfg.use_se_loss {
            v.push(HeadOutputSpec::new(
                ENC_HEAD_SE_OUTPUT,
                OutputKind::ClassPresence,
            ));
        }
        v
    }

    fn forward_t(&self, features: &[Tensor], train: bool) -> segkit_core::Result<HeadOutput> {
        Ok(self.forward(features, train)?.into())
    }
}

/// The configuration and the selected inputs (the weights are not printed).
impl std::fmt::Debug for EncHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncHead")
            .field("config", &self.cfg)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}
