//! pycocotools' `evaluate` step: ground truths and detections grouped per (image, category)
//! (`_prepare`), their mask or box IoUs (`computeIoU`) and the greedy matching of `evaluateImg`.

use std::collections::{BTreeMap, BTreeSet};

use super::{desc, CocoEvaluator, Detection, GroundTruth};
use crate::rle::Rle;
use crate::Result;

/// Per (image, category, area range) result of `evaluateImg`.
pub(super) struct EvalImg {
    pub(super) dt_scores: Vec<f64>,
    /// `[T][D]`: matched (to a gt) or not.
    pub(super) dt_matched: Vec<Vec<bool>>,
    /// `[T][D]`.
    pub(super) dt_ignore: Vec<Vec<bool>>,
    pub(super) gt_ignore: Vec<bool>,
}

/// Indices of the ground truths and detections of the declared categories, grouped by
/// (image id, category id), each group in insertion order (`_prepare`).
struct Grouped {
    gts: BTreeMap<(u64, u64), Vec<usize>>,
    dts: BTreeMap<(u64, u64), Vec<usize>>,
}

impl Grouped {
    fn new(ev: &CocoEvaluator) -> Self {
        let mut gts: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
        for (i, g) in ev.gts.iter().enumerate() {
            if ev.categories.contains(&g.category_id) {
                gts.entry((g.image_id, g.category_id)).or_default().push(i);
            }
        }
        let mut dts: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
        for (i, d) in ev.dts.iter().enumerate() {
            if ev.categories.contains(&d.category_id) {
                dts.entry((d.image_id, d.category_id)).or_default().push(i);
            }
        }
        Grouped { gts, dts }
    }

    /// The ground truths and detections of image `img` in category `cat`, or in every one of
    /// `categories` (in order) for `None`.
    fn get(
        &self,
        img: u64,
        cat: Option<u64>,
        categories: &BTreeSet<u64>,
    ) -> (Vec<usize>, Vec<usize>) {
        let keys: Vec<u64> = match cat {
            Some(c) => vec![c],
            None => categories.iter().copied().collect(),
        };
        let mut g = Vec::new();
        let mut d = Vec::new();
        for c in keys {
            g.extend(self.gts.get(&(img, c)).into_iter().flatten().copied());
            d.extend(self.dts.get(&(img, c)).into_iter().flatten().copied());
        }
        (g, d)
    }
}

impl CocoEvaluator {
    /// `evaluateImg` of every (category, area range, image), laid out as `evalImgs[k][a][i]`
    /// (`None` where an image has neither ground truth nor detection). `cats`: the
    /// categories, or `[None]` to pool them; each image's detections are sorted by score and
    /// cut at `max_det`.
    pub(super) fn evaluate_images(
        &self,
        cats: &[Option<u64>],
        max_det: usize,
    ) -> Result<Vec<Option<EvalImg>>> {
        let p = &self.params;
        let grouped = Grouped::new(self);
        let img_ids: Vec<u64> = self.images.keys().copied().collect();
        let a_n = p.area_rng.len();
        let i_n = img_ids.len();
        let mut eval_imgs: Vec<Option<EvalImg>> = Vec::with_capacity(cats.len() * a_n * i_n);
        for &cat in cats {
            // computeIoU once per image
            let mut per_img = Vec::with_capacity(i_n);
            for &img in &img_ids {
                let (gi, mut di) = grouped.get(img, cat, &self.categories);
                // stable mergesort of -score
                di.sort_by(|&a, &b| desc(self.dts[a].score, self.dts[b].score));
                di.truncate(max_det);
                let ious = self.compute_iou(&gi, &di)?;
                let g: Vec<&GroundTruth> = gi.iter().map(|&i| &self.gts[i]).collect();
                let d: Vec<(&Detection, f64)> = di
                    .iter()
                    .map(|&i| (&self.dts[i], self.dt_boxes[i].1))
                    .collect();
                per_img.push((g, d, ious));
            }
            for rng in &p.area_rng {
                for (g, d, ious) in &per_img {
                    eval_imgs.push(evaluate_img(g, d, ious, *rng, &p.iou_thrs));
                }
            }
        }
        debug_assert_eq!(eval_imgs.len(), cats.len() * a_n * i_n);
        Ok(eval_imgs)
    }
}

impl CocoEvaluator {
    /// `COCOeval.computeIoU` of ground truths `g` and detections `d` (indices): `ious[d][g]`,
    /// empty when either side is; mask or box IoUs by the evaluator's type.
    fn compute_iou(&self, g: &[usize], d: &[usize]) -> Result<Vec<Vec<f64>>> {
        if g.is_empty() || d.is_empty() {
            return Ok(Vec::new());
        }
        let crowd: Vec<bool> = g.iter().map(|&i| self.gts[i].iscrowd).collect();
        if self.boxes {
            let db: Vec<[f64; 4]> = d.iter().map(|&i| self.dt_boxes[i].0).collect();
            let gb: Vec<[f64; 4]> = g.iter().map(|&i| self.gt_boxes[i]).collect();
            return Ok(crate::rle::bbox_iou(&db, &gb, &crowd));
        }
        let dm: Vec<&Rle> = d.iter().map(|&i| &self.dts[i].mask).collect();
        let gm: Vec<&Rle> = g.iter().map(|&i| &self.gts[i].mask).collect();
        crate::rle::iou_refs(&dm, &gm, &crowd)
    }
}

/// `COCOeval.evaluateImg` for one image, category and area range. `d` is sorted by score
/// and cut at max_det already, each with its area; `ious[d][g]` in the original gt order.
fn evaluate_img(
    g: &[&GroundTruth],
    d: &[(&Detection, f64)],
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
        if out_of(d[di].1) {
            for ti in 0..t_n {
                if !dtm[ti][di] {
                    dt_ig[ti][di] = true;
                }
            }
        }
    }
    Some(EvalImg {
        dt_scores: d.iter().map(|x| x.0.score).collect(),
        dt_matched: dtm,
        dt_ignore: dt_ig,
        gt_ignore: gt_ig,
    })
}
