//! The caffe-style (MSRA) ResNet-50 / 101 / 152 of Detectron, as PANet's official code
//! (ShuLiu1993/PANet, Detectron.pytorch) builds it: "Deep Residual Learning for Image
//! Recognition" (He et al., 2016) in its original form.
//!
//! Matches `lib/modeling/ResNet.py` (`ResNet_convX_body` with `RESNETS.STRIDE_1X1 = True`,
//! `TRANS_FUNC = bottleneck_transformation`, `STEM_FUNC = basic_bn_stem`,
//! `SHORTCUT_FUNC = basic_bn_shortcut`) number for number:
//! - stem `res1`: 7x7 conv stride 2 (no bias) -> `AffineChannel2d` -> ReLU -> max-pool 3 / 2 / 1;
//! - stages `res2..res5` of bottlenecks whose stride sits on the first 1x1 conv, each conv
//!   followed by a frozen `AffineChannel2d` (`x * weight + bias`, no statistics, no epsilon);
//!   the first block of each stage has a 1x1 projection shortcut (`downsample.0` conv,
//!   `downsample.1` affine);
//! - `res5` optionally dilated (`RESNETS.RES5_DILATION = 2`: stride 1, dilation 2).
//!
//! Keys (relative to the backbone; PANet's checkpoint puts them under `Conv_Body.conv_body.`):
//! `res1.conv1.weight`, `res1.bn1.{weight,bias}`, `res{2..5}.{i}.conv{1,2,3}.weight`,
//! `res{2..5}.{i}.bn{1,2,3}.{weight,bias}`, `res{2..5}.0.downsample.{0.weight,1.weight,1.bias}`.
//!
//! The network expects Detectron's input: BGR in 0..255 minus [`PIXEL_MEANS_BGR`], no division
//! by a standard deviation ([`subtract_pixel_means`]).
//!
//! Inference folds each affine into the preceding convolution once (`w * a`, bias `b`). In
//! training the affines stay frozen (no gradient reaches them) and the stages up to
//! `freeze_at` (Detectron's `RESNETS.FREEZE_AT`, 2 = stem and `res2`) pass no gradient.
//!
//! # Shapes
//! Input `N x 3 x H x W`. Outputs C2..C5 (`res2..res5`) with 4, 8, 16, 32 x `base_channels`
//! channels (256 / 512 / 1024 / 2048 with Detectron's 64) at strides 4, 8, 16, 32 (`res5` at
//! 16 when dilated). Odd sizes follow PyTorch's rounding (`floor((H + 2p - k) / s) + 1` at
//! each strided layer).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_backbones::{CaffeResNet, CaffeResNetConfig};
//! use segkit_core::Backbone;
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let net = CaffeResNet::new(&CaffeResNetConfig::detectron(50), vb).unwrap();
//! let x = Tensor::zeros((1, 3, 65, 47), DType::F32, &Device::Cpu).unwrap();
//! let out = net.forward(&x, false).unwrap();
//! assert_eq!(out.c5.dims(), &[1, 2048, 3, 2]);
//! assert_eq!(net.feature_specs()[0].channels, 256);
//! ```

use std::sync::OnceLock;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::ops::{self, Activation, Conv2dParams};
use segkit_core::{Backbone, Error, FeatureSpec, Result};

use crate::resnet::ResNetOutput;

/// Detectron's pixel means (`cfg.PIXEL_MEANS`), BGR order, subtracted from 0..255 input.
pub const PIXEL_MEANS_BGR: [f32; 3] = [102.9801, 115.9465, 122.7717];

