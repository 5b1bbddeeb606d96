//! DANet head: "Dual Attention Network for Scene Segmentation" (Fu et al., 2019), as mmseg's
//! `DAHead` with `PAM` / `CAM` (`mmseg/models/decode_heads/da_head.py`, PAM on
//! `mmseg/models/utils/self_attention_block.py`); the official code is
//! `junfu1115/DANet` `encoding/nn/da_att.py` (same math).
//!
//! Two branches on the input `x`, each starting with a 3x3 ConvModule to `channels`
//! (`pam_in_conv`, `cam_in_conv`) and ending with another (`pam_out_conv`, `cam_out_conv`):
//! - position attention (`pam`): query and key 1x1 convs with bias to `pam_channels`
//!   (`pam.query_project`, `pam.key_project`), value 1x1 conv (`pam.value_project`);
//!   `A = softmax_keys(Q^T K)` (no scaling), `out = gamma * (V A^T) + x` with a learnt scalar
//!   `gamma` (0-d `pam.gamma.scale`, initialised to 0);
//! - channel attention (`cam`): `E = X X^T` over channels,
//!   `A = softmax(max_row(E) - E)`, `out = gamma * (A X) + x` (`cam.gamma.scale`).
//!
//! Each branch has its classifier (`pam_conv_seg`, `cam_conv_seg`) and the sum of the two
//! branch features goes through `conv_seg`; all three share one `Dropout2d`. Inference uses the
//! fused logits; training supervises all three (mmseg `DAHead.loss_by_feat`: one loss on each,
//! logged as `pam_cam.*`, `pam.*`, `cam.*`). Through [`DecodeHead`] the outputs are `logits`
//! (fused), `pam` and `cam`.
//!
//! # Shapes
//! Input map `N x C_in x H x W` -> three logits maps `N x num_classes x H x W`. The position
//! attention holds an `N x HW x HW` matrix.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::FeatureSpec;
//! use segkit_heads::{DaHead, DaHeadConfig};
//! let dev = Device::Cpu;
//! let specs = [FeatureSpec::new(256, 4), FeatureSpec::new(512, 8), FeatureSpec::new(1024, 8), FeatureSpec::new(2048, 8)];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let head = DaHead::new(&DaHeadConfig::danet_r50_d8(19), &specs, vb).unwrap();
//! let xs: Vec<Tensor> = specs
//!     .iter()
//!     .map(|s| Tensor::zeros((1, s.channels, 5, 7), DType::F32, &dev).unwrap())
//!     .collect();
//! let out = head.forward(&xs, false).unwrap();
//! assert_eq!(out.fused.dims(), &[1, 19, 5, 7]);
//! assert_eq!(out.pam.dims(), out.cam.dims());
//! // Every output by name, through the trait.
//! use segkit_core::DecodeHead;
//! assert_eq!(head.output_names(), ["logits", "pam", "cam"]);
//! let named = DecodeHead::forward_t(&head, &xs, false).unwrap();
//! assert_eq!(named.get("cam").unwrap().dims(), &[1, 19, 5, 7]);
//! ```

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;
use segkit_core::init;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct};
use segkit_core::ops::{self, Activation, Conv2dParams};
use segkit_core::{DecodeHead, FeatureSpec, HeadOutput, HeadOutputSpec, OutputKind};

use crate::decode_head::{
    single_input_transform, softmax_last_dim, ClsSeg, DecodeHeadConfig, HeadInputs, InIndex,
};
use crate::{Error, Result};

fn default_pam_channels() -> usize {
    64
}

/// Configuration of a [`DaHead`] (mmseg `DAHead`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaHeadConfig {
    /// The settings every decode head shares.
    pub base: DecodeHeadConfig,
    /// Channels of the position attention's query and key projections (the paper's C/8 =
    /// 64 for 512 channels). Default 64.
    #[serde(default = "default_pam_channels")]
    pub pam_channels: usize,
}

impl DaHeadConfig {
    /// mmseg `danet_r50-d8` (and r101): `in_index = 3` (C5, 2048 channels), channels 512,
    /// `pam_channels = 64`.
    pub fn danet_r50_d8(num_classes: usize) -> Self {
        Self {
            base: DecodeHeadConfig::mmseg(512, num_classes, InIndex::One(3))
                .designed_for(&[FeatureSpec::new(2048, 8)]),
            pam_channels: 64,
        }
    }
}

