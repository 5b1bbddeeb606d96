//! Test-time post-processing of PANet's RoI heads, exactly as ShuLiu1993/PANet
//! `lib/core/test.py` (Detectron's):
//!
//! 1. `im_detect_bbox`: proposals (network-input pixels) divided by the image scale (in `f32`),
//!    decoded with every class's deltas and `MODEL.BBOX_REG_WEIGHTS` (10, 10, 5, 5) under the
//!    `+1` convention (`bbox_transform`, `dw`/`dh` clipped at `log(1000 / 16)`), clipped to the
//!    original image (`clip_tiled_boxes`); scores are the softmax of the class logits;
//! 2. `box_results_with_nms_and_limit`: for every foreground class `j >= 1`, the proposals with
//!    score `> TEST.SCORE_THRESH` (0.05), greedy NMS at `TEST.NMS` (0.5, `+1` IoU, suppress at
//!    `IoU >= t`); then over all classes, if more than `TEST.DETECTIONS_PER_IM` (100) remain,
//!    those with score `>=` the 100th highest (ties may keep a few more); results ordered by
//!    class, then by decreasing score;
//! 3. `im_detect_mask` + `segm_results`: the detections scaled back to the network input
//!    (`f64` product, stored as `f32`) are the mask RoIs; the mask head's sigmoid on each
//!    detection's class channel is pasted into the original image
//!    ([`segkit_core::ops::detection::paste_mask_detectron`]: pad to 30x30, box expanded by
//!    30/28, OpenCV bilinear resize, `> 0.5`).
//!
//! No detection gives an empty, valid [`Detections`].

use candle_core::{DType, Tensor};
use segkit_core::ops::detection::{
    clip_boxes, nms_boxes, paste_mask_detectron, Box4, BoxConvention, BoxTransform,
};
use segkit_core::{Error, Result};

/// Test-time settings (Detectron's `cfg.TEST`, `MODEL.BBOX_REG_WEIGHTS`,
/// `MRCNN.THRESH_BINARIZE`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanetDetectionConfig {
    /// Minimum class probability, exclusive (`TEST.SCORE_THRESH`). 0.05.
    pub score_thresh: f32,
    /// Per-class NMS IoU threshold (`TEST.NMS`; PANet's config 0.5).
    pub nms_thresh: f32,
    /// Detections kept per image over all classes; 0 keeps all (`TEST.DETECTIONS_PER_IM`). 100.
    pub detections_per_image: usize,
    /// Box regression weights `(wx, wy, ww, wh)` (`MODEL.BBOX_REG_WEIGHTS`). (10, 10, 5, 5).
    pub bbox_reg_weights: [f32; 4],
    /// Box arithmetic (Detectron: [`BoxConvention::Legacy`], the `+1` widths).
    pub convention: BoxConvention,
    /// Mask probability threshold, exclusive (`MRCNN.THRESH_BINARIZE`). 0.5.
    pub mask_thresh: f32,
}

impl Default for PanetDetectionConfig {
    fn default() -> Self {
        Self::panet()
    }
}

impl PanetDetectionConfig {
    /// PANet's test settings (`e2e_panet_R-50-FPN_2x_mask.yaml` over Detectron's defaults).
    pub fn panet() -> Self {
        Self {
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_image: 100,
            bbox_reg_weights: [10.0, 10.0, 5.0, 5.0],
            convention: BoxConvention::Legacy,
            mask_thresh: 0.5,
        }
    }
}

/// The detections of one image, ordered by class, then by decreasing score (Detectron's
/// `vstack` of the per-class results).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detections {
    /// Boxes `[x1, y1, x2, y2]` in original-image pixels (`+1` convention: inclusive).
    pub boxes: Vec<Box4>,
    /// Class probabilities.
    pub scores: Vec<f32>,
    /// Classes, `1..num_classes` (0 is the background and never detected).
    pub classes: Vec<usize>,
    /// Per detection, the `resolution x resolution` mask probabilities of its class (row-major);
    /// empty without a mask head.
    pub mask_probs: Vec<Vec<f32>>,
    /// Side of `mask_probs` (28 for PANet; 0 without a mask head).
    pub mask_resolution: usize,
    /// Per detection, the binary mask pasted into the image (`height x width` row-major, 1 =
    /// instance); empty without a mask head.
    pub masks: Vec<Vec<u8>>,
    /// Original image height.
    pub height: usize,
    /// Original image width.
    pub width: usize,
}