/// `x - PIXEL_MEANS_BGR` per channel for an `N x 3 x H x W` BGR batch in 0..255 (Detectron's
/// `prep_im_for_blob` without the resize).
pub fn subtract_pixel_means(x: &Tensor) -> Result<Tensor> {
    match x.dims() {
        [_, 3, _, _] => {}
        d => {
            return Err(Error::shape(
                "caffe ResNet input (N x 3 x H x W, BGR)",
                &[1, 3, 1, 1],
                d,
            ))
        }
    }
    let m = Tensor::new(&PIXEL_MEANS_BGR, x.device())?
        .to_dtype(x.dtype())?
        .reshape((1, 3, 1, 1))?;
    Ok(x.broadcast_sub(&m)?)
}

/// Configuration of a [`CaffeResNet`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaffeResNetConfig {
    /// Depth: 50 (blocks 3, 4, 6, 3), 101 (3, 4, 23, 3) or 152 (3, 8, 36, 3); 26 (2, 2, 2, 2)
    /// is a small variant, not in Detectron (segkit's demo model).
    pub depth: usize,
    /// Channels of the stem (`RESNETS.WIDTH_PER_GROUP`, 64): the stages' bottleneck widths
    /// are `base_channels << s` and their outputs four times that. Default 64 (Detectron's);
    /// smaller values give a narrower network (segkit's demo model: 16).
    #[serde(default = "default_base_channels")]
    pub base_channels: usize,
    /// Dilation of `res5` (`RESNETS.RES5_DILATION`): 1 (stride 2) or 2 (stride 1). Default 1.
    pub res5_dilation: usize,
    /// Stages whose parameters are frozen in training (`RESNETS.FREEZE_AT`): 0 = none, 2 = the
    /// stem and `res2` (Detectron's default), up to 5.
    pub freeze_at: usize,
}

fn default_base_channels() -> usize {
    64
}

impl CaffeResNetConfig {
    /// Detectron's defaults for `depth` (PANet's `e2e_panet_R-50-FPN_2x_mask`: depth 50, no
    /// dilation, `FREEZE_AT = 2`).
    pub fn detectron(depth: usize) -> Self {
        Self {
            depth,
            base_channels: 64,
            res5_dilation: 1,
            freeze_at: 2,
        }
    }

    /// Bottlenecks per stage (`res2..res5`) of the depth.
    pub fn blocks(&self) -> Result<[usize; 4]> {
        match self.depth {
            26 => Ok([2, 2, 2, 2]),
            50 => Ok([3, 4, 6, 3]),
            101 => Ok([3, 4, 23, 3]),
            152 => Ok([3, 8, 36, 3]),
            d => Err(Error::InvalidConfig(format!(
                "caffe ResNet depth must be 26, 50, 101 or 152, got {d}"
            ))),
        }
    }

    fn validate(&self) -> Result<()> {
        self.blocks()?;
        if self.base_channels == 0 {
            return Err(Error::InvalidConfig(
                "caffe ResNet base_channels must be positive, got 0".into(),
            ));
        }
        if !matches!(self.res5_dilation, 1 | 2) {
            return Err(Error::InvalidConfig(format!(
                "caffe ResNet res5_dilation must be 1 or 2, got {}",
                self.res5_dilation
            )));
        }
        if self.freeze_at > 5 || self.freeze_at == 1 {
            return Err(Error::InvalidConfig(format!(
                "caffe ResNet freeze_at must be 0, 2, 3, 4 or 5 (Detectron), got {}",
                self.freeze_at
            )));
        }
        Ok(())
    }

    /// C2..C5 channels and strides.
    pub fn feature_specs(&self) -> Vec<FeatureSpec> {
        let s5 = if self.res5_dilation == 1 { 32 } else { 16 };
        let c = 4 * self.base_channels;
        vec![
            FeatureSpec::new(c, 4),
            FeatureSpec::new(2 * c, 8),
            FeatureSpec::new(4 * c, 16),
            FeatureSpec::new(8 * c, s5),
        ]
    }
}

/// A convolution without bias followed by a frozen `AffineChannel2d` (`x * a + b`).
struct ConvAffine {
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    params: Conv2dParams,
    act: Activation,
    folded: OnceLock<Tensor>,
}

