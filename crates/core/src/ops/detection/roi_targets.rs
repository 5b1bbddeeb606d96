//! RoI sampling and box-head targets, as Detectron v1's training path for proposals
//! (ShuLiu1993/PANet `lib/datasets/json_dataset.py::add_proposals` with `crowd_thresh = 0`,
//! then `lib/roi_data/fast_rcnn.py::_sample_rois`, `_compute_targets`,
//! `_expand_bbox_targets`).
//!
//! For one image, with every box in one frame (Detectron's roidb frame: the original image;
//! it divides the scaled proposals by the image scale first):
//! 1. the candidates are the gt boxes (crowd ones included) followed by the proposals;
//! 2. a gt candidate has largest overlap 1 with its own class (-1 and class 0 if crowd); a
//!    proposal has its largest IoU with any gt box (crowd included, first gt on ties), that
//!    gt's class and index when the IoU is positive, else overlap 0, class 0;
//! 3. foreground: overlap `>= fg_thresh`; `min(round(fg_fraction * batch), #fg)` drawn without
//!    replacement ([`IndexSampler::choose`], called whenever there is a candidate, so the
//!    sample comes in drawn order); background: `bg_thresh_lo <= overlap < bg_thresh_hi`, the
//!    rest of the batch (or all) drawn likewise;
//! 4. the sample is foreground then background; background labels are 0; box targets
//!    `bbox_transform_inv(roi, assigned gt, weights)` for foreground RoIs, placed at columns
//!    `4c..4c + 4` of the `4K` row for class `c` (class 1 for every foreground RoI when
//!    class-agnostic, `K = 2`), with inside and outside weights 1 there.
//!
//! Class-agnostic regression: the reference also overwrites the sampled labels with 1 in that
//! mode (`labels.clip(max=1, out=labels)` on the array it returns); segkit keeps the classes.

use crate::{Error, Result};

use super::overlaps::max_overlaps;
use super::{Box4, BoxConvention, BoxTransform, IndexSampler};

/// The gt annotations of one image.
#[derive(Debug, Clone, Copy)]
pub struct GtInstances<'a> {
    /// Boxes `[x1, y1, x2, y2]`.
    pub boxes: &'a [Box4],
    /// Classes in `1..num_classes` (0 is background).
    pub classes: &'a [usize],
    /// COCO `iscrowd`.
    pub crowd: &'a [bool],
}

impl GtInstances<'_> {
    fn check(&self, num_classes: usize) -> Result<()> {
        let n = self.boxes.len();
        if self.classes.len() != n || self.crowd.len() != n {
            return Err(Error::InvalidArgument(format!(
                "gt instances: {n} boxes but {} classes and {} crowd flags",
                self.classes.len(),
                self.crowd.len()
            )));
        }
        if let Some(i) = self
            .classes
            .iter()
            .position(|&c| c == 0 || c >= num_classes)
        {
            return Err(Error::InvalidArgument(format!(
                "gt instance {i}: class {} is not in 1..{num_classes}",
                self.classes[i]
            )));
        }
        if let Some(i) = self
            .boxes
            .iter()
            .position(|b| b.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::InvalidArgument(format!(
                "gt instance {i}: box {:?} has a non-finite coordinate",
                self.boxes[i]
            )));
        }
        Ok(())
    }
}

/// Detectron's `TRAIN.*` RoI sampling settings and the box head's target coding.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoiSamplerConfig {
    /// RoIs per image (`TRAIN.BATCH_SIZE_PER_IM`). PANet: 512 (Detectron's default 64).
    pub batch_size_per_image: usize,
    /// Largest foreground share (`TRAIN.FG_FRACTION`). Default 0.25.
    pub fg_fraction: f64,
    /// Overlap at or above which a RoI is foreground (`TRAIN.FG_THRESH`). Default 0.5.
    pub fg_thresh: f32,
    /// Background overlaps are below this (`TRAIN.BG_THRESH_HI`). Default 0.5.
    pub bg_thresh_hi: f32,
    /// ... and at least this (`TRAIN.BG_THRESH_LO`). Default 0.0.
    pub bg_thresh_lo: f32,
    /// Classes including background (`MODEL.NUM_CLASSES`). COCO: 81.
    pub num_classes: usize,
    /// One box per RoI instead of one per class (`MODEL.CLS_AGNOSTIC_BBOX_REG`). Default false.
    pub class_agnostic: bool,
    /// Box coding (`MODEL.BBOX_REG_WEIGHTS` (10, 10, 5, 5), legacy `+1`).
    pub transform: BoxTransform,
}

impl RoiSamplerConfig {
    /// PANet's settings (`configs/panet/e2e_panet_R-50-FPN_2x_mask.yaml` over Detectron's
    /// defaults) for `num_classes` classes including background.
    pub fn panet(num_classes: usize) -> Self {
        Self {
            batch_size_per_image: 512,
            fg_fraction: 0.25,
            fg_thresh: 0.5,
            bg_thresh_hi: 0.5,
            bg_thresh_lo: 0.0,
            num_classes,
            class_agnostic: false,
            transform: BoxTransform::new([10.0, 10.0, 5.0, 5.0], BoxConvention::Legacy),
        }
    }

