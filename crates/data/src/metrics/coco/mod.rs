//! COCO mask AP / AR: a port of pycocotools' `COCOeval` with `iouType='segm'`; box AP / AR
//! (`iouType='bbox'`) with [`CocoEvaluator::bbox`].
//!
//! Follows pycocotools 2.0.11 `cocoeval.py` step by step:
//! - `evaluate`: per (image, category), detections sorted by score (stable, so ties keep
//!   their insertion order) and cut at `maxDets[-1]`; mask IoU by [`Rle::iou`] with crowd
//!   ground truths (IoU = intersection / detection area); per area range, ground truths that
//!   are crowd or outside the range are "ignore" and sorted last; at each IoU threshold a
//!   detection greedily takes the best still-free ground truth (crowd ones can be taken many
//!   times), never trading a regular match for an ignored one; unmatched detections outside
//!   the area range are ignored;
//! - `accumulate`: detections of all images sorted by score (stable), cumulative TP / FP,
//!   precision made monotone, sampled at the 101 recall thresholds with a left
//!   `searchsorted`; -1 for categories without (non-ignored) ground truth;
//! - `summarize`: the 12 standard numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
//!   ARs, ARm, ARl), each the mean over the entries > -1, or -1.
//!
//! Images and categories are declared up front (COCO's `imgIds` / `catIds` of the ground
//! truth): a detection of an undeclared category is skipped (as `getAnnIds(catIds=..)`
//! does), a detection on an undeclared image is an error (as `loadRes`'s assertion).
//! Ground-truth `area` defaults to the mask area (COCO files carry their own, e.g. the
//! polygon area, which may be passed in).
//!
//! Box evaluation ([`CocoEvaluator::bbox`]) is the same algorithm on box IoUs
//! ([`crate::rle::bbox_iou`], pycocotools' `bbIou`): a ground truth's box is its mask's
//! `toBbox` (the `bbox` COCO writes for a mask); a detection added with
//! [`CocoEvaluator::add_box_detection`] has its box and the area `w * h` (as `loadRes` of box
//! results), one added with [`CocoEvaluator::add_detection`] the `toBbox` and area of its mask
//! (as `loadRes` of segmentation results).

mod accumulate;
mod matching;

use std::collections::{BTreeMap, BTreeSet};

use crate::rle::Rle;
use crate::{Error, Result};
use accumulate::{accumulate, summarize, Shape};

/// `np.linspace(start, stop, num)` (numpy 2's arithmetic: `i * step + start`, last = stop).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// Evaluation parameters (pycocotools' `Params`).
#[derive(Clone, Debug, PartialEq)]
pub struct CocoParams {
    /// IoU thresholds (T): `.50:.05:.95`.
    pub iou_thrs: Vec<f64>,
    /// Recall thresholds (R): `0:.01:1` (101-point interpolation).
    pub rec_thrs: Vec<f64>,
    /// Max detections per image (M), three of them, ascending: `[1, 10, 100]`.
    pub max_dets: Vec<usize>,
    /// Area ranges (A) `[min, max]` in pixels: all, small (< 32^2), medium, large (> 96^2).
    pub area_rng: Vec<[f64; 2]>,
    /// Names of the area ranges (`summarize` looks up "all", "small", "medium", "large").
    pub area_rng_lbl: Vec<String>,
    /// Match within categories (`useCats = 1`); if false, all categories are pooled.
    pub use_cats: bool,
}

impl Default for CocoParams {
    fn default() -> Self {
        Self::segm()
    }
}

impl CocoParams {
    /// The defaults of `Params(iouType='segm')`.
    pub fn segm() -> Self {
        CocoParams {
            iou_thrs: linspace(0.5, 0.95, 10),
            rec_thrs: linspace(0.0, 1.0, 101),
            max_dets: vec![1, 10, 100],
            area_rng: vec![
                [0.0, 1e10],
                [0.0, 32.0 * 32.0],
                [32.0 * 32.0, 96.0 * 96.0],
                [96.0 * 96.0, 1e10],
            ],
            area_rng_lbl: ["all", "small", "medium", "large"]
                .map(String::from)
                .to_vec(),
            use_cats: true,
        }
    }
}

