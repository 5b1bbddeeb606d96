//! PSP head: "Pyramid Scene Parsing Network" (Zhao et al., 2017), as mmseg's `PSPHead` and
//! `PPM` (`mmseg/models/decode_heads/psp_head.py`).
//!
//! Pyramid pooling module: for each bin count `b` in `pool_scales` (1, 2, 3, 6), adaptive average
//! pooling to `b x b` with PyTorch's bin boundaries (bins may overlap when `b` does not divide
//! the size), a 1x1 ConvModule to `channels` (`psp_modules.{i}.1.conv` / `.bn`), and bilinear
//! upsampling back to the input size. The input and the pooled maps are concatenated and fused
//! by a 3x3 ConvModule (`bottleneck`), then `Dropout2d` and the classifier `conv_seg`.
//!
//! # Shapes
//! Input map `N x C_in x H x W` (any `H`, `W`) -> logits `N x num_classes x H x W`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::{DecodeHead, FeatureSpec, HeadOutput, HeadOutputSpec};
//! use segkit_heads::{PspHead, PspHeadConfig};
//! let dev = Device::Cpu;
//! let specs = [FeatureSpec::new(512, 8), FeatureSpec::new(1024, 16), FeatureSpec::new(2048, 8)];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let head = PspHead::new(&PspHeadConfig::fastfcn_r50_d32_jpu_psp(19), &specs, vb).unwrap();
//! let xs = [
//!     Tensor::zeros((1, 512, 13, 17), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 1024, 7, 9), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 2048, 13, 17), DType::F32, &dev).unwrap(),
//! ];
//! assert_eq!(head.forward_t(&xs, false).unwrap().logits.dims(), &[1, 19, 13, 17]);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct};
use segkit_core::ops;
use segkit_core::{DecodeHead, FeatureSpec, HeadOutput};

use crate::decode_head::{single_input_transform, ClsSeg, DecodeHeadConfig, HeadInputs, InIndex};
use crate::{Error, Result};

fn default_pool_scales() -> Vec<usize> {
    vec![1, 2, 3, 6]
}

/// Configuration of a [`PspHead`] (mmseg `PSPHead`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PspHeadConfig {
    /// The settings every decode head shares.
    pub base: DecodeHeadConfig,
    /// Output sizes of the pyramid's adaptive average pools (the paper's bin sizes 1x1, 2x2,
    /// 3x3, 6x6). Default (1, 2, 3, 6).
    #[serde(default = "default_pool_scales")]
    pub pool_scales: Vec<usize>,
}

impl PspHeadConfig {
    /// mmseg `pspnet_r50-d8` (and r101): `in_index = 3` (C5, 2048 channels), channels 512,
    /// bins (1, 2, 3, 6).
    pub fn pspnet_r50_d8(num_classes: usize) -> Self {
        Self {
            base: DecodeHeadConfig::mmseg(512, num_classes, InIndex::One(3))
                .designed_for(&[FeatureSpec::new(2048, 8)]),
            pool_scales: default_pool_scales(),
        }
    }

    /// mmseg `fastfcn_r50-d32_jpu_psp`: as PSPNet on the JPU's fused output (`in_index = 2`).
    pub fn fastfcn_r50_d32_jpu_psp(num_classes: usize) -> Self {
        let mut c = Self::pspnet_r50_d8(num_classes);
        c.base.in_index = InIndex::One(2);
        // The JPU's fused map: 4 x 512 channels at stride 8.
        c.base.designed_for = Some(vec![FeatureSpec::new(2048, 8)]);
        c
    }
}

/// mmseg's PSP head.
pub struct PspHead {
    cfg: PspHeadConfig,
    inputs: HeadInputs,
    ppm: Vec<ConvNormAct>,
    bottleneck: ConvNormAct,
    cls: ClsSeg,
}

impl PspHead {
    /// Builds the head for features with `inputs` specs, loading mmseg's keys from `vb`
    /// (`psp_modules.*`, `bottleneck.*`, `conv_seg.*`).
    pub fn new(cfg: &PspHeadConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        let transform = single_input_transform("PSPHead", &cfg.base)?;
        let sel = HeadInputs::new("PSPHead", &cfg.base, transform, inputs)?;
        if cfg.pool_scales.contains(&0) {
            return Err(Error::InvalidConfig(format!(
                "PSPHead pool_scales must be positive, got {:?}",
                cfg.pool_scales
            )));
        }
        let b = &cfg.base;
        let cin = sel.channels();
        let mut ppm = Vec::with_capacity(cfg.pool_scales.len());
        for i in 0..cfg.pool_scales.len() {
            let c = ConvModuleConfig::new(cin, b.channels, 1)
                .norm(b.norm)
                .act(b.act);
            ppm.push(ConvNormAct::new(&c, vb.pp("psp_modules").pp(i).pp(1))?);
        }
        let c = ConvModuleConfig::new(cin + cfg.pool_scales.len() * b.channels, b.channels, 3)
            .norm(b.norm)
            .act(b.act);
        let bottleneck = ConvNormAct::new(&c, vb.pp("bottleneck"))?;
        let cls = ClsSeg::new(
            b.channels,
            b.num_classes,
            b.dropout_ratio,
            vb.pp("conv_seg"),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            inputs: sel,
            ppm,
            bottleneck,
            cls,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PspHeadConfig {
        &self.cfg
    }

    /// The features before the classifier (`N x channels x H x W`).
    pub fn forward_features(&self, features: &[Tensor], train: bool) -> Result<Tensor> {
        let x = self.inputs.single(features)?;
        let (_, _, h, w) = x.dims4()?;
        let mut pooled = Vec::with_capacity(self.ppm.len());
        for (conv, &s) in self.ppm.iter().zip(&self.cfg.pool_scales) {
            let p = ops::adaptive_avg_pool2d(&x, (s, s))?;
            pooled.push(conv.forward_t(&p, train)?);
        }
        if pooled.is_empty() {
            return self.bottleneck.forward_t(&x, train);
        }
        // The pyramid, upsampled straight into one map, and the bottleneck over [x, pyramid]:
        // in training autograd keeps neither the upsampled maps nor the 4096-channel
        // concatenation (`ConvNormAct::forward_cat_t`).
        let pyramid = ops::resize_bilinear_cat(&pooled, (h, w), self.cfg.base.align_corners)?;
        self.bottleneck.forward_cat_t(&x, &pyramid, train)
    }

    /// Runs the head on one map per input spec and returns the logits.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Result<Tensor> {
        let y = self.forward_features(features, train)?;
        self.cls.forward_t(&y, train)
    }
}

impl DecodeHead for PspHead {
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
impl std::fmt::Debug for PspHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PspHead")
            .field("config", &self.cfg)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}
