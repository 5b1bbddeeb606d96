//! The FPN region proposal network of Detectron (v1), as PANet's official code runs it:
//! "Faster R-CNN" (Ren et al., 2015) on "Feature Pyramid Networks" (Lin et al., 2017).
//!
//! Matches ShuLiu1993/PANet `lib/modeling/FPN.py::fpn_rpn_outputs` (head),
//! `generate_proposals.py::GenerateProposalsOp` (per level) and
//! `collect_and_distribute_fpn_rpn_proposals.py` (`collect`, `distribute`) at test time:
//! - head, shared by levels 2..6: `FPN_RPN_conv` (3x3, bias) + ReLU, `FPN_RPN_cls_score` (1x1,
//!   one logit per anchor, sigmoid) and `FPN_RPN_bbox_pred` (1x1, 4 deltas per anchor); keys
//!   under `RPN.` in PANet's checkpoint;
//! - per level `l`: Detectron v1 anchors of size `32 * 2^(l - 2)` at stride `2^l` with ratios
//!   (0.5, 1, 2) on the grid; the `pre_nms_top_n` highest scores; decode with weights (1, 1, 1, 1)
//!   and the `log(1000 / 16)` clip; clip to the image; drop boxes smaller than `min_size * scale`
//!   or centred outside; NMS (`nms_thresh`, `+1` convention, `IoU >= t`); the first
//!   `post_nms_top_n`;
//! - collect: the `collect_top_n` highest-scoring proposals over all levels; distribute: each to
//!   level `floor(4 + log2(sqrt(area) / 224 + 1e-6))` clipped to 2..5, with the restore order.
//!
//! The pieces come from [`segkit_core::ops::detection`], so the box convention is a config field.
//! Detectron collects over the whole batch; this collects per image (the same at test time,
//! one image per batch).
//!
//! # Shapes
//! Inputs: N2..N6 (`N x C x H_l x W_l`). Head outputs per level: logits `N x A x H_l x W_l`,
//! deltas `N x 4A x H_l x W_l` (`A` = number of aspect ratios). Proposals: per image, at most
//! `collect_top_n` boxes `[x1, y1, x2, y2]` in input pixels with their scores.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::FeatureSpec;
//! use segkit_heads::{RpnConfig, RpnHead};
//! let dev = Device::Cpu;
//! let specs: Vec<_> = (2..=6).map(|l| FeatureSpec::new(8, 1 << l)).collect();
//! let rpn = RpnHead::new(&RpnConfig::detectron_test(), &specs, candle_nn::VarBuilder::zeros(DType::F32, &dev)).unwrap();
//! let xs: Vec<_> = (2..=6).map(|l| Tensor::zeros((1, 8, 64 >> l, 64 >> l), DType::F32, &dev).unwrap()).collect();
//! let out = rpn.forward_t(&xs, false).unwrap();
//! let p = rpn.proposals(&out, 0, [64.0, 64.0, 1.0]).unwrap();
//! assert!(p.boxes.len() <= 1000);
//! ```

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct};
use segkit_core::ops::detection::{
    self as det, Box4, BoxConvention, BoxTransform, LevelAssignment, LevelMapper,
};
use segkit_core::ops::Activation;
use segkit_core::{Error, FeatureSpec, Result};