impl ConvAffine {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        params: Conv2dParams,
        act: Activation,
        conv_vb: VarBuilder<'_>,
        aff_vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Ok(Self {
            weight: conv_vb.get((cout, cin, k, k), "weight")?,
            scale: aff_vb.get(cout, "weight")?,
            shift: aff_vb.get(cout, "bias")?,
            params,
            act,
            folded: OnceLock::new(),
        })
    }

    /// `w * a` per output channel; the affine never receives a gradient (frozen).
    fn fold(&self) -> Result<Tensor> {
        let a = self
            .scale
            .detach()
            .reshape((self.scale.elem_count(), 1, 1, 1))?;
        Ok(self.weight.broadcast_mul(&a)?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shift = self.shift.detach();
        if self.weight.track_op() || self.weight.is_variable() {
            // Weights that training may change: fold on every call, differentiably.
            let w = self.fold()?;
            return ops::conv2d(x, &w, Some(&shift), self.params, self.act);
        }
        let w = match self.folded.get() {
            Some(w) => w,
            None => {
                let w = self.fold()?;
                self.folded.get_or_init(|| w)
            }
        };
        ops::conv2d(x, w, Some(&shift), self.params, self.act)
    }
}

struct Bottleneck {
    conv1: ConvAffine,
    conv2: ConvAffine,
    conv3: ConvAffine,
    downsample: Option<ConvAffine>,
}

