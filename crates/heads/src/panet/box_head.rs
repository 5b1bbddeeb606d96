//! PANet's box head with adaptive feature pooling: ShuLiu1993/PANet
//! `lib/modeling/fast_rcnn_heads.py::roi_Xconv1fc_gn_head_panet` (`Box_Head.*`) and
//! `fast_rcnn_outputs` (`Box_Outs.*`).
//!
//! Every RoI is pooled (RoIAlign 7x7, sampling ratio 2, `aligned = false`) from every level
//! N2..N5; per level `conv1_head[l]` (3x3 conv without bias, GroupNorm(32), ReLU); an element-wise
//! max across levels; `NUM_STACKED_CONVS - 1` shared 3x3 conv + GN + ReLU (`convs`, a
//! `Sequential` with the conv at `3j`, the GN at `3j + 1`); `fc` (`256 * 7 * 7 -> 1024`) + ReLU;
//! `cls_score` (`1024 -> 81`, softmax at test time) and `bbox_pred` (`1024 -> 4 * 81`).
//!
//! # Shapes
//! Features: one `N x C x H_l x W_l` map per RoI level; RoIs `K x 5` `(batch, x1, y1, x2, y2)` in
//! input pixels -> pooled `K x C x 7 x 7` per level, `cls_score` `K x num_classes` (logits),
//! `bbox_pred` `K x 4 num_classes` (`K x 8` class-agnostic).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use segkit_core::nn::ConvNormAct;
use segkit_core::ops::detection::{roi_align_all_levels, RoiAlignConfig};
use segkit_core::ops::roi_align;
use segkit_core::{Error, FeatureSpec, Result};

use super::{check_levels, check_pooled, empty_rows, fuse_levels, gn_conv, level_scales};

/// Configuration of a [`PanetBoxHead`] (Detectron's `cfg.FAST_RCNN`, `cfg.MODEL`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanetBoxHeadConfig {
    /// RoIAlign of the box head (`FAST_RCNN.ROI_XFORM_*`): 7x7, sampling ratio 2.
    pub pool: RoiAlignConfig,
    /// Convolutions per RoI, the per-level one included (`FAST_RCNN.NUM_STACKED_CONVS`). 4.
    pub num_stacked_convs: usize,
    /// Channels of the convolutions (`FAST_RCNN.CONV_HEAD_DIM`). 256.
    pub conv_dim: usize,
    /// Width of the fully-connected layer (`FAST_RCNN.MLP_HEAD_DIM`). 1024.
    pub fc_dim: usize,
    /// Classes including background (`MODEL.NUM_CLASSES`). 81 for COCO.
    pub num_classes: usize,
    /// One box for all classes (`MODEL.CLS_AGNOSTIC_BBOX_REG`). PANet: false.
    pub cls_agnostic_bbox_reg: bool,
    /// GroupNorm groups (`GROUP_NORM.NUM_GROUPS`). 32.
    pub gn_groups: usize,
    /// GroupNorm epsilon (`GROUP_NORM.EPSILON`). 1e-5.
    pub gn_eps: f64,
}

impl PanetBoxHeadConfig {
    /// `e2e_panet_R-50-FPN_2x_mask.yaml`'s box head for `num_classes` classes (81 for COCO).
    pub fn panet(num_classes: usize) -> Self {
        Self {
            pool: RoiAlignConfig::detectron(7, 2),
            num_stacked_convs: 4,
            conv_dim: 256,
            fc_dim: 1024,
            num_classes,
            cls_agnostic_bbox_reg: false,
            gn_groups: 32,
            gn_eps: 1e-5,
        }
    }

    /// Box deltas per RoI: `4 * num_classes`, or 8 when class-agnostic.
    pub fn bbox_outputs(&self) -> usize {
        if self.cls_agnostic_bbox_reg {
            8
        } else {
            4 * self.num_classes
        }
    }
}

/// Outputs of [`PanetBoxHead::forward_pooled`].
#[derive(Debug, Clone)]
pub struct PanetBoxHeadOutput {
    /// The `fc` features after ReLU, `K x fc_dim` (`Box_Head`'s output).
    pub features: Tensor,
    /// Classification logits, `K x num_classes` (softmax them for test-time scores).
    pub cls_score: Tensor,
    /// Box deltas, `K x 4 num_classes` (Detectron's `bbox_pred`).
    pub bbox_pred: Tensor,
}

/// PANet's box head (see the module docs).
#[derive(Debug)]
pub struct PanetBoxHead {
    cfg: PanetBoxHeadConfig,
    scales: Vec<f32>,
    channels: usize,
    conv1_head: Vec<ConvNormAct>,
    convs: Vec<ConvNormAct>,
    fc: Linear,
    cls_score: Linear,
    bbox_pred: Linear,
}

