//! FCN head: "Fully Convolutional Networks for Semantic Segmentation" (Long et al., 2015), as
//! mmseg's `FCNHead` (`mmseg/models/decode_heads/fcn_head.py`), which is also the auxiliary
//! head of most mmseg segmentors (DANet, PSPNet, DeepLabV3, EncNet, FastFCN).
//!
//! `num_convs` ConvModules (`convs.{i}.conv` / `.bn`, `k x k`, dilation `d`, padding
//! `(k / 2) * d`), then, with `concat_input`, a `k x k` ConvModule over the concatenation of the
//! head's input and the convs' output (`conv_cat`), then `Dropout2d` and the 1x1 classifier
//! `conv_seg`.
//!
//! # Shapes
//! Input map `N x C_in x H x W` (selected by `in_index`) -> logits `N x num_classes x H x W`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::{DecodeHead, FeatureSpec, HeadOutput, HeadOutputSpec};
//! use segkit_heads::{FcnHead, FcnHeadConfig};
//! let dev = Device::Cpu;
//! let specs = [FeatureSpec::new(64, 4), FeatureSpec::new(128, 8), FeatureSpec::new(1024, 8)];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let aux = FcnHead::new(&FcnHeadConfig::aux_r50_d8(19), &specs, vb).unwrap();
//! assert_eq!(aux.output_stride(), 8);
//! let xs = [
//!     Tensor::zeros((1, 64, 20, 20), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 128, 10, 10), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 1024, 10, 10), DType::F32, &dev).unwrap(),
//! ];
//! assert_eq!(aux.forward_t(&xs, false).unwrap().logits.dims(), &[1, 19, 10, 10]);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct};
use segkit_core::{DecodeHead, FeatureSpec, HeadOutput};

use crate::decode_head::{single_input_transform, ClsSeg, DecodeHeadConfig, HeadInputs, InIndex};
use crate::{Error, Result};

fn default_num_convs() -> usize {
    2
}
fn default_kernel() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_dilation() -> usize {
    1
}

/// Configuration of an [`FcnHead`] (mmseg `FCNHead`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcnHeadConfig {
    /// The settings every decode head shares.
    pub base: DecodeHeadConfig,
    /// Number of `k x k` ConvModules before the classifier (FCN's score layers). Default 2;
    /// 0 needs the input channels to equal `channels`.
    #[serde(default = "default_num_convs")]
    pub num_convs: usize,
    /// Kernel size of the convs. Default 3.
    #[serde(default = "default_kernel")]
    pub kernel_size: usize,
    /// Concatenate the head's input with the convs' output and fuse them with one more
    /// ConvModule (`conv_cat`) before classifying. Default true.
    #[serde(default = "default_true")]
    pub concat_input: bool,
    /// Dilation of the convs (not of `conv_cat`). Default 1.
    #[serde(default = "default_dilation")]
    pub dilation: usize,
}

impl FcnHeadConfig {
    /// mmseg `fcn_r50-d8` (and r101): `in_index = 3` (C5, 2048 channels), channels 512, two
    /// convs, `concat_input = true`.
    pub fn fcn_r50_d8(num_classes: usize) -> Self {
        Self {
            base: DecodeHeadConfig::mmseg(512, num_classes, InIndex::One(3))
                .designed_for(&[FeatureSpec::new(2048, 8)]),
            num_convs: 2,
            kernel_size: 3,
            concat_input: true,
            dilation: 1,
        }
    }

    /// The `auxiliary_head` of mmseg's `*_r50-d8` configs (DANet, PSPNet, DeepLabV3, EncNet,
    /// FCN): `in_index = 2` (C4, 1024 channels), channels 256, one conv, no `concat_input`.
    /// Its loss weight in training is 0.4.
    pub fn aux_r50_d8(num_classes: usize) -> Self {
        Self {
            base: DecodeHeadConfig::mmseg(256, num_classes, InIndex::One(2))
                .designed_for(&[FeatureSpec::new(1024, 8)]),
            num_convs: 1,
            concat_input: false,
            ..Self::fcn_r50_d8(num_classes)
        }
    }

    /// The `auxiliary_head` of mmseg's `fastfcn_r50-d32_jpu_*` configs: as
    /// [`FcnHeadConfig::aux_r50_d8`] but `in_index = 1` (C4 in the JPU's outputs C3, C4, fused).
    pub fn aux_fastfcn_r50_d32_jpu(num_classes: usize) -> Self {
        let mut c = Self::aux_r50_d8(num_classes);
        c.base.in_index = InIndex::One(1);
        // The JPU passes C4 through: 1024 channels at stride 16.
        c.base.designed_for = Some(vec![FeatureSpec::new(1024, 16)]);
        c
    }
}

/// mmseg's FCN head.
pub struct FcnHead {
    cfg: FcnHeadConfig,
    inputs: HeadInputs,
    convs: Vec<ConvNormAct>,
    conv_cat: Option<ConvNormAct>,
    cls: ClsSeg,
}