impl Detections {
    /// No detection in an image of `height x width`.
    pub fn empty(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            ..Self::default()
        }
    }

    /// Number of detections.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// Whether there is no detection.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }
}

fn tensor_rows(t: &Tensor, what: &str, rows: usize) -> Result<(Vec<f32>, usize)> {
    let dims = t.dims();
    if dims.len() != 2 || dims[0] != rows {
        return Err(Error::shape(
            what,
            &[rows, dims.get(1).copied().unwrap_or(0)],
            dims,
        ));
    }
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((v, dims[1]))
}

/// Class probabilities: the softmax of `cls_score` (`K x C`), row-major.
pub fn class_probs(cls_score: &Tensor) -> Result<Vec<f32>> {
    let rows = cls_score.dims().first().copied().unwrap_or(0);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let p = candle_nn::ops::softmax_last_dim(&cls_score.to_dtype(DType::F32)?)?;
    Ok(tensor_rows(&p, "class scores", rows)?.0)
}

/// Per-class boxes `K x 4C` (row-major) in original-image pixels: `im_detect_bbox`'s decoding
/// of `bbox_pred` (`K x 4C`, or `K x 8` class-agnostic: the last four deltas, tiled) on the
/// `proposals` (network-input pixels) divided by `im_scale`, clipped to `height x width`.
pub fn decode_boxes(
    cfg: &PanetDetectionConfig,
    proposals: &[Box4],
    bbox_pred: &Tensor,
    num_classes: usize,
    im_scale: f64,
    (height, width): (usize, usize),
) -> Result<Vec<f32>> {
    let k = proposals.len();
    if k == 0 {
        return Ok(Vec::new());
    }
    let (deltas, cols) = tensor_rows(bbox_pred, "box deltas", k)?;
    if !(im_scale.is_finite() && im_scale > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "PANet detections: image scale {im_scale} is not a positive number"
        )));
    }
    let s = im_scale as f32;
    let boxes: Vec<Box4> = proposals.iter().map(|b| b.map(|v| v / s)).collect();
    let coder = BoxTransform::new(cfg.bbox_reg_weights, cfg.convention);
    let mut out = if cols == 4 * num_classes {
        coder.decode(&boxes, &deltas)?
    } else if cols == 8 {
        let last: Vec<f32> = deltas
            .chunks_exact(8)
            .flat_map(|r| r[4..].to_vec())
            .collect();
        let one = coder.decode(&boxes, &last)?;
        one.chunks_exact(4)
            .flat_map(|b| b.iter().copied().cycle().take(4 * num_classes))
            .collect()
    } else {
        return Err(Error::shape(
            "box deltas",
            &[k, 4 * num_classes],
            bbox_pred.dims(),
        ));
    };
    clip_boxes(&mut out, height as f32, width as f32, cfg.convention);
    Ok(out)
}

