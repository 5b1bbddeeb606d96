//! PANet's mask head with adaptive feature pooling and fully-connected fusion: ShuLiu1993/PANet
//! `lib/modeling/mask_rcnn_heads.py::mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff` (`Mask_Head.*`,
//! `mask_rcnn_fcn_head_v1up4convs_gn_adp_ff` in the config) and `mask_rcnn_outputs`
//! (`Mask_Outs.*`).
//!
//! Every RoI is pooled (RoIAlign 14x14, sampling ratio 2, `aligned = false`) from every level;
//! per level `mask_conv1[l]` (3x3 conv without bias, GN(32), ReLU); element-wise max across
//! levels; `conv_fcn` (two 3x3 conv + GN + ReLU, "conv2" and "conv3"). From there two branches:
//! - FCN: `mask_conv4` (3x3 + GN + ReLU) -> `upconv` (ConvTranspose 2x2 stride 2, bias) -> ReLU
//!   -> `Mask_Outs.classify` (1x1, `num_classes` logits at 28x28);
//! - FC (from conv3's output): `mask_conv4_fc` (3x3, GN(32), ReLU) -> `mask_conv5_fc` (3x3 to
//!   half the channels, GN with 32 groups on 128 channels, ReLU) -> `mask_fc.0`
//!   (`128 * 14 * 14 -> 28 * 28`) -> ReLU, viewed `1 x 28 x 28` and added to every class's logits.
//!
//! The test-time sigmoid is left to the caller (post-processing takes the class channel).
//!
//! # Shapes
//! Features: one `N x C x H_l x W_l` map per RoI level; RoIs `K x 5` -> pooled
//! `K x C x 14 x 14` per level, logits `K x num_classes x 28 x 28` (`K x 1 x 28 x 28`
//! class-agnostic).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use segkit_core::nn::{ConvModuleConfig, ConvNormAct};
use segkit_core::ops::detection::{roi_align_all_levels, RoiAlignConfig};
use segkit_core::ops::{roi_align, Activation};
use segkit_core::{Error, FeatureSpec, Result};

use super::{check_levels, check_pooled, fuse_levels, gn_conv, level_scales};

/// Configuration of a [`PanetMaskHead`] (Detectron's `cfg.MRCNN`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanetMaskHeadConfig {
    /// RoIAlign of the mask head (`MRCNN.ROI_XFORM_*`): 14x14, sampling ratio 2.
    pub pool: RoiAlignConfig,
    /// Channels of the convolutions (`MRCNN.DIM_REDUCED`). 256.
    pub dim: usize,
    /// Dilation of the 3x3 convolutions (`MRCNN.DILATION`; PANet's config 1).
    pub dilation: usize,
    /// Output mask size, twice the pooled size (`MRCNN.RESOLUTION`). 28.
    pub resolution: usize,
    /// Classes including background (`MODEL.NUM_CLASSES`). 81 for COCO.
    pub num_classes: usize,
    /// One mask per class (`MRCNN.CLS_SPECIFIC_MASK`). True.
    pub cls_specific: bool,
    /// GroupNorm groups (`GROUP_NORM.NUM_GROUPS`), also on the half-width `mask_conv5_fc`. 32.
    pub gn_groups: usize,
    /// GroupNorm epsilon. 1e-5.
    pub gn_eps: f64,
}

impl PanetMaskHeadConfig {
    /// `e2e_panet_R-50-FPN_2x_mask.yaml`'s mask head for `num_classes` classes.
    pub fn panet(num_classes: usize) -> Self {
        Self {
            pool: RoiAlignConfig::detectron(14, 2),
            dim: 256,
            dilation: 1,
            resolution: 28,
            num_classes,
            cls_specific: true,
            gn_groups: 32,
            gn_eps: 1e-5,
        }
    }

    /// Mask channels: `num_classes`, or 1 class-agnostic.
    pub fn mask_channels(&self) -> usize {
        if self.cls_specific {
            self.num_classes
        } else {
            1
        }
    }
}