/// The names of [`DaHead`]'s outputs besides `logits` (the fused logits), in order.
pub const DA_HEAD_EXTRA_OUTPUTS: [&str; 2] = ["pam", "cam"];

/// The three logits maps of a [`DaHead`].
#[derive(Debug, Clone)]
pub struct DaHeadOutput {
    /// Logits from the sum of both branches (mmseg `pam_cam`; the prediction at inference).
    pub fused: Tensor,
    /// Logits of the position-attention branch (auxiliary loss in training).
    pub pam: Tensor,
    /// Logits of the channel-attention branch (auxiliary loss in training).
    pub cam: Tensor,
}

impl From<DaHeadOutput> for HeadOutput {
    /// `logits` = fused, then `pam` and `cam`.
    fn from(o: DaHeadOutput) -> Self {
        let [pam, cam] = DA_HEAD_EXTRA_OUTPUTS;
        HeadOutput::new(o.fused).with(pam, o.pam).with(cam, o.cam)
    }
}

/// Loads a `Scale` parameter: mmcv stores a 0-d tensor; old checkpoints a 1-element vector.
fn scale(vb: &VarBuilder<'_>) -> Result<Tensor> {
    let t = match vb.get((), "scale") {
        Ok(t) => t,
        Err(e) => vb.get(1, "scale").map_err(|_| e)?,
    };
    Ok(t.reshape((1, 1, 1, 1))?)
}

fn conv1x1(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    ops::conv2d(x, w, Some(b), Conv2dParams::default(), Activation::None)
}

/// Position attention module (mmseg `PAM`).
struct Pam {
    query: (Tensor, Tensor),
    key: (Tensor, Tensor),
    value: (Tensor, Tensor),
    gamma: Tensor,
}

