//! PANet's training forward pass, as the official training code (ShuLiu1993/PANet,
//! `lib/modeling/model_builder.py` with `rpn_heads.py`, `collect_and_distribute_fpn_rpn_proposals.py`,
//! `roi_data/{rpn,fast_rcnn,mask_rcnn}.py`, `fast_rcnn_heads.py`, `mask_rcnn_heads.py`):
//!
//! 1. body, pyramid and RPN head on the batch blob (`N x 3 x Hp x Wp`);
//! 2. RPN targets per image (anchors of every level, non-crowd gt boxes scaled to the network
//!    input) and `loss_rpn_cls` / `loss_rpn_bbox` ([`segkit_losses::detection::fpn_rpn_losses`]);
//! 3. training proposals, not differentiated: per image and level the top
//!    [`PanetTrainConfig::pre_nms_top_n`] scores (2000), decoded, clipped, filtered, NMS 0.7,
//!    at most [`PanetTrainConfig::post_nms_top_n`] (2000) kept; then the collect keeps the top
//!    [`PanetTrainConfig::collect_top_n`] (2000 x `FPN.RPN_COLLECT_SCALE`) over the whole
//!    batch — all images and levels together, not per image;
//! 4. RoI sampling per image (512 RoIs, gt boxes among the candidates, in the original image's
//!    frame, then scaled back) and the box head on every RoI from every level:
//!    `loss_cls` / `loss_bbox` ([`segkit_losses::detection::fast_rcnn_losses`], beta 1/3);
//! 5. mask targets of the foreground RoIs from bitmap masks ([`det::GtMask::Bitmap`]) and the
//!    mask head: `loss_mask` ([`segkit_losses::detection::mask_rcnn_loss`]).
//!
//! Random draws (RPN anchors of image 0, 1, .., then RoIs of image 0, 1, ..) go through one
//! [`IndexSampler`], so a recorded run can be replayed ([`det::ReplaySampler`]).

use candle_core::{DType, Device, Tensor};
use segkit_core::ops::detection::{
    self as det, Box4, BoxTransform, GtInstances, GtMask, IndexSampler, MaskTargets,
    RoiSamplerConfig, RoiTargets, RpnTargetConfig,
};
use segkit_core::{Backbone, Neck};
use segkit_losses::detection::{
    fast_rcnn_losses, fpn_rpn_losses, mask_rcnn_loss, RpnLevelInputs, PANET_BOX_BETA,
};

use super::{Panet, ROI_LEVELS};
use crate::{Error, Result};

/// Training settings of [`Panet::forward_train`] (the official `TRAIN.*` values by
/// [`PanetTrainConfig::official`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanetTrainConfig {
    /// Proposals per image and level before NMS (`TRAIN.RPN_PRE_NMS_TOP_N`, 2000).
    pub pre_nms_top_n: usize,
    /// Proposals per image and level after NMS (`TRAIN.RPN_POST_NMS_TOP_N`, 2000).
    pub post_nms_top_n: usize,
    /// Proposals kept over the whole batch by the collect (2000).
    pub collect_top_n: usize,
    /// RPN anchor labelling and sampling.
    pub rpn_targets: RpnTargetConfig,
    /// RoI sampling and box-target coding.
    pub roi_sampler: RoiSamplerConfig,
}

impl PanetTrainConfig {
    /// `e2e_panet_R-50-FPN_2x_mask.yaml`'s training settings for `num_classes` classes
    /// (background included).
    pub fn official(num_classes: usize) -> Self {
        Self {
            pre_nms_top_n: 2000,
            post_nms_top_n: 2000,
            collect_top_n: 2000,
            rpn_targets: RpnTargetConfig::detectron(),
            roi_sampler: RoiSamplerConfig::panet(num_classes),
        }
    }
}