impl Bottleneck {
    fn new(
        cin: usize,
        cout: usize,
        inner: usize,
        stride: usize,
        dil: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Self> {
        let p = |stride, padding, dilation| Conv2dParams {
            stride,
            padding,
            dilation,
            groups: 1,
        };
        let ca = |i: usize, ci, co, k, params, act| {
            ConvAffine::new(
                ci,
                co,
                k,
                params,
                act,
                vb.pp(format!("conv{i}")),
                vb.pp(format!("bn{i}")),
            )
        };
        let downsample = if stride != 1 || cin != cout {
            Some(ConvAffine::new(
                cin,
                cout,
                1,
                p(stride, 0, 1),
                Activation::None,
                vb.pp("downsample.0"),
                vb.pp("downsample.1"),
            )?)
        } else {
            None
        };
        Ok(Self {
            conv1: ca(1, cin, inner, 1, p(stride, 0, 1), Activation::Relu)?,
            conv2: ca(2, inner, inner, 3, p(1, dil, dil), Activation::Relu)?,
            conv3: ca(3, inner, cout, 1, p(1, 0, 1), Activation::None)?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self
            .conv3
            .forward(&self.conv2.forward(&self.conv1.forward(x)?)?)?;
        let r = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        // `y` is conv3's fresh output: the sum goes into its buffer.
        ops::add_act_in_place(y, &r, Activation::Relu)
    }
}

/// Detectron's caffe-style ResNet body (`res1..res5`), returning C2..C5.
pub struct CaffeResNet {
    cfg: CaffeResNetConfig,
    stem: ConvAffine,
    stages: Vec<Vec<Bottleneck>>,
}

impl CaffeResNet {
    /// Builds the network, loading every parameter from `vb` under the official key names
    /// (`res1.conv1.weight`, `res2.0.bn1.bias`, ...).
    pub fn new(cfg: &CaffeResNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        cfg.validate()?;
        let blocks = cfg.blocks()?;
        let stem_p = Conv2dParams {
            stride: 2,
            padding: 3,
            dilation: 1,
            groups: 1,
        };
        let base = cfg.base_channels;
        let stem = ConvAffine::new(
            3,
            base,
            7,
            stem_p,
            Activation::Relu,
            vb.pp("res1.conv1"),
            vb.pp("res1.bn1"),
        )?;
        let mut cin = base;
        let mut stages = Vec::with_capacity(4);
        for (si, &nb) in blocks.iter().enumerate() {
            let (cout, inner) = ((4 * base) << si, base << si);
            let (stride, dil) = match si {
                0 => (1, 1),
                3 if cfg.res5_dilation == 2 => (1, 2),
                _ => (2, 1),
            };
            let svb = vb.pp(format!("res{}", si + 2));
            let mut stage = Vec::with_capacity(nb);
            for bi in 0..nb {
                let s = if bi == 0 { stride } else { 1 };
                stage.push(Bottleneck::new(cin, cout, inner, s, dil, &svb.pp(bi))?);
                cin = cout;
            }
            stages.push(stage);
        }
        Ok(Self {
            cfg: cfg.clone(),
            stem,
            stages,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CaffeResNetConfig {
        &self.cfg
    }

    /// Runs the network on a mean-subtracted BGR batch ([`subtract_pixel_means`]). With
    /// `train`, the outputs of the frozen stages (`freeze_at`) are detached.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<ResNetOutput> {
        match x.dims() {
            [_, 3, h, w] if *h > 0 && *w > 0 => {}
            d => {
                return Err(Error::shape(
                    "caffe ResNet input (N x 3 x H x W)",
                    &[1, 3, 224, 224],
                    d,
                ))
            }
        }
        let mut y = self.stem.forward(x)?;
        y = ops::max_pool2d(&y, 3, 2, 1, false)?;
        if train && self.cfg.freeze_at >= 1 {
            y = y.detach();
        }
        let mut outs = Vec::with_capacity(4);
        for (si, stage) in self.stages.iter().enumerate() {
            for block in stage {
                y = block.forward(&y)?;
            }
            if train && si + 2 <= self.cfg.freeze_at {
                y = y.detach();
            }
            outs.push(y.clone());
        }
        let c5 = outs
            .pop()
            .ok_or_else(|| Error::InvalidConfig("no stages".into()))?;
        let c4 = outs
            .pop()
            .ok_or_else(|| Error::InvalidConfig("no stages".into()))?;
        let c3 = outs
            .pop()
            .ok_or_else(|| Error::InvalidConfig("no stages".into()))?;
        let c2 = outs
            .pop()
            .ok_or_else(|| Error::InvalidConfig("no stages".into()))?;
        Ok(ResNetOutput { c2, c3, c4, c5 })
    }
}

impl Backbone for CaffeResNet {
    fn feature_specs(&self) -> Vec<FeatureSpec> {
        self.cfg.feature_specs()
    }

    fn feature_names(&self) -> Vec<String> {
        ["c2", "c3", "c4", "c5"].map(String::from).to_vec()
    }

    fn forward_features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        Ok(self.forward(x, train)?.into_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    #[test]
    fn bad_configs_and_inputs_are_typed_errors() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let mut small = CaffeResNetConfig::detectron(26);
        small.base_channels = 8;
        let net = CaffeResNet::new(&small, vb.clone()).unwrap();
        let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x, false).unwrap().c5.dims(), &[1, 256, 2, 2]);
        assert_eq!(net.feature_specs()[0].channels, 32);
        small.base_channels = 0;
        assert!(CaffeResNet::new(&small, vb.clone()).is_err());
        let mut cfg = CaffeResNetConfig::detectron(34);
        assert!(matches!(
            CaffeResNet::new(&cfg, vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        cfg.depth = 50;
        cfg.res5_dilation = 4;
        assert!(matches!(
            CaffeResNet::new(&cfg, vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        let net = CaffeResNet::new(&CaffeResNetConfig::detectron(50), vb).unwrap();
        let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(net.forward(&x, false).is_err());
        assert!(subtract_pixel_means(&x).is_err());
        let x = Tensor::zeros((1, 3, 1, 1), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x, false).unwrap().c5.dims(), &[1, 2048, 1, 1]);
        let m = subtract_pixel_means(&x).unwrap().mean(D::Minus1).unwrap();
        assert_eq!(
            m.flatten_all().unwrap().to_vec1::<f32>().unwrap()[2],
            -122.7717
        );
    }
}
