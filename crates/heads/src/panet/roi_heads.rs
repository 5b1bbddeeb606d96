//! PANet's RoI heads together: proposals -> box head -> post-processing -> mask head -> pasted
//! masks (ShuLiu1993/PANet `lib/core/test.py::im_detect_all` without test-time augmentation).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::ops::detection::Box4;
use segkit_core::{Error, FeatureSpec, Result};

use super::postprocess::{self, Detections, PanetDetectionConfig};
use super::{
    PanetBoxHead, PanetBoxHeadConfig, PanetBoxHeadOutput, PanetMaskHead, PanetMaskHeadConfig,
};

/// Configuration of [`PanetRoiHeads`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanetRoiHeadsConfig {
    /// The box head.
    pub box_head: PanetBoxHeadConfig,
    /// The mask head (`MODEL.MASK_ON`); `None` for a detector without masks.
    pub mask_head: Option<PanetMaskHeadConfig>,
    /// Test-time post-processing.
    pub detection: PanetDetectionConfig,
}

impl PanetRoiHeadsConfig {
    /// `e2e_panet_R-50-FPN_2x_mask.yaml` on COCO (81 classes with the background).
    pub fn panet_coco() -> Self {
        Self::panet(81)
    }

    /// PANet's heads for `num_classes` classes including the background.
    pub fn panet(num_classes: usize) -> Self {
        Self {
            box_head: PanetBoxHeadConfig::panet(num_classes),
            mask_head: Some(PanetMaskHeadConfig::panet(num_classes)),
            detection: PanetDetectionConfig::panet(),
        }
    }
}

/// Everything [`PanetRoiHeads::forward_test`] computes, for inspection and dumps.
#[derive(Debug, Clone)]
pub struct PanetRoiHeadsOutput {
    /// The RoIs the box head pooled, `K x 5` (network-input pixels).
    pub rois: Tensor,
    /// Box head outputs on the proposals.
    pub box_head: PanetBoxHeadOutput,
    /// Softmax class probabilities, `K x C` row-major.
    pub class_probs: Vec<f32>,
    /// The mask RoIs, one per detection (`K' x 5`), when there is a mask head.
    pub mask_rois: Option<Tensor>,
    /// Mask logits of the detections, `K' x C x 28 x 28`, when there is a mask head.
    pub mask_logits: Option<Tensor>,
    /// The detections.
    pub detections: Detections,
}

/// PANet's box and mask heads with the official test-time post-processing.
#[derive(Debug)]
pub struct PanetRoiHeads {
    cfg: PanetRoiHeadsConfig,
    box_head: PanetBoxHead,
    mask_head: Option<PanetMaskHead>,
}

impl PanetRoiHeads {
    /// Builds both heads over `inputs` (the RoI levels N2..N5, finest first) from `vb` at the
    /// model root (`Box_Head.*`, `Box_Outs.*`, `Mask_Head.*`, `Mask_Outs.*`).
    pub fn new(
        cfg: &PanetRoiHeadsConfig,
        inputs: &[FeatureSpec],
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        if let Some(m) = &cfg.mask_head {
            if m.cls_specific && m.num_classes != cfg.box_head.num_classes {
                return Err(Error::InvalidConfig(format!(
                    "PANet RoI heads: the mask head has {} classes, the box head {}",
                    m.num_classes, cfg.box_head.num_classes
                )));
            }
        }
        let box_head = PanetBoxHead::new(&cfg.box_head, inputs, vb.clone())?;
        let mask_head = match &cfg.mask_head {
            Some(m) => Some(PanetMaskHead::new(m, inputs, vb)?),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            box_head,
            mask_head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PanetRoiHeadsConfig {
        &self.cfg
    }

    /// The box head.
    pub fn box_head(&self) -> &PanetBoxHead {
        &self.box_head
    }

    /// The mask head, if any.
    pub fn mask_head(&self) -> Option<&PanetMaskHead> {
        self.mask_head.as_ref()
    }

    /// The detections of batch item `image` from its `proposals` (network-input pixels, e.g.
    /// `RpnProposals::boxes`); `im_scale` is network input / original image and `image_size`
    /// the original `(height, width)`, which the boxes are clipped to and the masks pasted into.
    pub fn detect(
        &self,
        features: &[Tensor],
        proposals: &[Box4],
        image: usize,
        im_scale: f64,
        image_size: (usize, usize),
    ) -> Result<Detections> {
        Ok(self
            .forward_test(features, proposals, image, im_scale, image_size)?
            .detections)
    }

    /// [`PanetRoiHeads::detect`] with every intermediate. Errors on a non-finite proposal
    /// coordinate, an image index outside the batch, a wrong number of feature maps or a
    /// non-positive scale.
    pub fn forward_test(
        &self,
        features: &[Tensor],
        proposals: &[Box4],
        image: usize,
        im_scale: f64,
        image_size: (usize, usize),
    ) -> Result<PanetRoiHeadsOutput> {
        let dev = features
            .first()
            .ok_or_else(|| Error::InvalidArgument("PANet RoI heads: no feature maps".into()))?
            .device();
        if let Some(i) = proposals
            .iter()
            .position(|b| b.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::InvalidArgument(format!(
                "PANet RoI heads: proposal {i} has a non-finite coordinate: {:?}",
                proposals[i]
            )));
        }
        let rois = postprocess::mask_rois(proposals, 1.0, image, dev)?;
        let box_out = self.box_head.forward_t(features, &rois, false)?;
        let c = self.cfg.box_head.num_classes;
        let det_cfg = &self.cfg.detection;
        let probs = postprocess::class_probs(&box_out.cls_score)?;
        let boxes = postprocess::decode_boxes(
            det_cfg,
            proposals,
            &box_out.bbox_pred,
            c,
            im_scale,
            image_size,
        )?;
        let (b, s, cl) = postprocess::nms_and_limit(det_cfg, &probs, &boxes, c)?;
        let mut dets = Detections {
            boxes: b,
            scores: s,
            classes: cl,
            ..Detections::empty(image_size.0, image_size.1)
        };
        let (mut mask_rois, mut mask_logits) = (None, None);
        if let Some(mh) = &self.mask_head {
            let r = postprocess::mask_rois(&dets.boxes, im_scale, image, dev)?;
            let logits = mh.forward_t(features, &r, false)?;
            postprocess::paste_masks(det_cfg, &mut dets, &logits)?;
            mask_rois = Some(r);
            mask_logits = Some(logits);
        }
        Ok(PanetRoiHeadsOutput {
            rois,
            box_head: box_out,
            class_probs: probs,
            mask_rois,
            mask_logits,
            detections: dets,
        })
    }
}