impl FcnHead {
    /// Builds the head for features with `inputs` specs, loading mmseg's keys from `vb`
    /// (`convs.*`, `conv_cat.*`, `conv_seg.*`).
    pub fn new(cfg: &FcnHeadConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        let transform = single_input_transform("FCNHead", &cfg.base)?;
        let sel = HeadInputs::new("FCNHead", &cfg.base, transform, inputs)?;
        let b = &cfg.base;
        let cin = sel.channels();
        let (k, d) = (cfg.kernel_size, cfg.dilation);
        if k == 0 || d == 0 {
            return Err(Error::InvalidConfig(format!(
                "FCNHead kernel_size and dilation must be positive, got {k} and {d}"
            )));
        }
        if cfg.num_convs == 0 && cin != b.channels {
            return Err(Error::InvalidConfig(format!(
                "FCNHead with num_convs = 0 needs input channels ({cin}) = channels ({})",
                b.channels
            )));
        }
        let mut convs = Vec::with_capacity(cfg.num_convs);
        for i in 0..cfg.num_convs {
            let c = ConvModuleConfig::new(if i == 0 { cin } else { b.channels }, b.channels, k)
                .dilation(d)
                .padding((k / 2) * d)
                .norm(b.norm)
                .act(b.act);
            convs.push(ConvNormAct::new(&c, vb.pp("convs").pp(i))?);
        }
        let conv_cat = if cfg.concat_input {
            let c = ConvModuleConfig::new(cin + b.channels, b.channels, k)
                .norm(b.norm)
                .act(b.act);
            Some(ConvNormAct::new(&c, vb.pp("conv_cat"))?)
        } else {
            None
        };
        let cls = ClsSeg::new(
            b.channels,
            b.num_classes,
            b.dropout_ratio,
            vb.pp("conv_seg"),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            inputs: sel,
            convs,
            conv_cat,
            cls,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FcnHeadConfig {
        &self.cfg
    }

    /// The features before the classifier (`N x channels x H x W`, mmseg `_forward_feature`).
    pub fn forward_features(&self, features: &[Tensor], train: bool) -> Result<Tensor> {
        let x = self.inputs.single(features)?;
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward_t(&y, train)?;
        }
        if let Some(cat) = &self.conv_cat {
            y = cat.forward_cat_t(&x, &y, train)?;
        }
        Ok(y)
    }

    /// Runs the head on one map per input spec and returns the logits. `train` enables
    /// dropout and BatchNorm batch statistics.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Result<Tensor> {
        let y = self.forward_features(features, train)?;
        self.cls.forward_t(&y, train)
    }
}

impl DecodeHead for FcnHead {
    fn num_classes(&self) -> usize {
        self.cfg.base.num_classes
    }

    fn output_stride(&self) -> usize {
        self.inputs.first_stride()
    }

    fn align_corners(&self) -> bool {
        self.cfg.base.align_corners
    }

    fn forward_t(&self, features: &[Tensor], train: bool) -> segkit_core::Result<HeadOutput> {
        Ok(HeadOutput::new(self.forward(features, train)?))
    }
}

/// The configuration and the selected inputs (the weights are not printed).
impl std::fmt::Debug for FcnHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcnHead")
            .field("config", &self.cfg)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InputTransform;
    use candle_core::{DType, Device};

    #[test]
    fn resize_concat_and_errors() {
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let specs = [FeatureSpec::new(4, 4), FeatureSpec::new(6, 8)];
        let mut cfg = FcnHeadConfig::fcn_r50_d8(3);
        // The preset on other features, on purpose.
        cfg.base.designed_for = None;
        cfg.base.channels = 5;
        cfg.base.in_index = InIndex::Many(vec![0, 1]);
        cfg.base.input_transform = Some(InputTransform::ResizeConcat);
        let head = FcnHead::new(&cfg, &specs, vb.clone()).unwrap();
        assert_eq!(head.output_stride(), 4);
        let xs = [
            Tensor::zeros((2, 4, 9, 7), DType::F32, &dev).unwrap(),
            Tensor::zeros((2, 6, 5, 4), DType::F32, &dev).unwrap(),
        ];
        assert_eq!(head.forward(&xs, true).unwrap().dims(), &[2, 3, 9, 7]);
        let bad = [
            xs[0].clone(),
            Tensor::zeros((2, 7, 5, 4), DType::F32, &dev).unwrap(),
        ];
        assert!(matches!(
            head.forward(&bad, false),
            Err(segkit_core::Error::ShapeMismatch { .. })
        ));
        cfg.base.input_transform = Some(InputTransform::MultipleSelect);
        assert!(matches!(
            FcnHead::new(&cfg, &specs, vb),
            Err(Error::InvalidConfig(_))
        ));
    }
}