    /// Classes of the regression output: `num_classes`, or 2 when class-agnostic.
    pub fn num_reg_classes(&self) -> usize {
        if self.class_agnostic {
            2
        } else {
            self.num_classes
        }
    }
}

/// Sampled RoIs of one image with their box-head targets.
#[derive(Debug, Clone, PartialEq)]
pub struct RoiTargets {
    /// The sampled boxes (foreground first), in the input frame.
    pub rois: Vec<Box4>,
    /// Class of each RoI (0 for background).
    pub labels: Vec<usize>,
    /// How many of the RoIs (the first ones) are foreground.
    pub num_fg: usize,
    /// The gt box each foreground RoI regresses to (`None` for background).
    pub gt_index: Vec<Option<usize>>,
    /// `R x 4K` targets (`K` = [`RoiSamplerConfig::num_reg_classes`]), row-major.
    pub bbox_targets: Vec<f32>,
    /// `R x 4K`, 1 on the target class's four columns of foreground RoIs.
    pub inside_weights: Vec<f32>,
    /// `R x 4K`, equal to `inside_weights > 0` (Detectron).
    pub outside_weights: Vec<f32>,
}

fn check_config(cfg: &RoiSamplerConfig) -> Result<()> {
    if !(cfg.fg_fraction.is_finite() && (0.0..=1.0).contains(&cfg.fg_fraction))
        || cfg.num_classes < 2
        || cfg.fg_thresh.is_nan()
        || cfg.fg_thresh <= 0.0
        || [cfg.fg_thresh, cfg.bg_thresh_hi, cfg.bg_thresh_lo]
            .iter()
            .any(|v| v.is_nan())
    {
        return Err(Error::InvalidConfig(format!(
            "roi sampler: fg_fraction must be in [0, 1], num_classes >= 2, fg_thresh > 0 (a \
             foreground RoI needs a gt box) and the thresholds numbers, got {cfg:?}"
        )));
    }
    Ok(())
}

/// Candidates' largest overlap, class and gt index (see the module docs, step 2).
fn assign(proposals: &[Box4], gt: &GtInstances<'_>, conv: BoxConvention) -> Vec<(f32, usize, i64)> {
    let mut out: Vec<(f32, usize, i64)> = (0..gt.boxes.len())
        .map(|i| {
            if gt.crowd[i] {
                (-1.0, 0, i as i64)
            } else {
                (1.0, gt.classes[i], i as i64)
            }
        })
        .collect();
    let (m, a) = max_overlaps(proposals, gt.boxes, conv);
    out.extend(m.into_iter().zip(a).map(|(m, a)| {
        if !gt.boxes.is_empty() && m > 0.0 {
            (m, gt.classes[a], a as i64)
        } else {
            (0.0, 0, -1)
        }
    }));
    out
}

/// Samples RoIs from `gt` + `proposals` and computes their box targets (see the module docs),
/// drawing from `sampler`. Errors on a bad config or bad gt annotations.
pub fn sample_rois(
    proposals: &[Box4],
    gt: &GtInstances<'_>,
    cfg: &RoiSamplerConfig,
    sampler: &mut dyn IndexSampler,
) -> Result<RoiTargets> {
    check_config(cfg)?;
    gt.check(cfg.num_classes)?;
    let conv = cfg.transform.convention;
    let cand = assign(proposals, gt, conv);
    let boxes = |i: usize| {
        if i < gt.boxes.len() {
            gt.boxes[i]
        } else {
            proposals[i - gt.boxes.len()]
        }
    };
    let per_image = cfg.batch_size_per_image;
    let fg_per_image = (cfg.fg_fraction * per_image as f64).round_ties_even() as usize;
    let fg: Vec<usize> = (0..cand.len())
        .filter(|&i| cand[i].0 >= cfg.fg_thresh)
        .collect();
    let num_fg = fg_per_image.min(fg.len());
    let mut keep: Vec<usize> = Vec::with_capacity(per_image);
    if !fg.is_empty() {
        keep.extend(sampler.choose(fg.len(), num_fg)?.into_iter().map(|p| fg[p]));
    }
    let bg: Vec<usize> = (0..cand.len())
        .filter(|&i| cand[i].0 < cfg.bg_thresh_hi && cand[i].0 >= cfg.bg_thresh_lo)
        .collect();
    let num_bg = per_image.saturating_sub(num_fg).min(bg.len());
    if !bg.is_empty() {
        keep.extend(sampler.choose(bg.len(), num_bg)?.into_iter().map(|p| bg[p]));
    }
    let k = cfg.num_reg_classes();
    let r = keep.len();
    let mut out = RoiTargets {
        rois: keep.iter().map(|&i| boxes(i)).collect(),
        labels: vec![0; r],
        num_fg,
        gt_index: vec![None; r],
        bbox_targets: vec![0.0; r * 4 * k],
        inside_weights: vec![0.0; r * 4 * k],
        outside_weights: vec![0.0; r * 4 * k],
    };
    let fg_rois: Vec<Box4> = out.rois[..num_fg].to_vec();
    let fg_gt: Vec<Box4> = keep[..num_fg]
        .iter()
        .map(|&i| gt.boxes[cand[i].2 as usize])
        .collect();
    let deltas = cfg.transform.encode(&fg_rois, &fg_gt)?;
    for (j, d) in deltas.into_iter().enumerate() {
        let (_, class, g) = cand[keep[j]];
        out.labels[j] = class;
        out.gt_index[j] = Some(g as usize);
        let c = if cfg.class_agnostic { 1 } else { class };
        let start = j * 4 * k + 4 * c;
        out.bbox_targets[start..start + 4].copy_from_slice(&d);
        out.inside_weights[start..start + 4].fill(1.0);
        out.outside_weights[start..start + 4].fill(1.0);
    }
    Ok(out)
}

