//! RPN training targets: anchor labelling, fg / bg sampling and box targets, as Detectron v1's
//! `_get_rpn_blobs` (ShuLiu1993/PANet `lib/roi_data/rpn.py`, the same code as Detectron's).
//!
//! For the anchors of all levels of one image (concatenated, each level position-major as
//! [`grid_anchors`](super::grid_anchors) lays them out):
//! 1. anchors reaching more than `straddle_thresh` outside the (unpadded, scaled) image are
//!    ignored: kept iff `x1 >= -t`, `y1 >= -t`, `x2 < W + t`, `y2 < H + t` (`t < 0` keeps
//!    every anchor);
//! 2. each kept anchor's largest IoU with the gt boxes (first gt on ties); an anchor is
//!    foreground (1) if it attains some gt's largest IoU over all kept anchors (ties included,
//!    also when that largest IoU is 0, as the reference does) or if its own largest IoU is
//!    `>= positive_overlap`;
//! 3. if more than `int(fg_fraction * batch_size_per_image)` are foreground, that many minus
//!    the quota, drawn without replacement ([`IndexSampler::choose`]), become ignored (-1);
//! 4. `num_bg = batch - #fg`; the candidates are the anchors with largest IoU
//!    `< negative_overlap` (foreground ones included, as in the reference); if there are more
//!    than `num_bg`, `num_bg` of them drawn WITH replacement
//!    ([`IndexSampler::choose_with_replacement`], `npr.randint`) become background (0) — so
//!    fewer than `num_bg` distinct anchors, and a drawn foreground anchor turns background; if
//!    there are not more, none is labelled background (the reference's behaviour);
//! 5. box targets `bbox_transform_inv(anchor, its gt, weights)` for the anchors that were
//!    foreground after step 3 (an anchor turned background in step 4 keeps its targets but gets
//!    zero inside weights); inside weights 1 for the final foreground; outside weights
//!    `1 / #(labels >= 0)` for every labelled anchor.
//!
//! Unlike the reference (which fails), an image without gt boxes labels every kept anchor a
//! background candidate (largest IoU 0), and an image without kept anchors gets no labels.
//! [`RpnTargets::level`] lays one level's targets out as the RPN head's outputs
//! (`A x H x W` labels, `4A x H x W` box blobs).

use crate::{Error, Result};

use super::overlaps::{box_iou, max_overlaps};
use super::{Box4, BoxConvention, BoxTransform, IndexSampler};

/// Detectron's `TRAIN.RPN_*` settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RpnTargetConfig {
    /// IoU at or above which an anchor is foreground (`RPN_POSITIVE_OVERLAP`). Default 0.7.
    pub positive_overlap: f32,
    /// IoU below which an anchor is a background candidate (`RPN_NEGATIVE_OVERLAP`). Default 0.3.
    pub negative_overlap: f32,
    /// Anchors labelled per image (`RPN_BATCH_SIZE_PER_IM`). Default 256.
    pub batch_size_per_image: usize,
    /// Largest foreground share of the batch (`RPN_FG_FRACTION`). Default 0.5.
    pub fg_fraction: f64,
    /// How far outside the image an anchor may reach (`RPN_STRADDLE_THRESH`); negative keeps
    /// all anchors. Default 0.
    pub straddle_thresh: f32,
    /// Box coding of the targets (Detectron's RPN: weights (1, 1, 1, 1), legacy `+1`).
    pub transform: BoxTransform,
}

impl RpnTargetConfig {
    /// Detectron's / PANet's defaults (see the field docs).
    pub fn detectron() -> Self {
        Self {
            positive_overlap: 0.7,
            negative_overlap: 0.3,
            batch_size_per_image: 256,
            fg_fraction: 0.5,
            straddle_thresh: 0.0,
            transform: BoxTransform::new([1.0; 4], BoxConvention::Legacy),
        }
    }
}

/// RPN targets for every anchor of one image (`rpn_labels_int32`, `rpn_bbox_*` before the
/// per-level split).
#[derive(Debug, Clone, PartialEq)]
pub struct RpnTargets {
    /// 1 foreground, 0 background, -1 ignored.
    pub labels: Vec<i32>,
    /// Box regression targets (zero where not foreground after the fg subsampling).
    pub bbox_targets: Vec<[f32; 4]>,
    /// 1 on the coordinates of foreground anchors, else 0.
    pub inside_weights: Vec<[f32; 4]>,
    /// `1 / #(labels >= 0)` on labelled anchors, else 0.
    pub outside_weights: Vec<[f32; 4]>,
}