/// The gt instances of one training image, in its ORIGINAL pixels (before the resize).
#[derive(Debug, Clone, Default)]
pub struct PanetTrainImage {
    /// Boxes `[x1, y1, x2, y2]` (Detectron's inclusive `+1` convention).
    pub boxes: Vec<Box4>,
    /// Classes in `1..num_classes`.
    pub classes: Vec<usize>,
    /// COCO `iscrowd`.
    pub crowd: Vec<bool>,
    /// One row-major `height x width` bitmap per instance (nonzero inside).
    pub masks: Vec<Vec<u8>>,
    /// Original `(height, width)`, the masks' size.
    pub size: (usize, usize),
    /// `[height, width, scale]` of the resized, unpadded image in the blob (Detectron's
    /// `im_info`).
    pub im_info: [f32; 3],
}

/// The five named losses of one training step (the official names) and the box head's
/// accuracy.
#[derive(Debug, Clone)]
pub struct PanetLosses {
    /// RPN objectness BCE.
    pub loss_rpn_cls: Tensor,
    /// RPN smooth-L1 (beta 1/9).
    pub loss_rpn_bbox: Tensor,
    /// Box head cross-entropy.
    pub loss_cls: Tensor,
    /// Box head smooth-L1 (beta 1/3).
    pub loss_bbox: Tensor,
    /// Mask BCE on the class channel.
    pub loss_mask: Tensor,
    /// Box head classification accuracy over the sampled RoIs.
    pub accuracy_cls: f32,
    /// Proposals after the collect, over the batch.
    pub num_proposals: usize,
}