/// `box_results_with_nms_and_limit`: from `scores` (`K x C`) and per-class `boxes` (`K x 4C`),
/// the kept `(boxes, scores, classes)`, ordered by class then decreasing score.
pub fn nms_and_limit(
    cfg: &PanetDetectionConfig,
    scores: &[f32],
    boxes: &[f32],
    num_classes: usize,
) -> Result<(Vec<Box4>, Vec<f32>, Vec<usize>)> {
    let c = num_classes;
    if c == 0 || !scores.len().is_multiple_of(c) || boxes.len() != 4 * scores.len() {
        return Err(Error::InvalidArgument(format!(
            "PANet detections: {} scores and {} box coordinates for {c} classes",
            scores.len(),
            boxes.len()
        )));
    }
    let k = scores.len() / c;
    let mut per_class: Vec<(Vec<Box4>, Vec<f32>)> = Vec::with_capacity(c);
    for j in 1..c {
        let inds: Vec<usize> = (0..k)
            .filter(|&i| scores[i * c + j] > cfg.score_thresh)
            .collect();
        let bj: Vec<Box4> = inds
            .iter()
            .map(|&i| {
                let o = i * 4 * c + 4 * j;
                [boxes[o], boxes[o + 1], boxes[o + 2], boxes[o + 3]]
            })
            .collect();
        let sj: Vec<f32> = inds.iter().map(|&i| scores[i * c + j]).collect();
        let keep = nms_boxes(&bj, &sj, cfg.nms_thresh, cfg.convention)?;
        per_class.push((
            keep.iter().map(|&i| bj[i]).collect(),
            keep.iter().map(|&i| sj[i]).collect(),
        ));
    }
    let limit = cfg.detections_per_image;
    let mut all: Vec<f32> = per_class.iter().flat_map(|p| p.1.iter().copied()).collect();
    let thresh = if limit > 0 && all.len() > limit {
        all.sort_by(f32::total_cmp);
        Some(all[all.len() - limit])
    } else {
        None
    };
    let (mut ob, mut os, mut oc) = (Vec::new(), Vec::new(), Vec::new());
    for (j, (b, s)) in per_class.into_iter().enumerate() {
        for (b, s) in b.into_iter().zip(s) {
            if thresh.is_none_or(|t| s >= t) {
                ob.push(b);
                os.push(s);
                oc.push(j + 1);
            }
        }
    }
    Ok((ob, os, oc))
}

/// `_get_rois_blob`: the detections (original-image pixels) scaled to the network input in
/// `f64` and stored as `f32`, as `K x 5` RoIs of batch item `image`.
pub fn mask_rois(
    boxes: &[Box4],
    im_scale: f64,
    image: usize,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let v: Vec<f32> = boxes
        .iter()
        .flat_map(|b| {
            let mut r = [image as f32, 0.0, 0.0, 0.0, 0.0];
            for (o, &x) in r[1..].iter_mut().zip(b) {
                *o = (f64::from(x) * im_scale) as f32;
            }
            r
        })
        .collect();
    Ok(Tensor::from_vec(v, (boxes.len(), 5), dev)?)
}

/// Fills `dets.mask_probs` and `dets.masks` from the mask head's logits (`K x C' x M x M`, one
/// row per detection; `C' = 1` class-agnostic): the sigmoid of each detection's class channel,
/// pasted into the image (`segm_results`).
pub fn paste_masks(
    cfg: &PanetDetectionConfig,
    dets: &mut Detections,
    logits: &Tensor,
) -> Result<()> {
    let k = dets.len();
    let (n, c, m, m2) = logits.dims4()?;
    if n != k || m != m2 || m == 0 || c == 0 {
        return Err(Error::shape("mask logits", &[k, c, m, m], logits.dims()));
    }
    dets.mask_resolution = m;
    dets.mask_probs.clear();
    dets.masks.clear();
    if k == 0 {
        return Ok(());
    }
    let v = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    for (i, (&cls, b)) in dets.classes.iter().zip(&dets.boxes).enumerate() {
        let ch = if c == 1 { 0 } else { cls };
        if ch >= c {
            return Err(Error::InvalidArgument(format!(
                "mask logits have {c} channels but detection {i} is of class {cls}"
            )));
        }
        let o = (i * c + ch) * m * m;
        let probs: Vec<f32> = v[o..o + m * m]
            .iter()
            .map(|&x| 1.0 / (1.0 + (-x).exp()))
            .collect();
        dets.masks.push(paste_mask_detectron(
            &probs,
            m,
            b,
            dets.height,
            dets.width,
            cfg.mask_thresh,
        )?);
        dets.mask_probs.push(probs);
    }
    Ok(())
}