impl Pam {
    fn new(channels: usize, pam_channels: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let proj = |name: &str, cout: usize| -> Result<(Tensor, Tensor)> {
            let v = vb.pp(name);
            // Plain `nn.Conv2d`s in mmseg's `SelfAttentionBlock`: PyTorch's default init.
            Ok((
                v.get_with_hints(
                    (cout, channels, 1, 1),
                    "weight",
                    init::torch_default_weight(),
                )?,
                v.get_with_hints(cout, "bias", init::torch_default_bias(channels))?,
            ))
        };
        Ok(Self {
            query: proj("query_project", pam_channels)?,
            key: proj("key_project", pam_channels)?,
            value: proj("value_project", channels)?,
            gamma: scale(&vb.pp("gamma"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let hw = h * w;
        let q = conv1x1(x, &self.query.0, &self.query.1)?;
        let k = conv1x1(x, &self.key.0, &self.key.1)?;
        let v = conv1x1(x, &self.value.0, &self.value.1)?;
        let cq = q.dim(1)?;
        // energy[n, i, j] = q_i . k_j, softmax over the keys j, out_i = sum_j attn[i, j] v_j:
        // one-head attention without scaling, as one op (segkit_core::ops::attention) that
        // never holds the hw x hw energy (64 MB per image at 512 x 512, os 8).
        let tokens = |t: &Tensor, ch: usize| -> Result<Tensor> {
            Ok(t.reshape((n, ch, hw))?.transpose(1, 2)?.contiguous()?)
        };
        let opts = segkit_core::ops::AttentionOptions {
            scale: Some(1.0),
            ..Default::default()
        };
        let out = segkit_core::ops::attention(
            &tokens(&q, cq)?,
            &tokens(&k, cq)?,
            &tokens(&v, c)?,
            1,
            opts,
        )?;
        let out = out.transpose(1, 2)?.reshape((n, c, h, w))?;
        Ok(out.broadcast_mul(&self.gamma)?.add(x)?)
    }
}

/// Channel attention module (mmseg `CAM`).
struct Cam {
    gamma: Tensor,
}

impl Cam {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let xf = x.reshape((n, c, h * w))?;
        let energy = xf.matmul(&xf.transpose(1, 2)?)?;
        let energy = energy.max_keepdim(D::Minus1)?.broadcast_sub(&energy)?;
        let attn = softmax_last_dim(&energy)?;
        let out = attn.matmul(&xf)?.reshape((n, c, h, w))?;
        Ok(out.broadcast_mul(&self.gamma)?.add(x)?)
    }
}

/// mmseg's DANet head.
pub struct DaHead {
    cfg: DaHeadConfig,
    inputs: HeadInputs,
    pam_in_conv: ConvNormAct,
    pam: Pam,
    pam_out_conv: ConvNormAct,
    pam_cls: ClsSeg,
    cam_in_conv: ConvNormAct,
    cam: Cam,
    cam_out_conv: ConvNormAct,
    cam_cls: ClsSeg,
    cls: ClsSeg,
}

impl DaHead {
    /// Builds the head for features with `inputs` specs, loading mmseg's keys from `vb`
    /// (`pam_in_conv`, `pam.*`, `pam_out_conv`, `pam_conv_seg`, the `cam_*` twins,
    /// `conv_seg`).
    pub fn new(cfg: &DaHeadConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        let transform = single_input_transform("DAHead", &cfg.base)?;
        let sel = HeadInputs::new("DAHead", &cfg.base, transform, inputs)?;
        if cfg.pam_channels == 0 {
            return Err(Error::InvalidConfig(
                "DAHead pam_channels must be positive".into(),
            ));
        }
        let b = &cfg.base;
        let (cin, ch) = (sel.channels(), b.channels);
        let cm = |cin: usize, name: &str| {
            let c = ConvModuleConfig::new(cin, ch, 3).norm(b.norm).act(b.act);
            ConvNormAct::new(&c, vb.pp(name))
        };
        // mmseg initialises `conv_seg` N(0, 0.01); the pam / cam classifiers keep PyTorch's
        // default.
        let cls = |name: &str| ClsSeg::new(ch, b.num_classes, b.dropout_ratio, vb.pp(name));
        let aux_cls =
            |name: &str| ClsSeg::new_torch_default(ch, b.num_classes, b.dropout_ratio, vb.pp(name));
        Ok(Self {
            cfg: cfg.clone(),
            inputs: sel,
            pam_in_conv: cm(cin, "pam_in_conv")?,
            pam: Pam::new(ch, cfg.pam_channels, vb.pp("pam"))?,
            pam_out_conv: cm(ch, "pam_out_conv")?,
            pam_cls: aux_cls("pam_conv_seg")?,
            cam_in_conv: cm(cin, "cam_in_conv")?,
            cam: Cam {
                gamma: scale(&vb.pp("cam").pp("gamma"))?,
            },
            cam_out_conv: cm(ch, "cam_out_conv")?,
            cam_cls: aux_cls("cam_conv_seg")?,
            cls: cls("conv_seg")?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DaHeadConfig {
        &self.cfg
    }

    /// Runs the head on one map per input spec and returns the fused, PAM and CAM logits.
    /// `train` enables dropout and BatchNorm batch statistics.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Result<DaHeadOutput> {
        let x = self.inputs.single(features)?;
        let pam_feat = self.pam_in_conv.forward_t(&x, train)?;
        let pam_feat = self.pam.forward(&pam_feat)?;
        let pam_feat = self.pam_out_conv.forward_t(&pam_feat, train)?;
        let pam = self.pam_cls.forward_t(&pam_feat, train)?;
        let cam_feat = self.cam_in_conv.forward_t(&x, train)?;
        let cam_feat = self.cam.forward(&cam_feat)?;
        let cam_feat = self.cam_out_conv.forward_t(&cam_feat, train)?;
        let cam = self.cam_cls.forward_t(&cam_feat, train)?;
        let fused = self.cls.forward_t(&(pam_feat + cam_feat)?, train)?;
        Ok(DaHeadOutput { fused, pam, cam })
    }
}

impl DecodeHead for DaHead {
    fn num_classes(&self) -> usize {
        self.cfg.base.num_classes
    }

    fn output_stride(&self) -> usize {
        self.inputs.first_stride()
    }

    fn align_corners(&self) -> bool {
        self.cfg.base.align_corners
    }

    /// `logits` (fused, what mmseg's `predict` uses), then the branches' `pam` and `cam`.
    fn outputs(&self) -> Vec<HeadOutputSpec> {
        let mut v = vec![HeadOutputSpec::logits()];
        v.extend(
            DA_HEAD_EXTRA_OUTPUTS
                .iter()
                .map(|n| HeadOutputSpec::new(*n, OutputKind::PixelLogits)),
        );
        v
    }

    fn forward_t(&self, features: &[Tensor], train: bool) -> segkit_core::Result<HeadOutput> {
        Ok(self.forward(features, train)?.into())
    }
}

/// The configuration and the selected inputs (the weights are not printed).
impl std::fmt::Debug for DaHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaHead")
            .field("config", &self.cfg)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}