impl PanetLosses {
    /// The losses with their official names.
    pub fn named(&self) -> [(&'static str, &Tensor); 5] {
        [
            ("loss_rpn_cls", &self.loss_rpn_cls),
            ("loss_rpn_bbox", &self.loss_rpn_bbox),
            ("loss_cls", &self.loss_cls),
            ("loss_bbox", &self.loss_bbox),
            ("loss_mask", &self.loss_mask),
        ]
    }

    /// The sum of the five losses.
    pub fn total(&self) -> Result<Tensor> {
        let mut t = self.loss_rpn_cls.clone();
        for (_, l) in &self.named()[1..] {
            t = (t + *l)?;
        }
        Ok(t)
    }
}

/// `(H, W)` of one pyramid level.
type LevelShape = (usize, usize);

/// Training proposals of the batch: `(image, box, score)` in the network input's pixels.
pub type BatchProposals = Vec<(usize, Box4, f32)>;

impl Panet {
    /// One training step's forward pass (see the module docs): `x` is the `N x 3 x Hp x Wp`
    /// blob of `images` (Detectron's training blob: BGR minus means, resized by each image's
    /// `im_info` scale, zero-padded). Returns the five losses.
    ///
    /// Errors: a batch size that differs from `images.len()`, instances whose boxes, classes,
    /// crowd flags and masks disagree in number, masks of the wrong size, classes out of range.
    pub fn forward_train(
        &self,
        x: &Tensor,
        images: &[PanetTrainImage],
        cfg: &PanetTrainConfig,
        sampler: &mut dyn IndexSampler,
    ) -> Result<PanetLosses> {
        let n = x.dims().first().copied().unwrap_or(0);
        if x.rank() != 4 || n != images.len() || n == 0 {
            return Err(Error::InvalidConfig(format!(
                "PANet training forward: blob {:?} for {} image(s)",
                x.dims(),
                images.len()
            )));
        }
        check_images(images)?;
        let c = self.body.forward_features(x, true)?;
        let levels = self.fpn.forward_t(&c, true)?;
        let rpn = self.rpn.forward_t(&levels, true)?;
        let (loss_rpn_cls, loss_rpn_bbox) = self.rpn_losses(&rpn, images, cfg, sampler)?;
        let props = self.train_proposals(&rpn, images, cfg)?;
        let num_proposals = props.len();
        let feats = &levels[..ROI_LEVELS];
        let mut targets = Vec::with_capacity(n);
        for (i, img) in images.iter().enumerate() {
            // add_proposals: proposals / f32(im_scale) into the gt frame.
            let inv = 1.0 / f64::from(img.im_info[2]);
            let mine: Vec<Box4> = props.iter().filter(|p| p.0 == i).map(|p| p.1).collect();
            let gt = gt_of(img);
            let t = det::sample_rois(
                &det::scale_boxes(&mine, inv),
                &gt,
                &cfg.roi_sampler,
                sampler,
            )?;
            targets.push(t);
        }
        let dev = x.device();
        let rois = rois_tensor(images, targets.iter().map(|t| &t.rois), dev)?;
        let heads = &self.heads;
        let boxes = heads.box_head().forward_t(feats, &rois, true)?;
        let (labels, tg, iw, ow) = box_blobs(&targets, cfg.roi_sampler.num_reg_classes(), dev)?;
        let fast = fast_rcnn_losses(
            &boxes.cls_score,
            &boxes.bbox_pred,
            &labels,
            &tg,
            &iw,
            &ow,
            PANET_BOX_BETA,
        )?;
        let loss_mask = match heads.mask_head() {
            Some(mh) => {
                let m = mh.config().resolution;
                let masks = mask_targets_of(images, &targets, m, cfg)?;
                let mrois = rois_tensor(images, masks.iter().map(|t| &t.rois), dev)?;
                let logits = mh.forward_t(feats, &mrois, true)?;
                let classes: Vec<usize> = masks.iter().flat_map(|t| t.classes.clone()).collect();
                let tgt: Vec<f32> = masks
                    .iter()
                    .flat_map(|t| t.masks.iter().map(|&v| v as f32))
                    .collect();
                let tgt = Tensor::from_vec(tgt, (classes.len(), m, m), dev)?;
                mask_rcnn_loss(&logits, &classes, &tgt, 1.0)?
            }
            None => Tensor::zeros((), DType::F32, dev)?,
        };
        Ok(PanetLosses {
            loss_rpn_cls,
            loss_rpn_bbox,
            loss_cls: fast.cls,
            loss_bbox: fast.bbox,
            loss_mask,
            accuracy_cls: fast.accuracy,
            num_proposals,
        })
    }
}

impl Panet {
    /// RPN targets of every image and the two RPN losses.
    fn rpn_losses(
        &self,
        rpn: &segkit_heads::RpnHeadOutput,
        images: &[PanetTrainImage],
        cfg: &PanetTrainConfig,
        sampler: &mut dyn IndexSampler,
    ) -> Result<(Tensor, Tensor)> {
        let (anchors, shapes) = self.all_anchors(rpn)?;
        let a = self.rpn.config().aspect_ratios.len();
        let mut targets = Vec::with_capacity(images.len());
        for img in images {
            let gt: Vec<Box4> = img
                .boxes
                .iter()
                .zip(&img.crowd)
                .filter(|(_, &c)| !c)
                .map(|(b, _)| *b)
                .collect();
            let gt = det::scale_boxes(&gt, f64::from(img.im_info[2]));
            let [ih, iw, _] = img.im_info;
            targets.push(det::rpn_targets(
                &anchors,
                &gt,
                ih,
                iw,
                &cfg.rpn_targets,
                sampler,
            )?);
        }
        let n = images.len();
        let dev = rpn.cls_logits[0].device();
        let (mut blobs, mut offset) = (Vec::with_capacity(shapes.len()), 0);
        for &(h, w) in &shapes {
            let lv = targets
                .iter()
                .map(|t| t.level(offset, h, w, a))
                .collect::<segkit_core::Result<Vec<_>>>()?;
            offset += h * w * a;
            let labels: Vec<f32> = lv
                .iter()
                .flat_map(|l| l.labels.iter().map(|&v| v as f32))
                .collect();
            let cat = |g: fn(&det::RpnLevelTargets) -> &Vec<f32>| {
                let v: Vec<f32> = lv.iter().flat_map(|l| g(l).iter().copied()).collect();
                Tensor::from_vec(v, (n, 4 * a, h, w), dev)
            };
            blobs.push([
                Tensor::from_vec(labels, (n, a, h, w), dev)?,
                cat(|l| &l.bbox_targets)?,
                cat(|l| &l.inside_weights)?,
                cat(|l| &l.outside_weights)?,
            ]);
        }
        let inputs: Vec<RpnLevelInputs<'_>> = rpn
            .cls_logits
            .iter()
            .zip(&rpn.bbox_pred)
            .zip(&blobs)
            .map(|((lo, de), b)| RpnLevelInputs {
                logits: lo,
                deltas: de,
                labels: &b[0],
                bbox_targets: &b[1],
                inside_weights: &b[2],
                outside_weights: &b[3],
            })
            .collect();
        let l = fpn_rpn_losses(&inputs, cfg.rpn_targets.batch_size_per_image)?;
        Ok((l.cls, l.bbox))
    }