/// A ground-truth instance.
#[derive(Clone, Debug)]
pub struct GroundTruth {
    /// Image id (declared with [`CocoEvaluator::add_image`]).
    pub image_id: u64,
    /// Category id.
    pub category_id: u64,
    /// The mask.
    pub mask: Rle,
    /// A crowd region: ignored, and matched by IoU = intersection / detection area.
    pub iscrowd: bool,
    /// The annotation's `area` (for the area ranges); `None` = the mask area.
    pub area: Option<f64>,
}

/// A detection (an entry of a COCO results file).
#[derive(Clone, Debug)]
pub struct Detection {
    /// Image id.
    pub image_id: u64,
    /// Category id.
    pub category_id: u64,
    /// The mask.
    pub mask: Rle,
    /// Confidence (finite).
    pub score: f64,
}

/// The result of [`CocoEvaluator::evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct CocoEvalResult {
    /// The 12 numbers of `COCOeval.stats`: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
    /// ARs, ARm, ARl (fractions; -1 where nothing qualifies).
    pub stats: [f64; 12],
    /// `eval['precision']`, shape `[T, R, K, A, M]`, row-major.
    pub precision: Vec<f64>,
    /// `eval['recall']`, shape `[T, K, A, M]`, row-major.
    pub recall: Vec<f64>,
    /// `[T, R, K, A, M]`.
    pub counts: [usize; 5],
    /// The K category ids, ascending (`[]` with pooled categories).
    pub category_ids: Vec<u64>,
}

impl CocoEvalResult {
    /// AP @ IoU .50:.95, all areas, 100 detections.
    pub fn ap(&self) -> f64 {
        self.stats[0]
    }
    /// AP @ IoU .50.
    pub fn ap50(&self) -> f64 {
        self.stats[1]
    }
    /// AP @ IoU .75.
    pub fn ap75(&self) -> f64 {
        self.stats[2]
    }
    /// AP of small objects.
    pub fn ap_small(&self) -> f64 {
        self.stats[3]
    }
    /// AP of medium objects.
    pub fn ap_medium(&self) -> f64 {
        self.stats[4]
    }
    /// AP of large objects.
    pub fn ap_large(&self) -> f64 {
        self.stats[5]
    }
    /// AR with the largest max-detections setting (100).
    pub fn ar100(&self) -> f64 {
        self.stats[8]
    }

    /// AP (IoU .50:.95, area "all", largest max-detections) of each category, -1 for a
    /// category without ground truth.
    pub fn per_category_ap(&self) -> Vec<(u64, f64)> {
        let [t, r, k, a, m] = self.counts;
        self.category_ids
            .iter()
            .enumerate()
            .map(|(ki, &c)| {
                let mut v = Vec::new();
                for ti in 0..t {
                    for ri in 0..r {
                        v.push(self.precision[(((ti * r + ri) * k + ki) * a) * m + (m - 1)]);
                    }
                }
                (c, mean_valid(&v))
            })
            .collect()
    }
}

/// Descending order of finite scores, 0.0 and -0.0 equal (as numpy's sort of `-score`).
fn desc(a: f64, b: f64) -> std::cmp::Ordering {
    b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal)
}

fn mean_valid(v: &[f64]) -> f64 {
    let (s, n) = v
        .iter()
        .filter(|&&x| x > -1.0)
        .fold((0.0, 0usize), |(s, n), &x| (s + x, n + 1));
    if n == 0 {
        -1.0
    } else {
        s / n as f64
    }
}