impl PanetBoxHead {
    /// Builds the head over `inputs` (one spec per RoI level, finest first: N2..N5, equal
    /// channels) from `vb` at the model root: keys `Box_Head.conv1_head.{l}.{0,1}.*`,
    /// `Box_Head.convs.{3j,3j+1}.*`, `Box_Head.fc.*`, `Box_Outs.{cls_score,bbox_pred}.*`.
    pub fn new(
        cfg: &PanetBoxHeadConfig,
        inputs: &[FeatureSpec],
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let (scales, channels) = level_scales("PANet box head", inputs)?;
        if cfg.num_stacked_convs == 0 || cfg.num_classes == 0 || cfg.pool.resolution == 0 {
            return Err(Error::InvalidConfig(format!(
                "PANet box head: num_stacked_convs ({}), num_classes ({}) and pool.resolution \
                 ({}) must be positive",
                cfg.num_stacked_convs, cfg.num_classes, cfg.pool.resolution
            )));
        }
        let hv = vb.pp("Box_Head");
        let d = cfg.conv_dim;
        let conv1_head = (0..inputs.len())
            .map(|l| {
                let v = hv.pp("conv1_head").pp(l);
                gn_conv(channels, d, 1, cfg.gn_groups, cfg.gn_eps, v.pp(0), v.pp(1))
            })
            .collect::<Result<Vec<_>>>()?;
        let cv = hv.pp("convs");
        let convs = (0..cfg.num_stacked_convs - 1)
            .map(|j| {
                gn_conv(
                    d,
                    d,
                    1,
                    cfg.gn_groups,
                    cfg.gn_eps,
                    cv.pp(3 * j),
                    cv.pp(3 * j + 1),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let r = cfg.pool.resolution;
        let fc = candle_nn::linear(d * r * r, cfg.fc_dim, hv.pp("fc"))?;
        let ov = vb.pp("Box_Outs");
        let cls_score = candle_nn::linear(cfg.fc_dim, cfg.num_classes, ov.pp("cls_score"))?;
        let bbox_pred = candle_nn::linear(cfg.fc_dim, cfg.bbox_outputs(), ov.pp("bbox_pred"))?;
        Ok(Self {
            cfg: cfg.clone(),
            scales,
            channels,
            conv1_head,
            convs,
            fc,
            cls_score,
            bbox_pred,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PanetBoxHeadConfig {
        &self.cfg
    }

    /// Adaptive feature pooling: every RoI from every level, `K x C x 7 x 7` per level.
    pub fn pool(&self, features: &[Tensor], rois: &Tensor) -> Result<Vec<Tensor>> {
        self.check_features(features)?;
        roi_align_all_levels(features, rois, &self.scales, &self.cfg.pool)
    }

    fn check_features(&self, features: &[Tensor]) -> Result<()> {
        check_levels("box head", self.scales.len(), features)
    }

    /// Runs the head on pooled features (one `K x C x 7 x 7` tensor per level).
    pub fn forward_pooled(&self, pooled: &[Tensor], train: bool) -> Result<PanetBoxHeadOutput> {
        let r = self.cfg.pool.resolution;
        check_pooled("box head", self.conv1_head.len(), self.channels, r, pooled)?;
        let (k, dt, dev) = (pooled[0].dims()[0], pooled[0].dtype(), pooled[0].device());
        if k == 0 {
            return self.empty(dt, dev);
        }
        let x = fuse_levels(&self.conv1_head, |l| Ok(pooled[l].clone()), train)?;
        self.tail(x, train)
    }

    fn empty(&self, dt: DType, dev: &Device) -> Result<PanetBoxHeadOutput> {
        Ok(PanetBoxHeadOutput {
            features: empty_rows(self.cfg.fc_dim, dt, dev)?,
            cls_score: empty_rows(self.cfg.num_classes, dt, dev)?,
            bbox_pred: empty_rows(self.cfg.bbox_outputs(), dt, dev)?,
        })
    }

    /// Shared convs, fc and outputs after the fusion.
    fn tail(&self, mut x: Tensor, train: bool) -> Result<PanetBoxHeadOutput> {
        for c in &self.convs {
            x = c.forward_t(&x, train)?;
        }
        let features = self.fc.forward(&x.flatten_from(1)?)?.relu()?;
        Ok(PanetBoxHeadOutput {
            cls_score: self.cls_score.forward(&features)?,
            bbox_pred: self.bbox_pred.forward(&features)?,
            features,
        })
    }

    /// Pools `rois` from `features` and runs the head.
    pub fn forward_t(
        &self,
        features: &[Tensor],
        rois: &Tensor,
        train: bool,
    ) -> Result<PanetBoxHeadOutput> {
        self.check_features(features)?;
        let (k, f0) = (rois.dims().first().copied().unwrap_or(0), &features[0]);
        if k == 0 {
            return self.empty(f0.dtype(), f0.device());
        }
        // One level at a time: pool, conv, fold into the max (the pooled maps of all levels
        // are never held together).
        let out = (self.cfg.pool.resolution, self.cfg.pool.resolution);
        let pool = |l: usize| {
            let (s, p) = (self.scales[l], &self.cfg.pool);
            roi_align(&features[l], rois, out, s, p.sampling_ratio, p.aligned)
        };
        let x = fuse_levels(&self.conv1_head, pool, train)?;
        self.tail(x, train)
    }
}