    /// The anchors of every RPN level (position-major, anchor fastest, finest level first) and
    /// the levels' `(H, W)`.
    fn all_anchors(
        &self,
        rpn: &segkit_heads::RpnHeadOutput,
    ) -> Result<(Vec<Box4>, Vec<LevelShape>)> {
        let rc = self.rpn.config();
        let (mut anchors, mut shapes) = (Vec::new(), Vec::new());
        for (li, logits) in rpn.cls_logits.iter().enumerate() {
            let (stride, cell) = self.cell_anchors(li)?;
            let (_, _, h, w) = logits.dims4()?;
            anchors.extend(det::grid_anchors(&cell, stride, h, w));
            shapes.push((h, w));
        }
        debug_assert_eq!(shapes.len(), rc.max_level + 1 - rc.min_level);
        Ok((anchors, shapes))
    }

    fn cell_anchors(&self, li: usize) -> Result<(f64, Vec<[f64; 4]>)> {
        let rc = self.rpn.config();
        let stride = f64::from(1u32 << (rc.min_level + li));
        let size = rc.anchor_start_size * f64::from(1u32 << li);
        let cell = det::detectron_cell_anchors(stride, &[size], &rc.aspect_ratios)?;
        Ok((stride, cell))
    }

    /// Training proposals (see the module docs), not differentiated: per image and level,
    /// then the top `collect_top_n` over the batch.
    pub fn train_proposals(
        &self,
        rpn: &segkit_heads::RpnHeadOutput,
        images: &[PanetTrainImage],
        cfg: &PanetTrainConfig,
    ) -> Result<BatchProposals> {
        let rc = self.rpn.config();
        let coder = BoxTransform::new([1.0; 4], rc.convention);
        // The official collect concatenates the levels, each holding every image's proposals.
        let mut lists: Vec<(usize, Vec<Box4>, Vec<f32>)> = Vec::new();
        for (li, (logits, deltas)) in rpn.cls_logits.iter().zip(&rpn.bbox_pred).enumerate() {
            let (stride, cell) = self.cell_anchors(li)?;
            let (_, _, h, w) = logits.dims4()?;
            let anchors = det::grid_anchors(&cell, stride, h, w);
            let probs = candle_nn::ops::sigmoid(&logits.detach().to_dtype(DType::F32)?)?;
            let deltas = deltas.detach().to_dtype(DType::F32)?;
            for (i, img) in images.iter().enumerate() {
                let scores = probs
                    .get(i)?
                    .permute((1, 2, 0))?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let d = deltas
                    .get(i)?
                    .permute((1, 2, 0))?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let order = det::top_k(&scores, cfg.pre_nms_top_n);
                let sel: Vec<Box4> = order.iter().map(|&j| anchors[j]).collect();
                let sd: Vec<f32> = order
                    .iter()
                    .flat_map(|&j| d[4 * j..4 * j + 4].to_vec())
                    .collect();
                let mut props = coder.decode(&sel, &sd)?;
                let [ih, iw, scale] = img.im_info;
                det::clip_boxes(&mut props, ih, iw, rc.convention);
                let props: Vec<Box4> = props
                    .chunks_exact(4)
                    .map(|c| [c[0], c[1], c[2], c[3]])
                    .collect();
                let keep = det::filter_proposals(&props, rc.min_size, scale, ih, iw, rc.convention);
                let props: Vec<Box4> = keep.iter().map(|&k| props[k]).collect();
                let sc: Vec<f32> = keep.iter().map(|&k| scores[order[k]]).collect();
                let mut keep = det::nms_boxes(&props, &sc, rc.nms_thresh, rc.convention)?;
                keep.truncate(cfg.post_nms_top_n);
                lists.push((
                    i,
                    keep.iter().map(|&k| props[k]).collect(),
                    keep.iter().map(|&k| sc[k]).collect(),
                ));
            }
        }
        let scores: Vec<&[f32]> = lists.iter().map(|l| l.2.as_slice()).collect();
        Ok(det::top_k_across(&scores, cfg.collect_top_n)
            .into_iter()
            .map(|(l, j)| (lists[l].0, lists[l].1[j], lists[l].2[j]))
            .collect())
    }
}

fn gt_of(img: &PanetTrainImage) -> GtInstances<'_> {
    GtInstances {
        boxes: &img.boxes,
        classes: &img.classes,
        crowd: &img.crowd,
    }
}

