//! COCO mask AP / AR: a port of pycocotools' `COCOeval` with `iouType='segm'`.
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

use std::collections::{BTreeMap, BTreeSet};

use crate::rle::Rle;
use crate::{Error, Result};

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
}

/// Per (image, category, area range) result of `evaluateImg`.
struct EvalImg {
    dt_scores: Vec<f64>,
    /// `[T][D]`: matched (to a gt) or not.
    dt_matched: Vec<Vec<bool>>,
    /// `[T][D]`.
    dt_ignore: Vec<Vec<bool>>,
    gt_ignore: Vec<bool>,
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
        }
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
        self.dts.push(dt);
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
        let max_det = max_dets[2];
        let cats: Vec<Option<u64>> = if p.use_cats {
            self.categories.iter().map(|&c| Some(c)).collect()
        } else {
            vec![None]
        };
        let img_ids: Vec<u64> = self.images.keys().copied().collect();

        // _prepare: group by (image, category) in insertion order
        let mut gts: BTreeMap<(u64, u64), Vec<&GroundTruth>> = BTreeMap::new();
        for g in self
            .gts
            .iter()
            .filter(|g| self.categories.contains(&g.category_id))
        {
            gts.entry((g.image_id, g.category_id)).or_default().push(g);
        }
        let mut dts: BTreeMap<(u64, u64), Vec<&Detection>> = BTreeMap::new();
        for d in self
            .dts
            .iter()
            .filter(|d| self.categories.contains(&d.category_id))
        {
            dts.entry((d.image_id, d.category_id)).or_default().push(d);
        }
        let collect = |img: u64, cat: Option<u64>| -> (Vec<&GroundTruth>, Vec<&Detection>) {
            let keys: Vec<u64> = match cat {
                Some(c) => vec![c],
                None => self.categories.iter().copied().collect(),
            };
            let mut g = Vec::new();
            let mut d = Vec::new();
            for c in keys {
                g.extend(gts.get(&(img, c)).into_iter().flatten().copied());
                d.extend(dts.get(&(img, c)).into_iter().flatten().copied());
            }
            (g, d)
        };

        let t_n = p.iou_thrs.len();
        let a_n = p.area_rng.len();
        let i_n = img_ids.len();
        // evalImgs[k][a][i]
        let mut eval_imgs: Vec<Option<EvalImg>> = Vec::with_capacity(cats.len() * a_n * i_n);
        for &cat in &cats {
            // computeIoU once per image
            let mut per_img = Vec::with_capacity(i_n);
            for &img in &img_ids {
                let (g, mut d) = collect(img, cat);
                d.sort_by(|a, b| desc(a.score, b.score)); // stable mergesort of -score
                d.truncate(max_det);
                let ious = if g.is_empty() || d.is_empty() {
                    Vec::new()
                } else {
                    let dm: Vec<&Rle> = d.iter().map(|x| &x.mask).collect();
                    let gm: Vec<&Rle> = g.iter().map(|x| &x.mask).collect();
                    let crowd: Vec<bool> = g.iter().map(|x| x.iscrowd).collect();
                    crate::rle::iou_refs(&dm, &gm, &crowd)?
                };
                per_img.push((g, d, ious));
            }
            for rng in &p.area_rng {
                for (g, d, ious) in &per_img {
                    eval_imgs.push(evaluate_img(g, d, ious, *rng, &p.iou_thrs));
                }
            }
        }
        debug_assert_eq!(eval_imgs.len(), cats.len() * a_n * i_n);

        // accumulate
        let r_n = p.rec_thrs.len();
        let k_n = cats.len();
        let m_n = max_dets.len();
        let mut precision = vec![-1.0; t_n * r_n * k_n * a_n * m_n];
        let mut recall = vec![-1.0; t_n * k_n * a_n * m_n];
        for k in 0..k_n {
            for a in 0..a_n {
                for (m, &md) in max_dets.iter().enumerate() {
                    let es: Vec<&EvalImg> = (0..i_n)
                        .filter_map(|i| eval_imgs[(k * a_n + a) * i_n + i].as_ref())
                        .collect();
                    if es.is_empty() {
                        continue;
                    }
                    // (score, image index in es, detection index)
                    let mut order: Vec<(f64, usize, usize)> = Vec::new();
                    for (ei, e) in es.iter().enumerate() {
                        for (di, &s) in e.dt_scores.iter().take(md).enumerate() {
                            order.push((s, ei, di));
                        }
                    }
                    order.sort_by(|x, y| desc(x.0, y.0)); // stable mergesort of -score
                    let npig = es
                        .iter()
                        .flat_map(|e| e.gt_ignore.iter())
                        .filter(|&&ig| !ig)
                        .count();
                    if npig == 0 {
                        continue;
                    }
                    let nd = order.len();
                    for t in 0..t_n {
                        let mut rc = Vec::with_capacity(nd);
                        let mut pr = Vec::with_capacity(nd);
                        let (mut tp, mut fp) = (0u64, 0u64);
                        for &(_, ei, di) in &order {
                            let matched = es[ei].dt_matched[t][di];
                            let ignored = es[ei].dt_ignore[t][di];
                            if matched && !ignored {
                                tp += 1;
                            }
                            if !matched && !ignored {
                                fp += 1;
                            }
                            let (tpf, fpf) = (tp as f64, fp as f64);
                            rc.push(tpf / npig as f64);
                            pr.push(tpf / (fpf + tpf + f64::EPSILON));
                        }
                        let ri = ((t * k_n + k) * a_n + a) * m_n + m;
                        recall[ri] = rc.last().copied().unwrap_or(0.0);
                        for i in (1..nd).rev() {
                            if pr[i] > pr[i - 1] {
                                pr[i - 1] = pr[i];
                            }
                        }
                        for (r, &thr) in p.rec_thrs.iter().enumerate() {
                            // np.searchsorted(rc, thr, side='left')
                            let pi = rc.partition_point(|&x| x < thr);
                            let v = if pi < nd { pr[pi] } else { 0.0 };
                            precision[(((t * r_n + r) * k_n + k) * a_n + a) * m_n + m] = v;
                        }
                    }
                }
            }
        }

        // summarize
        let summ = |ap: bool, iou_thr: Option<f64>, area: &str, md: usize| -> f64 {
            let aind: Vec<usize> = p
                .area_rng_lbl
                .iter()
                .enumerate()
                .filter(|(_, l)| *l == area)
                .map(|(i, _)| i)
                .collect();
            let mind: Vec<usize> = max_dets
                .iter()
                .enumerate()
                .filter(|(_, &x)| x == md)
                .map(|(i, _)| i)
                .collect();
            let tind: Vec<usize> = match iou_thr {
                None => (0..t_n).collect(),
                Some(thr) => (0..t_n).filter(|&t| p.iou_thrs[t] == thr).collect(),
            };
            let mut v = Vec::new();
            for &t in &tind {
                if ap {
                    for r in 0..r_n {
                        for k in 0..k_n {
                            for &a in &aind {
                                for &m in &mind {
                                    v.push(
                                        precision[(((t * r_n + r) * k_n + k) * a_n + a) * m_n + m],
                                    );
                                }
                            }
                        }
                    }
                } else {
                    for k in 0..k_n {
                        for &a in &aind {
                            for &m in &mind {
                                v.push(recall[((t * k_n + k) * a_n + a) * m_n + m]);
                            }
                        }
                    }
                }
            }
            mean_valid(&v)
        };
        let (m0, m1, m2) = (max_dets[0], max_dets[1], max_dets[2]);
        let stats = [
            summ(true, None, "all", m2),
            summ(true, Some(0.5), "all", m2),
            summ(true, Some(0.75), "all", m2),
            summ(true, None, "small", m2),
            summ(true, None, "medium", m2),
            summ(true, None, "large", m2),
            summ(false, None, "all", m0),
            summ(false, None, "all", m1),
            summ(false, None, "all", m2),
            summ(false, None, "small", m2),
            summ(false, None, "medium", m2),
            summ(false, None, "large", m2),
        ];
        Ok(CocoEvalResult {
            stats,
            precision,
            recall,
            counts: [t_n, r_n, k_n, a_n, m_n],
            category_ids: if p.use_cats {
                self.categories.iter().copied().collect()
            } else {
                Vec::new()
            },
        })
    }
}