/// `boxes * factor` in `f32` (Detectron's `rois * (1 / im_scale)` and `sampled_boxes *
/// im_scale`: numpy multiplies a `float32` array by the scalar rounded to `float32`).
pub fn scale_boxes(boxes: &[Box4], factor: f64) -> Vec<Box4> {
    let f = factor as f32;
    boxes.iter().map(|b| b.map(|v| v * f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::detection::SeededSampler;

    #[test]
    fn gt_first_then_proposals() {
        let gt_boxes = [[10.0, 10.0, 49.0, 49.0], [60.0, 60.0, 99.0, 99.0]];
        let classes = [3, 5];
        let gt = GtInstances {
            boxes: &gt_boxes,
            classes: &classes,
            crowd: &[false, true],
        };
        let props = [
            [12.0, 10.0, 51.0, 49.0],
            [0.0, 0.0, 5.0, 5.0],
            [61.0, 60.0, 99.0, 99.0],
        ];
        let mut cfg = RoiSamplerConfig::panet(8);
        cfg.batch_size_per_image = 4;
        let t = sample_rois(&props, &gt, &cfg, &mut SeededSampler::new(0)).unwrap();
        // fg: gt 0 and proposals 0 (class 3) and 2 (matched to the crowd box, class 5).
        assert_eq!(t.num_fg, 1);
        assert_eq!(t.rois.len(), 2, "one bg candidate only");
        assert!([3, 5].contains(&t.labels[0]));
        assert!(t.labels[1..].iter().all(|&l| l == 0));
        let c = t.labels[0];
        assert_eq!(t.inside_weights[4 * c..4 * c + 4], [1.0; 4]);
        assert_eq!(t.inside_weights.iter().sum::<f32>(), 4.0);
        let bad = GtInstances {
            boxes: &gt_boxes,
            classes: &[0, 1],
            crowd: &[false, false],
        };
        assert!(sample_rois(&props, &bad, &cfg, &mut SeededSampler::new(0)).is_err());
        let none = GtInstances {
            boxes: &[],
            classes: &[],
            crowd: &[],
        };
        let t = sample_rois(&props, &none, &cfg, &mut SeededSampler::new(0)).unwrap();
        assert_eq!((t.num_fg, t.rois.len()), (0, 3));
        assert_eq!(
            scale_boxes(&[[1.0, 2.0, 3.0, 4.0]], 2.0),
            [[2.0, 4.0, 6.0, 8.0]]
        );
    }

    #[test]
    fn degenerate_inputs_give_results_or_typed_errors() {
        let mut s = SeededSampler::new(5);
        let cfg = RoiSamplerConfig::panet(3);
        // Degenerate gt and proposal boxes (zero or negative size), no proposals at all.
        let gt_boxes = [[5.0, 5.0, 5.0, 5.0], [9.0, 9.0, 2.0, 2.0]];
        let gt = GtInstances {
            boxes: &gt_boxes,
            classes: &[1, 2],
            crowd: &[false, false],
        };
        let props = [[5.0, 5.0, 5.0, 5.0], [3.0, 3.0, 1.0, 1.0]];
        let t = sample_rois(&props, &gt, &cfg, &mut s).unwrap();
        assert_eq!(t.rois.len(), t.labels.len());
        let t = sample_rois(&[], &gt, &cfg, &mut s).unwrap();
        assert_eq!((t.num_fg, t.rois.len()), (2, 2));
        let none = GtInstances {
            boxes: &[],
            classes: &[],
            crowd: &[],
        };
        assert!(sample_rois(&[], &none, &cfg, &mut s)
            .unwrap()
            .rois
            .is_empty());
        let mut bad = cfg;
        bad.fg_thresh = 0.0;
        assert!(sample_rois(&props, &gt, &bad, &mut s).is_err());
        bad = cfg;
        bad.fg_fraction = f64::NAN;
        assert!(sample_rois(&props, &gt, &bad, &mut s).is_err());
        let short = GtInstances {
            boxes: &gt_boxes,
            classes: &[1],
            crowd: &[false, false],
        };
        assert!(sample_rois(&props, &short, &cfg, &mut s).is_err());
    }
}