fn check_images(images: &[PanetTrainImage]) -> Result<()> {
    for (i, img) in images.iter().enumerate() {
        let k = img.boxes.len();
        let (h, w) = img.size;
        if img.classes.len() != k || img.crowd.len() != k || img.masks.len() != k {
            return Err(Error::InvalidConfig(format!(
                "PANet training image {i}: {k} boxes, {} classes, {} crowd flags, {} masks",
                img.classes.len(),
                img.crowd.len(),
                img.masks.len()
            )));
        }
        if let Some(j) = img.masks.iter().position(|m| m.len() != h * w) {
            return Err(Error::InvalidConfig(format!(
                "PANet training image {i}: mask {j} has {} pixels, the image is {h} x {w}",
                img.masks[j].len()
            )));
        }
        let [ih, iw, s] = img.im_info;
        if !(ih >= 1.0 && iw >= 1.0 && s > 0.0 && s.is_finite()) {
            return Err(Error::InvalidConfig(format!(
                "PANet training image {i}: bad im_info {:?}",
                img.im_info
            )));
        }
    }
    Ok(())
}

/// `K x 5` RoIs `(image, box * im_scale)` in the network input's pixels.
fn rois_tensor<'a>(
    images: &[PanetTrainImage],
    per_image: impl Iterator<Item = &'a Vec<Box4>>,
    dev: &Device,
) -> Result<Tensor> {
    let mut v = Vec::new();
    for (i, boxes) in per_image.enumerate() {
        for b in det::scale_boxes(boxes, f64::from(images[i].im_info[2])) {
            v.extend_from_slice(&[i as f32, b[0], b[1], b[2], b[3]]);
        }
    }
    let k = v.len() / 5;
    Ok(Tensor::from_vec(v, (k, 5), dev)?)
}

/// The box head's labels and `R x 4K` target / weight blobs over the batch.
fn box_blobs(
    targets: &[RoiTargets],
    reg_classes: usize,
    dev: &Device,
) -> Result<(Vec<usize>, Tensor, Tensor, Tensor)> {
    let labels: Vec<usize> = targets.iter().flat_map(|t| t.labels.clone()).collect();
    let r = labels.len();
    let cat = |g: fn(&RoiTargets) -> &Vec<f32>| {
        let v: Vec<f32> = targets.iter().flat_map(|t| g(t).iter().copied()).collect();
        Tensor::from_vec(v, (r, 4 * reg_classes), dev)
    };
    Ok((
        labels,
        cat(|t| &t.bbox_targets)?,
        cat(|t| &t.inside_weights)?,
        cat(|t| &t.outside_weights)?,
    ))
}

/// Mask targets of every image from its bitmap masks.
fn mask_targets_of(
    images: &[PanetTrainImage],
    targets: &[RoiTargets],
    m: usize,
    cfg: &PanetTrainConfig,
) -> Result<Vec<MaskTargets>> {
    let mut no_polygons = |_: &[Vec<f64>], _: usize| -> segkit_core::Result<Vec<u8>> {
        Err(segkit_core::Error::InvalidArgument(
            "PANet training: polygon masks are not supported here (bitmaps only)".into(),
        ))
    };
    images
        .iter()
        .zip(targets)
        .map(|(img, t)| {
            let (h, w) = img.size;
            let gm: Vec<GtMask<'_>> = img
                .masks
                .iter()
                .map(|mask| GtMask::Bitmap {
                    mask,
                    height: h,
                    width: w,
                })
                .collect();
            let conv = cfg.roi_sampler.transform.convention;
            Ok(det::mask_targets(
                t,
                &gt_of(img),
                &gm,
                m,
                conv,
                &mut no_polygons,
            )?)
        })
        .collect()
}
