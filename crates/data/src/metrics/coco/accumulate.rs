//! pycocotools' `accumulate` and `summarize` steps: precision / recall over all images from
//! the per-image matches, and the 12 summary numbers.

use super::matching::EvalImg;
use super::{desc, mean_valid, CocoParams};

/// The sizes `[T, R, K, A, M]` of `eval['precision']`: IoU thresholds, recall thresholds,
/// categories, area ranges, max-detection settings (`eval['recall']` is `[T, K, A, M]`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub(super) t: usize,
    pub(super) r: usize,
    pub(super) k: usize,
    pub(super) a: usize,
    pub(super) m: usize,
}

impl Shape {
    /// `[T, R, K, A, M]`.
    pub(super) fn counts(&self) -> [usize; 5] {
        [self.t, self.r, self.k, self.a, self.m]
    }

    /// The row-major index of precision `[t, r, k, a, m]`.
    fn precision_index(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> usize {
        (((t * self.r + r) * self.k + k) * self.a + a) * self.m + m
    }

    /// The row-major index of recall `[t, k, a, m]`.
    fn recall_index(&self, t: usize, k: usize, a: usize, m: usize) -> usize {
        ((t * self.k + k) * self.a + a) * self.m + m
    }
}

/// `eval['precision']` and `eval['recall']`: -1 where a (category, area range,
/// max-detections) cell has no evaluated image or no non-ignored ground truth.
pub(super) struct Accumulated {
    shape: Shape,
    pub(super) precision: Vec<f64>,
    pub(super) recall: Vec<f64>,
}

/// `COCOeval.accumulate` over `eval_imgs` laid out as `evalImgs[k][a][i]` for `i_n` images
/// (`CocoEvaluator::evaluate_images`), with the (ascending) `max_dets` and the recall
/// thresholds `rec_thrs`.
pub(super) fn accumulate(
    eval_imgs: &[Option<EvalImg>],
    shape: Shape,
    i_n: usize,
    max_dets: &[usize],
    rec_thrs: &[f64],
) -> Accumulated {
    let mut precision = vec![-1.0; shape.t * shape.r * shape.k * shape.a * shape.m];
    let mut recall = vec![-1.0; shape.t * shape.k * shape.a * shape.m];
    for k in 0..shape.k {
        for a in 0..shape.a {
            for (m, &md) in max_dets.iter().enumerate() {
                let es: Vec<&EvalImg> = (0..i_n)
                    .filter_map(|i| eval_imgs[(k * shape.a + a) * i_n + i].as_ref())
                    .collect();
                if es.is_empty() {
                    continue;
                }
                let order = score_order(&es, md);
                let npig = es
                    .iter()
                    .flat_map(|e| e.gt_ignore.iter())
                    .filter(|&&ig| !ig)
                    .count();
                if npig == 0 {
                    continue;
                }
                for t in 0..shape.t {
                    let (rc, pr) = pr_curve(&es, &order, t, npig);
                    recall[shape.recall_index(t, k, a, m)] = rc.last().copied().unwrap_or(0.0);
                    for (r, &thr) in rec_thrs.iter().enumerate() {
                        // np.searchsorted(rc, thr, side='left')
                        let pi = rc.partition_point(|&x| x < thr);
                        let v = if pi < rc.len() { pr[pi] } else { 0.0 };
                        precision[shape.precision_index(t, r, k, a, m)] = v;
                    }
                }
            }
        }
    }
    Accumulated {
        shape,
        precision,
        recall,
    }
}

/// The first `max_det` detections of each image as (score, image index in `es`, detection
/// index), all sorted by descending score (stable mergesort of `-score`).
fn score_order(es: &[&EvalImg], max_det: usize) -> Vec<(f64, usize, usize)> {
    let mut order: Vec<(f64, usize, usize)> = Vec::new();
    for (ei, e) in es.iter().enumerate() {
        for (di, &s) in e.dt_scores.iter().take(max_det).enumerate() {
            order.push((s, ei, di));
        }
    }
    order.sort_by(|x, y| desc(x.0, y.0)); // stable mergesort of -score
    order
}

/// Cumulative recall and precision along `order` at IoU threshold `t`, for `npig`
/// non-ignored ground truths; the precision made monotone (non-increasing).
fn pr_curve(
    es: &[&EvalImg],
    order: &[(f64, usize, usize)],
    t: usize,
    npig: usize,
) -> (Vec<f64>, Vec<f64>) {
    let nd = order.len();
    let mut rc = Vec::with_capacity(nd);
    let mut pr = Vec::with_capacity(nd);
    let (mut tp, mut fp) = (0u64, 0u64);
    for &(_, ei, di) in order {
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
    for i in (1..nd).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    (rc, pr)
}

/// `COCOeval.summarize`: the 12 numbers of `stats` (AP, AP50, AP75, APs, APm, APl, AR1,
/// AR10, AR100, ARs, ARm, ARl) for the ascending `max_dets`.
pub(super) fn summarize(p: &CocoParams, max_dets: &[usize], acc: &Accumulated) -> [f64; 12] {
    let summ = |ap: bool, iou_thr: Option<f64>, area: &str, md: usize| {
        acc.summary(p, max_dets, ap, iou_thr, area, md)
    };
    let (m0, m1, m2) = (max_dets[0], max_dets[1], max_dets[2]);
    [
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
    ]
}

impl Accumulated {
    /// `COCOeval._summarize(ap, iouThr, areaRng, maxDets)`: the mean of the precision (`ap`)
    /// or recall entries > -1 at IoU threshold `iou_thr` (all of them for `None`), the area
    /// ranges labelled `area` and the max-detections settings equal to `md`; -1 for none.
    fn summary(
        &self,
        p: &CocoParams,
        max_dets: &[usize],
        ap: bool,
        iou_thr: Option<f64>,
        area: &str,
        md: usize,
    ) -> f64 {
        let s = self.shape;
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
            None => (0..s.t).collect(),
            Some(thr) => (0..s.t).filter(|&t| p.iou_thrs[t] == thr).collect(),
        };
        let mut v = Vec::new();
        for &t in &tind {
            if ap {
                for r in 0..s.r {
                    for k in 0..s.k {
                        for &a in &aind {
                            for &m in &mind {
                                v.push(self.precision[s.precision_index(t, r, k, a, m)]);
                            }
                        }
                    }
                }
            } else {
                for k in 0..s.k {
                    for &a in &aind {
                        for &m in &mind {
                            v.push(self.recall[s.recall_index(t, k, a, m)]);
                        }
                    }
                }
            }
        }
        mean_valid(&v)
    }
}