/// Configuration of an [`RpnHead`] and its proposal generation (Detectron's `cfg.RPN`,
/// `cfg.FPN` and `cfg.TEST` fields).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpnConfig {
    /// Finest RPN level (`FPN.RPN_MIN_LEVEL`). Default 2.
    pub min_level: usize,
    /// Coarsest RPN level (`FPN.RPN_MAX_LEVEL`). Default 6.
    pub max_level: usize,
    /// Anchor size at `min_level`, doubling per level (`FPN.RPN_ANCHOR_START_SIZE`). Default 32.
    pub anchor_start_size: f64,
    /// Anchor aspect ratios, height / width (`FPN.RPN_ASPECT_RATIOS`). Default (0.5, 1, 2).
    pub aspect_ratios: Vec<f64>,
    /// Proposals kept per level before NMS (`RPN_PRE_NMS_TOP_N`; test 1000, train 2000).
    pub pre_nms_top_n: usize,
    /// Proposals kept per level after NMS (`RPN_POST_NMS_TOP_N`). Default 1000.
    pub post_nms_top_n: usize,
    /// Proposals kept over all levels (`RPN_POST_NMS_TOP_N * FPN.RPN_COLLECT_SCALE`). 1000.
    pub collect_top_n: usize,
    /// NMS IoU threshold (`RPN_NMS_THRESH`). Default 0.7.
    pub nms_thresh: f32,
    /// Minimum proposal side at the original image scale (`RPN_MIN_SIZE`). Default 0.
    pub min_size: f32,
    /// Box arithmetic (Detectron: [`BoxConvention::Legacy`]).
    pub convention: BoxConvention,
    /// RoI-to-level rule for distributing the proposals (levels 2..5, 224 at level 4).
    pub roi_levels: LevelMapper,
}

impl RpnConfig {
    /// PANet's / Detectron's test-time settings (`e2e_panet_R-50-FPN_2x_mask.yaml`).
    pub fn detectron_test() -> Self {
        Self {
            min_level: 2,
            max_level: 6,
            anchor_start_size: 32.0,
            aspect_ratios: vec![0.5, 1.0, 2.0],
            pre_nms_top_n: 1000,
            post_nms_top_n: 1000,
            collect_top_n: 1000,
            nms_thresh: 0.7,
            min_size: 0.0,
            convention: BoxConvention::Legacy,
            roi_levels: LevelMapper::detectron(),
        }
    }

    fn levels(&self) -> usize {
        self.max_level + 1 - self.min_level
    }
}

/// Raw head outputs, one entry per level (finest first).
#[derive(Debug, Clone)]
pub struct RpnHeadOutput {
    /// Objectness logits, `N x A x H_l x W_l` (Detectron's `rpn_cls_logits_fpn{l}`).
    pub cls_logits: Vec<Tensor>,
    /// Box deltas, `N x 4A x H_l x W_l` (`rpn_bbox_pred_fpn{l}`).
    pub bbox_pred: Vec<Tensor>,
}

/// The proposals of one image.
#[derive(Debug, Clone)]
pub struct RpnProposals {
    /// Per level (finest first), the boxes after NMS (`rpn_rois_fpn{l}`), by decreasing score.
    pub level_boxes: Vec<Vec<Box4>>,
    /// Their scores (`rpn_roi_probs_fpn{l}`).
    pub level_scores: Vec<Vec<f32>>,
    /// The collected proposals (`rois`), by decreasing score.
    pub boxes: Vec<Box4>,
    /// Their scores.
    pub scores: Vec<f32>,
    /// The collected proposals grouped by RoI level (`rois_fpn{l}`, `rois_idx_restore`).
    pub levels: LevelAssignment,
}

/// Detectron's FPN RPN head and test-time proposal generation (see the module docs).
pub struct RpnHead {
    cfg: RpnConfig,
    conv: ConvNormAct,
    cls: ConvNormAct,
    bbox: ConvNormAct,
    /// Cell anchors per level, finest first.
    anchors: Vec<Vec<[f64; 4]>>,
}