/// `COCOeval.evaluateImg` for one image, category and area range. `d` is sorted by score
/// and cut at max_det already; `ious[d][g]` in the original gt order.
fn evaluate_img(
    g: &[&GroundTruth],
    d: &[&Detection],
    ious: &[Vec<f64>],
    rng: [f64; 2],
    iou_thrs: &[f64],
) -> Option<EvalImg> {
    if g.is_empty() && d.is_empty() {
        return None;
    }
    let out_of = |area: f64| area < rng[0] || area > rng[1];
    let g_ignore_raw: Vec<bool> = g
        .iter()
        .map(|x| x.iscrowd || out_of(x.area.unwrap_or(x.mask.area() as f64)))
        .collect();
    // gt sorted by ignore flag (stable)
    let mut gtind: Vec<usize> = (0..g.len()).collect();
    gtind.sort_by_key(|&i| g_ignore_raw[i]);
    let gt_ig: Vec<bool> = gtind.iter().map(|&i| g_ignore_raw[i]).collect();
    let crowd: Vec<bool> = gtind.iter().map(|&i| g[i].iscrowd).collect();
    let t_n = iou_thrs.len();
    let (gn, dn) = (g.len(), d.len());
    let mut gtm = vec![vec![false; gn]; t_n];
    let mut dtm = vec![vec![false; dn]; t_n];
    let mut dt_ig = vec![vec![false; dn]; t_n];
    if !ious.is_empty() {
        for (ti, &t) in iou_thrs.iter().enumerate() {
            for di in 0..dn {
                let mut iou = t.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for gi in 0..gn {
                    if gtm[ti][gi] && !crowd[gi] {
                        continue;
                    }
                    if let Some(mi) = m {
                        if !gt_ig[mi] && gt_ig[gi] {
                            break;
                        }
                    }
                    let v = ious[di][gtind[gi]];
                    if v < iou {
                        continue;
                    }
                    iou = v;
                    m = Some(gi);
                }
                if let Some(mi) = m {
                    dt_ig[ti][di] = gt_ig[mi];
                    dtm[ti][di] = true;
                    gtm[ti][mi] = true;
                }
            }
        }
    }
    for di in 0..dn {
        if out_of(d[di].mask.area() as f64) {
            for ti in 0..t_n {
                if !dtm[ti][di] {
                    dt_ig[ti][di] = true;
                }
            }
        }
    }
    Some(EvalImg {
        dt_scores: d.iter().map(|x| x.score).collect(),
        dt_matched: dtm,
        dt_ignore: dt_ig,
        gt_ignore: gt_ig,
    })
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