/// One FPN level's targets in the head's layout (`(1, A, H, W)` and `(1, 4A, H, W)` without the
/// batch dimension), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RpnLevelTargets {
    /// `A x H x W` labels.
    pub labels: Vec<i32>,
    /// `4A x H x W` targets.
    pub bbox_targets: Vec<f32>,
    /// `4A x H x W` inside weights.
    pub inside_weights: Vec<f32>,
    /// `4A x H x W` outside weights.
    pub outside_weights: Vec<f32>,
}

impl RpnTargets {
    /// The targets of the level whose anchors are `offset..offset + h * w * a` (position-major,
    /// anchor fastest), transposed to the head's `A x H x W` / `4A x H x W`. Errors if the range
    /// is out of bounds.
    pub fn level(&self, offset: usize, h: usize, w: usize, a: usize) -> Result<RpnLevelTargets> {
        let n = h * w * a;
        if offset + n > self.labels.len() {
            return Err(Error::InvalidArgument(format!(
                "rpn targets: level range {offset}..{} beyond {} anchors",
                offset + n,
                self.labels.len()
            )));
        }
        let hw = h * w;
        let mut out = RpnLevelTargets {
            labels: vec![0; n],
            bbox_targets: vec![0.0; 4 * n],
            inside_weights: vec![0.0; 4 * n],
            outside_weights: vec![0.0; 4 * n],
        };
        for p in 0..hw {
            for k in 0..a {
                let src = offset + p * a + k;
                out.labels[k * hw + p] = self.labels[src];
                for c in 0..4 {
                    let dst = (4 * k + c) * hw + p;
                    out.bbox_targets[dst] = self.bbox_targets[src][c];
                    out.inside_weights[dst] = self.inside_weights[src][c];
                    out.outside_weights[dst] = self.outside_weights[src][c];
                }
            }
        }
        Ok(out)
    }
}

fn check_config(cfg: &RpnTargetConfig) -> Result<()> {
    let ok = cfg.fg_fraction.is_finite()
        && (0.0..=1.0).contains(&cfg.fg_fraction)
        && cfg.positive_overlap.is_finite()
        && cfg.negative_overlap.is_finite()
        && !cfg.straddle_thresh.is_nan();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "rpn targets: fg_fraction must be in [0, 1] and the overlaps finite, got {cfg:?}"
        )))
    }
}

/// Labels the anchors that attain some gt's largest IoU (ties included), over the kept anchors.
fn best_anchor_per_gt(anchors: &[Box4], gt: &[Box4], conv: BoxConvention, labels: &mut [i32]) {
    let mut gt_max = vec![f32::NEG_INFINITY; gt.len()];
    for a in anchors {
        for (m, g) in gt_max.iter_mut().zip(gt) {
            *m = m.max(box_iou(a, g, conv));
        }
    }
    for (a, l) in anchors.iter().zip(labels.iter_mut()) {
        if gt
            .iter()
            .zip(&gt_max)
            .any(|(g, m)| box_iou(a, g, conv) == *m)
        {
            *l = 1;
        }
    }
}