impl RpnHead {
    /// Builds the head for `inputs` (one spec per level `min_level..=max_level`, strides
    /// `2^l`, equal channels), with keys `FPN_RPN_conv.*`, `FPN_RPN_cls_score.*`,
    /// `FPN_RPN_bbox_pred.*`.
    pub fn new(cfg: &RpnConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        if cfg.min_level == 0 || cfg.min_level > cfg.max_level || cfg.max_level > 12 {
            return Err(Error::InvalidConfig(format!(
                "RPN levels {}..={} are not a range within 1..=12",
                cfg.min_level, cfg.max_level
            )));
        }
        if inputs.len() != cfg.levels() {
            return Err(Error::InvalidConfig(format!(
                "RPN on levels {}..={} needs {} inputs, got {}",
                cfg.min_level,
                cfg.max_level,
                cfg.levels(),
                inputs.len()
            )));
        }
        let c = inputs[0].channels;
        for (i, s) in inputs.iter().enumerate() {
            let l = cfg.min_level + i;
            if s.channels != c || s.stride != 1 << l {
                return Err(Error::InvalidConfig(format!(
                    "RPN input {i} (level {l}) must have {c} channels at stride {}, got {s:?}",
                    1 << l
                )));
            }
        }
        let a = cfg.aspect_ratios.len();
        let mut anchors = Vec::with_capacity(cfg.levels());
        for l in cfg.min_level..=cfg.max_level {
            let size = cfg.anchor_start_size * f64::from(1u32 << (l - cfg.min_level));
            anchors.push(det::detectron_cell_anchors(
                f64::from(1u32 << l),
                &[size],
                &cfg.aspect_ratios,
            )?);
        }
        let conv = |cin, cout, k, act, name: &str| {
            let m = ConvModuleConfig::new(cin, cout, k)
                .padding(k / 2)
                .norm(None)
                .bias(true)
                .act(act);
            ConvNormAct::new_with_paths(&m, vb.pp(name), vb.pp(name))
        };
        Ok(Self {
            cfg: cfg.clone(),
            conv: conv(c, c, 3, Activation::Relu, "FPN_RPN_conv")?,
            cls: conv(c, a, 1, Activation::None, "FPN_RPN_cls_score")?,
            bbox: conv(c, 4 * a, 1, Activation::None, "FPN_RPN_bbox_pred")?,
            anchors,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RpnConfig {
        &self.cfg
    }

    /// Runs the shared head on every level.
    pub fn forward_t(&self, features: &[Tensor], train: bool) -> Result<RpnHeadOutput> {
        if features.len() != self.cfg.levels() {
            return Err(Error::InvalidArgument(format!(
                "RPN head: expected {} feature maps (levels {}..={}), got {}",
                self.cfg.levels(),
                self.cfg.min_level,
                self.cfg.max_level,
                features.len()
            )));
        }
        let (mut cls_logits, mut bbox_pred) = (Vec::new(), Vec::new());
        for x in features {
            let y = self.conv.forward_t(x, train)?;
            cls_logits.push(self.cls.forward_t(&y, train)?);
            bbox_pred.push(self.bbox.forward_t(&y, train)?);
        }
        Ok(RpnHeadOutput {
            cls_logits,
            bbox_pred,
        })
    }

    /// Test-time proposals of image `image` of the batch; `im_info` is Detectron's
    /// `[height, width, scale]` of the network input (scale: input / original image).
    pub fn proposals(
        &self,
        out: &RpnHeadOutput,
        image: usize,
        im_info: [f32; 3],
    ) -> Result<RpnProposals> {
        let cfg = &self.cfg;
        if out.cls_logits.len() != cfg.levels() || out.bbox_pred.len() != cfg.levels() {
            return Err(Error::InvalidArgument(format!(
                "RPN proposals: expected {} levels of outputs, got {} / {}",
                cfg.levels(),
                out.cls_logits.len(),
                out.bbox_pred.len()
            )));
        }
        let (mut level_boxes, mut level_scores) = (Vec::new(), Vec::new());
        for (li, (logits, deltas)) in out.cls_logits.iter().zip(&out.bbox_pred).enumerate() {
            let stride = f64::from(1u32 << (cfg.min_level + li));
            let (b, s) =
                self.level_proposals(logits, deltas, &self.anchors[li], stride, image, im_info)?;
            level_boxes.push(b);
            level_scores.push(s);
        }
        let lists: Vec<&[f32]> = level_scores.iter().map(Vec::as_slice).collect();
        let top = det::top_k_across(&lists, cfg.collect_top_n);
        let boxes: Vec<Box4> = top.iter().map(|&(l, i)| level_boxes[l][i]).collect();
        let scores: Vec<f32> = top.iter().map(|&(l, i)| level_scores[l][i]).collect();
        let lv = det::map_rois_to_levels(&boxes, &cfg.roi_levels);
        let levels = det::distribute_to_levels(&lv, cfg.roi_levels.k_min, cfg.roi_levels.k_max)?;
        Ok(RpnProposals {
            level_boxes,
            level_scores,
            boxes,
            scores,
            levels,
        })
    }

    /// `GenerateProposalsOp.proposals_for_one_image` for one level.
    fn level_proposals(
        &self,
        logits: &Tensor,
        deltas: &Tensor,
        cell: &[[f64; 4]],
        stride: f64,
        image: usize,
        im_info: [f32; 3],
    ) -> Result<(Vec<Box4>, Vec<f32>)> {
        let cfg = &self.cfg;
        let a = cell.len();
        let (n, ca, h, w) = logits.dims4()?;
        if ca != a || deltas.dims() != [n, 4 * a, h, w] || image >= n {
            return Err(Error::shape(
                format!("RPN level outputs of image {image}: logits N x {a} x H x W, deltas N x {} x H x W", 4 * a),
                &[n, 4 * a, h, w],
                deltas.dims(),
            ));
        }
        // (A, H, W) -> (H, W, A): scores in anchor order; deltas (4A, H, W) -> (H, W, 4A).
        let probs = candle_nn::ops::sigmoid(&logits.get(image)?.to_dtype(DType::F32)?)?;
        let scores = probs.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?;
        let d = deltas.get(image)?.to_dtype(DType::F32)?;
        let d = d.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?;
        let anchors = det::grid_anchors(cell, stride, h, w);
        let order = det::top_k(&scores, cfg.pre_nms_top_n);
        let sel_anchors: Vec<Box4> = order.iter().map(|&i| anchors[i]).collect();
        let sel_deltas: Vec<f32> = order
            .iter()
            .flat_map(|&i| d[4 * i..4 * i + 4].iter().copied())
            .collect();
        let coder = BoxTransform::new([1.0; 4], cfg.convention);
        let mut props = coder.decode(&sel_anchors, &sel_deltas)?;
        let [ih, iw, scale] = im_info;
        det::clip_boxes(&mut props, ih, iw, cfg.convention);
        let props: Vec<Box4> = props
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect();
        let keep = det::filter_proposals(&props, cfg.min_size, scale, ih, iw, cfg.convention);
        let props: Vec<Box4> = keep.iter().map(|&i| props[i]).collect();
        let sc: Vec<f32> = keep.iter().map(|&i| scores[order[i]]).collect();
        let mut keep = det::nms_boxes(&props, &sc, cfg.nms_thresh, cfg.convention)?;
        keep.truncate(cfg.post_nms_top_n);
        Ok((
            keep.iter().map(|&i| props[i]).collect(),
            keep.iter().map(|&i| sc[i]).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn specs() -> Vec<FeatureSpec> {
        (2..=6).map(|l| FeatureSpec::new(4, 1 << l)).collect()
    }

    #[test]
    fn bad_wiring_is_a_typed_error_and_empty_images_work() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let cfg = RpnConfig::detectron_test();
        assert!(matches!(
            RpnHead::new(&cfg, &specs()[..4], vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        let mut bad = specs();
        bad[1].stride = 16;
        assert!(matches!(
            RpnHead::new(&cfg, &bad, vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        let rpn = RpnHead::new(&cfg, &specs(), vb).unwrap();
        let xs: Vec<Tensor> = (0..5)
            .map(|_| Tensor::zeros((1, 4, 1, 1), DType::F32, &Device::Cpu).unwrap())
            .collect();
        assert!(rpn.forward_t(&xs[..3], false).is_err());
        let out = rpn.forward_t(&xs, false).unwrap();
        // A 1x1 image: every proposal clips to the single pixel; NMS keeps one per level.
        let p = rpn.proposals(&out, 0, [1.0, 1.0, 1.0]).unwrap();
        assert_eq!(p.boxes.len(), 5);
        assert!(p.boxes.iter().all(|b| *b == [0.0, 0.0, 0.0, 0.0]));
        assert!(rpn.proposals(&out, 1, [1.0, 1.0, 1.0]).is_err());
    }
}