/// PANet's mask head (see the module docs).
#[derive(Debug)]
pub struct PanetMaskHead {
    cfg: PanetMaskHeadConfig,
    scales: Vec<f32>,
    channels: usize,
    mask_conv1: Vec<ConvNormAct>,
    conv_fcn: Vec<ConvNormAct>,
    mask_conv4: ConvNormAct,
    mask_conv4_fc: ConvNormAct,
    mask_conv5_fc: ConvNormAct,
    mask_fc: Linear,
    upconv_w: Tensor,
    upconv_b: Tensor,
    classify: ConvNormAct,
}

impl PanetMaskHead {
    /// Builds the head over `inputs` (one spec per RoI level, finest first) from `vb` at the
    /// model root: keys `Mask_Head.mask_conv1.{l}.{0,1}.*`, `Mask_Head.conv_fcn.{0,1,3,4}.*`,
    /// `Mask_Head.mask_conv4{,_fc}.{0,1}.*`, `Mask_Head.mask_conv5_fc.{0,1}.*`,
    /// `Mask_Head.mask_fc.0.*`, `Mask_Head.upconv.*`, `Mask_Outs.classify.*`.
    pub fn new(
        cfg: &PanetMaskHeadConfig,
        inputs: &[FeatureSpec],
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let (scales, channels) = level_scales("PANet mask head", inputs)?;
        let r = cfg.pool.resolution;
        if cfg.resolution != 2 * r || cfg.num_classes == 0 || cfg.dim < 2 || cfg.dilation == 0 {
            return Err(Error::InvalidConfig(format!(
                "PANet mask head: resolution ({}) must be twice pool.resolution ({r}), \
                 num_classes ({}) and dilation ({}) positive, dim ({}) at least 2",
                cfg.resolution, cfg.num_classes, cfg.dilation, cfg.dim
            )));
        }
        let hv = vb.pp("Mask_Head");
        let (d, dl, g, e) = (cfg.dim, cfg.dilation, cfg.gn_groups, cfg.gn_eps);
        let mask_conv1 = (0..inputs.len())
            .map(|l| {
                let v = hv.pp("mask_conv1").pp(l);
                gn_conv(channels, d, dl, g, e, v.pp(0), v.pp(1))
            })
            .collect::<Result<Vec<_>>>()?;
        let fv = hv.pp("conv_fcn");
        let conv_fcn = (0..2)
            .map(|j| gn_conv(d, d, dl, g, e, fv.pp(3 * j), fv.pp(3 * j + 1)))
            .collect::<Result<Vec<_>>>()?;
        let seq = |name: &str, cout: usize| {
            let v = hv.pp(name);
            gn_conv(d, cout, dl, g, e, v.pp(0), v.pp(1))
        };
        let mask_conv4 = seq("mask_conv4", d)?;
        let mask_conv4_fc = seq("mask_conv4_fc", d)?;
        let mask_conv5_fc = seq("mask_conv5_fc", d / 2)?;
        let m = cfg.resolution;
        let mask_fc = candle_nn::linear(d / 2 * r * r, m * m, hv.pp("mask_fc").pp(0))?;
        let uv = hv.pp("upconv");
        let upconv_w = uv.get((d, d, 2, 2), "weight")?;
        let upconv_b = uv.get(d, "bias")?;
        let cv = vb.pp("Mask_Outs").pp("classify");
        let cls = ConvModuleConfig::new(d, cfg.mask_channels(), 1)
            .norm(None)
            .bias(true)
            .act(Activation::None);
        let classify = ConvNormAct::new_with_paths(&cls, cv.clone(), cv)?;
        Ok(Self {
            cfg: cfg.clone(),
            scales,
            channels,
            mask_conv1,
            conv_fcn,
            mask_conv4,
            mask_conv4_fc,
            mask_conv5_fc,
            mask_fc,
            upconv_w,
            upconv_b,
            classify,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PanetMaskHeadConfig {
        &self.cfg
    }

    /// Adaptive feature pooling: every RoI from every level, `K x C x 14 x 14` per level.
    pub fn pool(&self, features: &[Tensor], rois: &Tensor) -> Result<Vec<Tensor>> {
        self.check_features(features)?;
        roi_align_all_levels(features, rois, &self.scales, &self.cfg.pool)
    }

    fn check_features(&self, features: &[Tensor]) -> Result<()> {
        check_levels("mask head", self.scales.len(), features)
    }

    /// Mask logits `K x num_classes x 28 x 28` from pooled features (one `K x C x 14 x 14`
    /// tensor per level): the FCN branch's logits plus the FC branch's map on every channel.
    pub fn forward_pooled(&self, pooled: &[Tensor], train: bool) -> Result<Tensor> {
        let r = self.cfg.pool.resolution;
        check_pooled("mask head", self.mask_conv1.len(), self.channels, r, pooled)?;
        let (k, dt, dev) = (pooled[0].dims()[0], pooled[0].dtype(), pooled[0].device());
        if k == 0 {
            return self.empty(dt, dev);
        }
        let x = fuse_levels(&self.mask_conv1, |l| Ok(pooled[l].clone()), train)?;
        self.tail(x, train)
    }

    /// Pools `rois` from `features` and returns the mask logits (one level at a time: pool,
    /// conv, fold into the max).
    pub fn forward_t(&self, features: &[Tensor], rois: &Tensor, train: bool) -> Result<Tensor> {
        self.check_features(features)?;
        let (k, f0) = (rois.dims().first().copied().unwrap_or(0), &features[0]);
        if k == 0 {
            return self.empty(f0.dtype(), f0.device());
        }
        let out = (self.cfg.pool.resolution, self.cfg.pool.resolution);
        let pool = |l: usize| {
            let (s, p) = (self.scales[l], &self.cfg.pool);
            roi_align(&features[l], rois, out, s, p.sampling_ratio, p.aligned)
        };
        let x = fuse_levels(&self.mask_conv1, pool, train)?;
        self.tail(x, train)
    }

    fn empty(&self, dt: DType, dev: &Device) -> Result<Tensor> {
        let m = self.cfg.resolution;
        Ok(Tensor::zeros((0, self.cfg.mask_channels(), m, m), dt, dev)?)
    }

    /// `conv_fcn`, both branches and their sum, after the fusion.
    fn tail(&self, mut x: Tensor, train: bool) -> Result<Tensor> {
        let (k, m) = (x.dims()[0], self.cfg.resolution);
        for c in &self.conv_fcn {
            x = c.forward_t(&x, train)?;
        }
        let fcn = self.mask_conv4.forward_t(&x, train)?;
        let fcn = conv_transpose_2x2(&fcn, &self.upconv_w, &self.upconv_b)?.relu()?;
        let logits = self.classify.forward_t(&fcn, train)?;
        let ff = self.mask_conv4_fc.forward_t(&x, train)?;
        let ff = self.mask_conv5_fc.forward_t(&ff, train)?;
        let ff = self.mask_fc.forward(&ff.flatten_from(1)?)?.relu()?;
        let ff = ff.reshape((k, 1, m, m))?;
        Ok(logits.broadcast_add(&ff)?)
    }
}

/// `ConvTranspose2d(kernel 2, stride 2, padding 0)` with bias: the taps do not overlap, so it
/// is one matmul, `(K H W) x Ci` times `Ci x (Co 2 2)`, and a reshuffle to `K x Co x 2H x 2W`.
/// `w` is PyTorch's `Ci x Co x 2 x 2`.
pub(crate) fn conv_transpose_2x2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (k, ci, h, wd) = x.dims4()?;
    let (wci, co, kh, kw) = w.dims4()?;
    if wci != ci || (kh, kw) != (2, 2) {
        return Err(Error::shape(
            "transposed conv weight",
            &[ci, co, 2, 2],
            w.dims(),
        ));
    }
    let cols = x
        .reshape((k, ci, h * wd))?
        .transpose(1, 2)?
        .reshape((k * h * wd, ci))?;
    let y = cols.matmul(&w.reshape((ci, co * 4))?)?;
    // (K, H, W, Co, 2, 2) -> (K, Co, H, 2, W, 2)
    let y = y
        .reshape((k, h, wd, co, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((k, co, 2 * h, 2 * wd))?;
    Ok(y.broadcast_add(&b.reshape((1, co, 1, 1))?)?)
}
