//! ASPP head: "Rethinking Atrous Convolution for Semantic Image Segmentation" (DeepLabV3, Chen
//! et al., 2017), as mmseg's `ASPPHead` (`mmseg/models/decode_heads/aspp_head.py`).
//!
//! Image pooling (global average pool, 1x1 ConvModule `image_pool.1`, broadcast back to the
//! input size) and one ConvModule per dilation (`aspp_modules.{i}`: 1x1 for dilation 1, else
//! 3x3 with padding = dilation), concatenated and fused by a 3x3 ConvModule (`bottleneck`), then
//! `Dropout2d` and the classifier `conv_seg`. At output stride 8 the paper's rates 6/12/18
//! double to 12/24/36, which mmseg's `*-d8` configs use.
//!
//! # Shapes
//! Input map `N x C_in x H x W` -> logits `N x num_classes x H x W`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::{DecodeHead, FeatureSpec, HeadOutput, HeadOutputSpec};
//! use segkit_heads::{AsppHead, AsppHeadConfig};
//! let dev = Device::Cpu;
//! let specs = [FeatureSpec::new(256, 4), FeatureSpec::new(512, 8), FeatureSpec::new(1024, 8), FeatureSpec::new(2048, 8)];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let head = AsppHead::new(&AsppHeadConfig::deeplabv3_r50_d8(19), &specs, vb).unwrap();
//! let xs: Vec<Tensor> = specs
//!     .iter()
//!     .map(|s| Tensor::zeros((1, s.channels, 9, 11), DType::F32, &dev).unwrap())
//!     .collect();
//! assert_eq!(head.forward_t(&xs, false).unwrap().logits.dims(), &[1, 19, 9, 11]);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct};
use segkit_core::ops;
use segkit_core::{DecodeHead, FeatureSpec, HeadOutput};

use crate::decode_head::{single_input_transform, ClsSeg, DecodeHeadConfig, HeadInputs, InIndex};
use crate::{Error, Result};

fn default_dilations() -> Vec<usize> {
    vec![1, 6, 12, 18]
}

/// Configuration of an [`AsppHead`] (mmseg `ASPPHead`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsppHeadConfig {
    /// The settings every decode head shares.
    pub base: DecodeHeadConfig,
    /// Atrous rates of the parallel branches; rate 1 is a 1x1 conv. Default (1, 6, 12, 18)
    /// (the paper's rates at output stride 16); mmseg's `*-d8` configs use (1, 12, 24, 36).
    #[serde(default = "default_dilations")]
    pub dilations: Vec<usize>,
}

impl AsppHeadConfig {
    /// mmseg `deeplabv3_r50-d8` (and r101): `in_index = 3` (C5, 2048 channels), channels 512,
    /// dilations (1, 12, 24, 36).
    pub fn deeplabv3_r50_d8(num_classes: usize) -> Self {
        Self {
            base: DecodeHeadConfig::mmseg(512, num_classes, InIndex::One(3))
                .designed_for(&[FeatureSpec::new(2048, 8)]),
            dilations: vec![1, 12, 24, 36],
        }
    }

    /// mmseg `fastfcn_r50-d32_jpu_aspp`: as DeepLabV3 on the JPU's fused output
    /// (`in_index = 2`).
    pub fn fastfcn_r50_d32_jpu_aspp(num_classes: usize) -> Self {
        let mut c = Self::deeplabv3_r50_d8(num_classes);
        c.base.in_index = InIndex::One(2);
        // The JPU's fused map: 4 x 512 channels at stride 8.
        c.base.designed_for = Some(vec![FeatureSpec::new(2048, 8)]);
        c
    }
}

/// mmseg's ASPP head.
pub struct AsppHead {
    cfg: AsppHeadConfig,
    inputs: HeadInputs,
    image_pool: ConvNormAct,
    branches: Vec<ConvNormAct>,
    bottleneck: ConvNormAct,
    cls: ClsSeg,
}

impl AsppHead {
    /// Builds the head for features with `inputs` specs, loading mmseg's keys from `vb`
    /// (`image_pool.1.*`, `aspp_modules.*`, `bottleneck.*`, `conv_seg.*`).
    pub fn new(cfg: &AsppHeadConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        let transform = single_input_transform("ASPPHead", &cfg.base)?;
        let sel = HeadInputs::new("ASPPHead", &cfg.base, transform, inputs)?;
        if cfg.dilations.contains(&0) {
            return Err(Error::InvalidConfig(format!(
                "ASPPHead dilations must be positive, got {:?}",
                cfg.dilations
            )));
        }
        let b = &cfg.base;
        let cin = sel.channels();
        let cm = |cin: usize, k: usize| {
            ConvModuleConfig::new(cin, b.channels, k)
                .norm(b.norm)
                .act(b.act)
        };
        let image_pool = ConvNormAct::new(&cm(cin, 1), vb.pp("image_pool").pp(1))?;
        let mut branches = Vec::with_capacity(cfg.dilations.len());
        for (i, &d) in cfg.dilations.iter().enumerate() {
            let c = if d == 1 {
                cm(cin, 1)
            } else {
                cm(cin, 3).dilation(d)
            };
            branches.push(ConvNormAct::new(&c, vb.pp("aspp_modules").pp(i))?);
        }
        let bottleneck = ConvNormAct::new(
            &cm((cfg.dilations.len() + 1) * b.channels, 3),
            vb.pp("bottleneck"),
        )?;
        let cls = ClsSeg::new(
            b.channels,
            b.num_classes,
            b.dropout_ratio,
            vb.pp("conv_seg"),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            inputs: sel,
            image_pool,
            branches,
            bottleneck,
            cls,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AsppHeadConfig {
        &self.cfg
    }

    /// The features before the classifier (`N x channels x H x W`).
    pub fn forward_features(&self, features: &[Tensor], train: bool) -> Result<Tensor> {
        let x = self.inputs.single(features)?;
        let (_, _, h, w) = x.dims4()?;
        let pooled = self
            .image_pool
            .forward_t(&ops::adaptive_avg_pool2d(&x, (1, 1))?, train)?;
        // Bilinear upsampling of a 1x1 map is an exact broadcast (PyTorch reads one pixel
        // with weight 1).
        let mut outs = Vec::with_capacity(self.branches.len() + 1);
        let (n, c, _, _) = pooled.dims4()?;
        outs.push(pooled.broadcast_as((n, c, h, w))?.contiguous()?);
        for br in &self.branches {
            outs.push(br.forward_t(&x, train)?);
        }
        self.bottleneck.forward_t(&Tensor::cat(&outs, 1)?, train)
    }

    /// Runs the head on one map per input spec and returns the logits.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Result<Tensor> {
        let y = self.forward_features(features, train)?;
        self.cls.forward_t(&y, train)
    }
}

impl DecodeHead for AsppHead {
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
impl std::fmt::Debug for AsppHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsppHead")
            .field("config", &self.cfg)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}