/// RPN targets of one image (see the module docs): `anchors` of all levels, `gt_boxes` (the
/// non-crowd gt boxes, in the same scaled frame), the unpadded scaled image size, and the
/// draws from `sampler`. Errors on a bad config or a gt box with a non-finite coordinate.
pub fn rpn_targets(
    anchors: &[Box4],
    gt_boxes: &[Box4],
    im_height: f32,
    im_width: f32,
    cfg: &RpnTargetConfig,
    sampler: &mut dyn IndexSampler,
) -> Result<RpnTargets> {
    check_config(cfg)?;
    if let Some(i) = gt_boxes
        .iter()
        .position(|b| b.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::InvalidArgument(format!(
            "rpn targets: gt box {i} has a non-finite coordinate: {:?}",
            gt_boxes[i]
        )));
    }
    let t = cfg.straddle_thresh;
    let inside: Vec<usize> = if t >= 0.0 {
        (0..anchors.len())
            .filter(|&i| {
                let a = &anchors[i];
                a[0] >= -t && a[1] >= -t && a[2] < im_width + t && a[3] < im_height + t
            })
            .collect()
    } else {
        (0..anchors.len()).collect()
    };
    let kept: Vec<Box4> = inside.iter().map(|&i| anchors[i]).collect();
    let conv = cfg.transform.convention;
    let (max_iou, argmax) = max_overlaps(&kept, gt_boxes, conv);
    let mut labels = vec![-1i32; kept.len()];
    if !gt_boxes.is_empty() {
        best_anchor_per_gt(&kept, gt_boxes, conv, &mut labels);
        for (l, &m) in labels.iter_mut().zip(&max_iou) {
            if m >= cfg.positive_overlap {
                *l = 1;
            }
        }
    }
    let num_fg = (cfg.fg_fraction * cfg.batch_size_per_image as f64) as usize;
    let fg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 1).collect();
    if fg.len() > num_fg {
        for p in sampler.choose(fg.len(), fg.len() - num_fg)? {
            labels[fg[p]] = -1;
        }
    }
    let fg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 1).collect();
    let num_bg = cfg.batch_size_per_image.saturating_sub(fg.len());
    let bg: Vec<usize> = (0..labels.len())
        .filter(|&i| max_iou[i] < cfg.negative_overlap)
        .collect();
    if bg.len() > num_bg {
        for p in sampler.choose_with_replacement(bg.len(), num_bg)? {
            labels[bg[p]] = 0;
        }
    }
    let mut bbox_targets = vec![[0f32; 4]; anchors.len()];
    if !gt_boxes.is_empty() {
        let ex: Vec<Box4> = fg.iter().map(|&i| kept[i]).collect();
        let gt: Vec<Box4> = fg.iter().map(|&i| gt_boxes[argmax[i]]).collect();
        for (&i, d) in fg.iter().zip(cfg.transform.encode(&ex, &gt)?) {
            bbox_targets[inside[i]] = d;
        }
    }
    let num_examples = labels.iter().filter(|&&l| l >= 0).count();
    let outside = if num_examples > 0 {
        (1.0f64 / num_examples as f64) as f32
    } else {
        0.0
    };
    let mut out_labels = vec![-1i32; anchors.len()];
    let mut inside_weights = vec![[0f32; 4]; anchors.len()];
    let mut outside_weights = vec![[0f32; 4]; anchors.len()];
    for (j, &i) in inside.iter().enumerate() {
        out_labels[i] = labels[j];
        if labels[j] == 1 {
            inside_weights[i] = [1.0; 4];
        }
        if labels[j] >= 0 {
            outside_weights[i] = [outside; 4];
        }
    }
    Ok(RpnTargets {
        labels: out_labels,
        bbox_targets,
        inside_weights,
        outside_weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::detection::SeededSampler;

    #[test]
    fn labels_sampling_and_layout() {
        let mut anchors = Vec::new();
        for y in 0..8 {
            for x in 0..8 {
                let (x, y) = (x as f32 * 8.0, y as f32 * 8.0);
                anchors.push([x, y, x + 15.0, y + 15.0]);
                anchors.push([x, y, x + 7.0, y + 7.0]);
            }
        }
        let gt = [[8.0, 8.0, 23.0, 23.0], [40.0, 40.0, 47.0, 47.0]];
        let mut cfg = RpnTargetConfig::detectron();
        cfg.batch_size_per_image = 16;
        let mut s = SeededSampler::new(1);
        let t = rpn_targets(&anchors, &gt, 64.0, 64.0, &cfg, &mut s).unwrap();
        // The exact matches are foreground and straddling anchors are ignored.
        assert_eq!(t.labels[(8 + 1) * 2], 1);
        assert_eq!(t.labels[(5 * 8 + 5) * 2 + 1], 1);
        assert_eq!(t.labels[(7 * 8 + 7) * 2], -1);
        assert!(t.labels.iter().filter(|&&l| l >= 0).count() <= 16);
        assert_eq!(t.bbox_targets[(8 + 1) * 2], [0.0; 4]);
        let lv = t.level(0, 8, 8, 2).unwrap();
        assert_eq!(lv.labels[8 + 1], 1);
        assert_eq!(lv.labels[64 + 5 * 8 + 5], 1);
        assert!(t.level(1, 8, 8, 2).is_err());
        // No gt: background only; no anchors: nothing.
        let t = rpn_targets(&anchors, &[], 64.0, 64.0, &cfg, &mut s).unwrap();
        assert!(t.labels.iter().all(|&l| l <= 0));
        assert!(rpn_targets(&[], &gt, 64.0, 64.0, &cfg, &mut s)
            .unwrap()
            .labels
            .is_empty());
        assert!(rpn_targets(
            &anchors,
            &[[0.0, f32::NAN, 1.0, 1.0]],
            64.0,
            64.0,
            &cfg,
            &mut s
        )
        .is_err());
    }
}