/// Mask AP evaluation (pycocotools `COCOeval(iouType='segm')`).
///
/// ```
/// use segkit_data::metrics::{CocoEvaluator, Detection, GroundTruth};
/// use segkit_data::rle::Rle;
/// let mask = Rle::from_mask(&[0u8, 1, 1, 0], 2, 2)?;
/// let mut ev = CocoEvaluator::new(&[1]);
/// ev.add_image(7, 2, 2)?;
/// ev.add_ground_truth(GroundTruth { image_id: 7, category_id: 1, mask: mask.clone(), iscrowd: false, area: None })?;
/// ev.add_detection(Detection { image_id: 7, category_id: 1, mask, score: 0.9 })?;
/// let r = ev.evaluate()?;
/// // precision is tp / (tp + fp + eps), so a perfect detector scores 1 - 1e-16, as in pycocotools
/// assert!((r.ap() - 1.0).abs() < 1e-12 && r.ar100() == 1.0);
/// # Ok::<(), segkit_data::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CocoEvaluator {
    params: CocoParams,
    categories: BTreeSet<u64>,
    images: BTreeMap<u64, (usize, usize)>,
    gts: Vec<GroundTruth>,
    dts: Vec<Detection>,
    /// Box IoUs (`iouType='bbox'`) instead of mask IoUs.
    boxes: bool,
    /// Per ground truth: its box `[x, y, w, h]`.
    gt_boxes: Vec<[f64; 4]>,
    /// Per detection: its box and area (the area ranges' `dt['area']`).
    dt_boxes: Vec<([f64; 4], f64)>,
}

impl CocoEvaluator {
    /// An evaluator over the given category ids, with [`CocoParams::segm`].
    pub fn new(category_ids: &[u64]) -> Self {
        CocoEvaluator {
            params: CocoParams::segm(),
            categories: category_ids.iter().copied().collect(),
            images: BTreeMap::new(),
            gts: Vec::new(),
            dts: Vec::new(),
            boxes: false,
            gt_boxes: Vec::new(),
            dt_boxes: Vec::new(),
        }
    }

    /// A box evaluator (pycocotools `COCOeval(iouType='bbox')`, whose default parameters are
    /// [`CocoParams::segm`]'s) over the given category ids: see the module docs.
    pub fn bbox(category_ids: &[u64]) -> Self {
        CocoEvaluator {
            boxes: true,
            ..Self::new(category_ids)
        }
    }

    /// Whether this evaluator compares boxes ([`CocoEvaluator::bbox`]).
    pub fn is_bbox(&self) -> bool {
        self.boxes
    }

    /// Replaces the parameters (checked by [`Self::evaluate`]).
    pub fn with_params(mut self, params: CocoParams) -> Self {
        self.params = params;
        self
    }

    /// The parameters.
    pub fn params(&self) -> &CocoParams {
        &self.params
    }

    /// Declares an image (COCO's `images` entry).
    pub fn add_image(&mut self, image_id: u64, height: usize, width: usize) -> Result<()> {
        if let Some(&hw) = self.images.get(&image_id) {
            if hw != (height, width) {
                return Err(Error::InvalidArgument(format!(
                    "image {image_id} declared twice with different sizes"
                )));
            }
        }
        self.images.insert(image_id, (height, width));
        Ok(())
    }

    fn check_mask(&self, image_id: u64, mask: &Rle, what: &str) -> Result<()> {
        let Some(&(h, w)) = self.images.get(&image_id) else {
            return Err(Error::InvalidArgument(format!(
                "{what} on image {image_id}, which was not declared"
            )));
        };
        if (mask.height(), mask.width()) != (h, w) {
            return Err(Error::InvalidArgument(format!(
                "{what} mask is {}x{} on image {image_id} of {h}x{w}",
                mask.height(),
                mask.width()
            )));
        }
        Ok(())
    }

    /// Adds a ground-truth instance.
    pub fn add_ground_truth(&mut self, gt: GroundTruth) -> Result<()> {
        self.check_mask(gt.image_id, &gt.mask, "ground truth")?;
        if gt.area.is_some_and(|a| a.is_nan()) {
            return Err(Error::InvalidArgument("ground-truth area is NaN".into()));
        }
        self.gt_boxes.push(gt.mask.to_bbox());
        self.gts.push(gt);
        Ok(())
    }

    /// Adds a detection.
    pub fn add_detection(&mut self, dt: Detection) -> Result<()> {
        self.check_mask(dt.image_id, &dt.mask, "detection")?;
        if !dt.score.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "detection score {} is not finite",
                dt.score
            )));
        }
        self.dt_boxes
            .push((dt.mask.to_bbox(), dt.mask.area() as f64));
        self.dts.push(dt);
        Ok(())
    }

    /// Adds a box detection `[x, y, w, h]` (an entry of a COCO `bbox` results file; area
    /// `w * h`) to a box evaluator ([`CocoEvaluator::bbox`]).
    ///
    /// Errors: a mask evaluator, an undeclared image, a non-finite box or score.
    pub fn add_box_detection(
        &mut self,
        image_id: u64,
        category_id: u64,
        bbox: [f64; 4],
        score: f64,
    ) -> Result<()> {
        if !self.boxes {
            return Err(Error::InvalidArgument(
                "a box detection added to a mask evaluator (use CocoEvaluator::bbox)".into(),
            ));
        }
        if bbox.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "detection box {bbox:?} is not finite"
            )));
        }
        let Some(&(h, w)) = self.images.get(&image_id) else {
            return Err(Error::InvalidArgument(format!(
                "detection on image {image_id}, which was not declared"
            )));
        };
        self.add_detection(Detection {
            image_id,
            category_id,
            mask: Rle::zeros(h, w)?,
            score,
        })?;
        if let Some(last) = self.dt_boxes.last_mut() {
            *last = (bbox, bbox[2] * bbox[3]);
        }
        Ok(())
    }

    fn check_params(&self) -> Result<()> {
        let p = &self.params;
        let bad = |m: &str| Err(Error::InvalidArgument(format!("CocoParams: {m}")));
        if p.iou_thrs.is_empty() || p.rec_thrs.is_empty() || p.area_rng.is_empty() {
            return bad("iou_thrs, rec_thrs and area_rng must be non-empty");
        }
        if p.max_dets.len() != 3 {
            return bad("max_dets must have three entries (summarize uses all three)");
        }
        if p.area_rng.len() != p.area_rng_lbl.len() {
            return bad("area_rng and area_rng_lbl differ in length");
        }
        Ok(())
    }

    /// Runs `evaluate`, `accumulate` and `summarize`.
    pub fn evaluate(&self) -> Result<CocoEvalResult> {
        self.check_params()?;
        let p = &self.params;
        let mut max_dets = p.max_dets.clone();
        max_dets.sort_unstable();
        let cats: Vec<Option<u64>> = if p.use_cats {
            self.categories.iter().map(|&c| Some(c)).collect()
        } else {
            vec![None]
        };
        let eval_imgs = self.evaluate_images(&cats, max_dets[2])?;
        let shape = Shape {
            t: p.iou_thrs.len(),
            r: p.rec_thrs.len(),
            k: cats.len(),
            a: p.area_rng.len(),
            m: max_dets.len(),
        };
        let acc = accumulate(&eval_imgs, shape, self.images.len(), &max_dets, &p.rec_thrs);
        let stats = summarize(p, &max_dets, &acc);
        Ok(CocoEvalResult {
            stats,
            precision: acc.precision,
            recall: acc.recall,
            counts: shape.counts(),
            category_ids: if p.use_cats {
                self.categories.iter().copied().collect()
            } else {
                Vec::new()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_match_numpy() {
        let t = linspace(0.5, 0.95, 10);
        assert_eq!(t[0], 0.5);
        assert_eq!(t[5], 0.75);
        assert_eq!(linspace(0.0, 1.0, 101)[100], 1.0);
    }

    #[test]
    fn errors() -> Result<()> {
        let mut ev = CocoEvaluator::new(&[1]);
        let m = Rle::zeros(2, 2)?;
        let dt = Detection {
            image_id: 1,
            category_id: 1,
            mask: m.clone(),
            score: 0.5,
        };
        assert!(ev.add_detection(dt.clone()).is_err()); // undeclared image
        ev.add_image(1, 2, 3)?;
        assert!(ev.add_detection(dt.clone()).is_err()); // size
        let mut p = CocoParams::segm();
        p.max_dets = vec![100];
        assert!(ev.clone().with_params(p).evaluate().is_err());
        // no ground truth at all: everything -1
        let r = ev.evaluate()?;
        assert!(r.stats.iter().all(|&s| s == -1.0));
        Ok(())
    }
}
