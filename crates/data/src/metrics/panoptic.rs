//! Panoptic quality: PQ, SQ, RQ over all / thing / stuff categories.
//!
//! A port of panopticapi's `pq_compute_single_core` and `PQStat`
//! (github.com/cocodataset/panopticapi, `panopticapi/evaluation.py`; mmdet 3.3's
//! `mmdet/evaluation/functional/panoptic_utils.py` uses the same code):
//! - segments are matched when they have the same category and IoU > 0.5, where the union
//!   leaves out the prediction's pixels on VOID (segment id 0) ground truth; the match is
//!   unique because IoU > 0.5;
//! - unmatched non-crowd ground truths are false negatives; crowd (`iscrowd`) ground truths
//!   never match and are never false negatives;
//! - an unmatched prediction is a false positive unless more than half of it lies on VOID
//!   plus the (last listed) crowd region of its category;
//! - per category `PQ = sum IoU / (TP + FP/2 + FN/2)`, `SQ = sum IoU / TP`,
//!   `RQ = TP / (TP + FP/2 + FN/2)`, averaged over the categories with `TP + FP + FN > 0`.
//!
//! Inputs are per-pixel segment-id maps (COCO panoptic PNGs decode to ids with
//! [`rgb_to_id`]) plus the segment lists of the JSON. Unlike panopticapi, which takes a
//! ground-truth segment's `area` from the JSON, the area is counted in the id map (the two
//! agree for COCO's annotations). Where panopticapi raises `KeyError` this returns
//! [`Error::InvalidArgument`]; with no category to average, PQ / SQ / RQ are NaN (panopticapi
//! divides by zero).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{Error, Result};

/// The segment id of unlabeled pixels.
pub const VOID: u32 = 0;

/// A category of the panoptic label set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PanopticCategory {
    /// Category id.
    pub id: u32,
    /// Countable object (thing) rather than amorphous region (stuff).
    pub isthing: bool,
}

/// One entry of a panoptic annotation's `segments_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Segment id, as in the id map; never [`VOID`].
    pub id: u32,
    /// Category id.
    pub category_id: u32,
    /// A crowd region (ground truth only; ignored on predictions).
    pub iscrowd: bool,
}

/// Accumulated statistics of one category (panopticapi's `PQStatCat`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PqStatCat {
    /// Sum of the IoUs of the matched pairs.
    pub iou: f64,
    /// Matched pairs.
    pub tp: u64,
    /// Unmatched predictions (not ignored).
    pub fp: u64,
    /// Unmatched non-crowd ground truths.
    pub fn_: u64,
}

/// PQ / SQ / RQ averaged over a set of categories.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PqSummary {
    /// Panoptic quality.
    pub pq: f64,
    /// Segmentation quality.
    pub sq: f64,
    /// Recognition quality.
    pub rq: f64,
    /// Number of categories averaged (those with `TP + FP + FN > 0`).
    pub n: usize,
}

/// PQ / SQ / RQ of one category (0 for a category never seen).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PqClass {
    /// Category id.
    pub category_id: u32,
    /// Panoptic quality.
    pub pq: f64,
    /// Segmentation quality.
    pub sq: f64,
    /// Recognition quality.
    pub rq: f64,
}

/// The result of [`PanopticQuality::compute`].
#[derive(Clone, Debug, PartialEq)]
pub struct PqResult {
    /// Over all categories.
    pub all: PqSummary,
    /// Over thing categories.
    pub things: PqSummary,
    /// Over stuff categories.
    pub stuff: PqSummary,
    /// Per category, in the order the categories were given.
    pub per_class: Vec<PqClass>,
}

/// Accumulating panoptic-quality metric (panopticapi's `pq_compute`).
///
/// ```
/// use segkit_data::metrics::{PanopticCategory, PanopticQuality, SegmentInfo};
/// let cats = [PanopticCategory { id: 1, isthing: true }];
/// let mut pq = PanopticQuality::new(&cats)?;
/// let seg = [SegmentInfo { id: 5, category_id: 1, iscrowd: false }];
/// pq.update(&[5, 5, 0, 0], &seg, &[5, 5, 5, 0], &seg)?;
/// let r = pq.compute();
/// assert_eq!(r.all.rq, 1.0);
/// assert!((r.all.sq - 1.0).abs() < 1e-12); // the pixel on VOID leaves the union
/// # Ok::<(), segkit_data::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PanopticQuality {
    categories: Vec<PanopticCategory>,
    stats: HashMap<u32, PqStatCat>,
}

fn bad(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// panopticapi's `rgb2id`: the segment id of each pixel of an RGB panoptic PNG
/// (`R + 256 G + 256^2 B`), from interleaved RGB bytes.
pub fn rgb_to_id(rgb: &[u8]) -> Result<Vec<u32>> {
    if !rgb.len().is_multiple_of(3) {
        return Err(bad(format!(
            "RGB buffer length {} is not a multiple of 3",
            rgb.len()
        )));
    }
    Ok(rgb
        .chunks_exact(3)
        .map(|p| p[0] as u32 + 256 * p[1] as u32 + 256 * 256 * p[2] as u32)
        .collect())
}

fn segment_map(segs: &[SegmentInfo], what: &str) -> Result<BTreeMap<u32, SegmentInfo>> {
    let mut m = BTreeMap::new();
    for s in segs {
        if s.id == VOID {
            return Err(bad(format!("{what} segment id 0 is reserved for VOID")));
        }
        if m.insert(s.id, *s).is_some() {
            return Err(bad(format!("{what} segment id {} is listed twice", s.id)));
        }
    }
    Ok(m)
}

impl PanopticQuality {
    /// A metric over the given categories (ids must be unique).
    pub fn new(categories: &[PanopticCategory]) -> Result<Self> {
        let mut seen = HashSet::new();
        for c in categories {
            if !seen.insert(c.id) {
                return Err(bad(format!("category id {} is listed twice", c.id)));
            }
        }
        Ok(PanopticQuality {
            categories: categories.to_vec(),
            stats: HashMap::new(),
        })
    }

    /// The accumulated statistics of a category (zero if never seen).
    pub fn stat(&self, category_id: u32) -> PqStatCat {
        self.stats.get(&category_id).copied().unwrap_or_default()
    }

    /// Forgets all accumulated images.
    pub fn reset(&mut self) {
        self.stats.clear();
    }

    /// Adds one image: ground-truth and predicted segment-id maps of equal length
    /// ([`VOID`] = unlabeled) and their segment lists. Every nonzero id in `pred_ids` must be
    /// listed in `pred_segments` with a known category, and every listed prediction must
    /// occur in the map.
    pub fn update(
        &mut self,
        gt_ids: &[u32],
        gt_segments: &[SegmentInfo],
        pred_ids: &[u32],
        pred_segments: &[SegmentInfo],
    ) -> Result<()> {
        if gt_ids.len() != pred_ids.len() {
            return Err(segkit_core::Error::shape(
                "panoptic prediction vs ground truth",
                &[gt_ids.len()],
                &[pred_ids.len()],
            ));
        }
        let gt_segms = segment_map(gt_segments, "ground-truth")?;
        let pred_segms = segment_map(pred_segments, "predicted")?;
        let known: HashSet<u32> = self.categories.iter().map(|c| c.id).collect();

        // areas and the confusion of (gt id, pred id)
        let mut pred_area: HashMap<u32, u64> = HashMap::new();
        let mut gt_area: HashMap<u32, u64> = HashMap::new();
        let mut pairs: HashMap<(u32, u32), u64> = HashMap::new();
        for (&g, &p) in gt_ids.iter().zip(pred_ids) {
            *pred_area.entry(p).or_default() += 1;
            *gt_area.entry(g).or_default() += 1;
            *pairs.entry((g, p)).or_default() += 1;
        }
        // prediction sanity checks
        let mut present: Vec<u32> = pred_area.keys().copied().collect();
        present.sort_unstable();
        for p in present {
            match pred_segms.get(&p) {
                None if p == VOID => {}
                None => {
                    return Err(bad(format!(
                        "segment id {p} is in the predicted id map but not in its segment list"
                    )))
                }
                Some(s) if !known.contains(&s.category_id) => {
                    return Err(bad(format!(
                        "predicted segment {p} has unknown category id {}",
                        s.category_id
                    )))
                }
                Some(_) => {}
            }
        }
        let missing: Vec<u32> = pred_segms
            .keys()
            .filter(|id| !pred_area.contains_key(id))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(bad(format!(
                "predicted segments {missing:?} are listed but absent from the id map"
            )));
        }

        // matches, in np.unique order of gt * OFFSET + pred
        let mut keys: Vec<(u32, u32)> = pairs.keys().copied().collect();
        keys.sort_unstable();
        let mut gt_matched = HashSet::new();
        let mut pred_matched = HashSet::new();
        for &(g, p) in &keys {
            let (Some(gs), Some(ps)) = (gt_segms.get(&g), pred_segms.get(&p)) else {
                continue;
            };
            if gs.iscrowd || gs.category_id != ps.category_id {
                continue;
            }
            let inter = pairs[&(g, p)];
            let void = pairs.get(&(VOID, p)).copied().unwrap_or(0);
            let union = pred_area[&p] + gt_area.get(&g).copied().unwrap_or(0) - inter - void;
            let iou = inter as f64 / union as f64;
            if iou > 0.5 {
                let st = self.stats.entry(gs.category_id).or_default();
                st.tp += 1;
                st.iou += iou;
                gt_matched.insert(g);
                pred_matched.insert(p);
            }
        }

        // false negatives; crowd regions per category (the last listed wins)
        let mut crowd: HashMap<u32, u32> = HashMap::new();
        for s in gt_segments {
            if gt_matched.contains(&s.id) {
                continue;
            }
            if s.iscrowd {
                crowd.insert(s.category_id, s.id);
                continue;
            }
            self.stats.entry(s.category_id).or_default().fn_ += 1;
        }

        // false positives, unless mostly on VOID / crowd
        for s in pred_segments {
            if pred_matched.contains(&s.id) {
                continue;
            }
            let mut inter = pairs.get(&(VOID, s.id)).copied().unwrap_or(0);
            if let Some(&c) = crowd.get(&s.category_id) {
                inter += pairs.get(&(c, s.id)).copied().unwrap_or(0);
            }
            if inter as f64 / pred_area[&s.id] as f64 > 0.5 {
                continue;
            }
            self.stats.entry(s.category_id).or_default().fp += 1;
        }
        Ok(())
    }

    fn average(&self, isthing: Option<bool>) -> (PqSummary, Vec<PqClass>) {
        let (mut pq, mut sq, mut rq, mut n) = (0.0, 0.0, 0.0, 0usize);
        let mut per = Vec::new();
        for c in &self.categories {
            if isthing.is_some_and(|t| t != c.isthing) {
                continue;
            }
            let s = self.stat(c.id);
            if s.tp + s.fp + s.fn_ == 0 {
                per.push(PqClass {
                    category_id: c.id,
                    pq: 0.0,
                    sq: 0.0,
                    rq: 0.0,
                });
                continue;
            }
            n += 1;
            let denom = s.tp as f64 + 0.5 * s.fp as f64 + 0.5 * s.fn_ as f64;
            let pq_c = s.iou / denom;
            let sq_c = if s.tp != 0 { s.iou / s.tp as f64 } else { 0.0 };
            let rq_c = s.tp as f64 / denom;
            per.push(PqClass {
                category_id: c.id,
                pq: pq_c,
                sq: sq_c,
                rq: rq_c,
            });
            pq += pq_c;
            sq += sq_c;
            rq += rq_c;
        }
        let k = n as f64;
        (
            PqSummary {
                pq: pq / k,
                sq: sq / k,
                rq: rq / k,
                n,
            },
            per,
        )
    }

    /// PQ / SQ / RQ over everything accumulated (`PQStat.pq_average` for All, Things, Stuff).
    pub fn compute(&self) -> PqResult {
        let (all, per_class) = self.average(None);
        PqResult {
            all,
            things: self.average(Some(true)).0,
            stuff: self.average(Some(false)).0,
            per_class,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u32, category_id: u32, iscrowd: bool) -> SegmentInfo {
        SegmentInfo {
            id,
            category_id,
            iscrowd,
        }
    }

    #[test]
    fn crowd_and_void_ignore() -> Result<()> {
        let cats = [PanopticCategory {
            id: 1,
            isthing: true,
        }];
        let mut pq = PanopticQuality::new(&cats)?;
        // gt: crowd 7 over 4 px; pred 3 covers the crowd (ignored), pred 4 sits on VOID
        let gt = [7, 7, 7, 7, 0, 0];
        let pr = [3, 3, 3, 0, 4, 4];
        pq.update(
            &gt,
            &[seg(7, 1, true)],
            &pr,
            &[seg(3, 1, false), seg(4, 1, false)],
        )?;
        let s = pq.stat(1);
        assert_eq!((s.tp, s.fp, s.fn_), (0, 0, 0));
        assert!(pq.compute().all.pq.is_nan());
        Ok(())
    }

    #[test]
    fn sanity_errors() -> Result<()> {
        let cats = [PanopticCategory {
            id: 1,
            isthing: true,
        }];
        let mut pq = PanopticQuality::new(&cats)?;
        let s1 = [seg(1, 1, false)];
        assert!(pq.update(&[1, 1], &s1, &[2, 2], &s1).is_err()); // 2 not listed
        assert!(pq.update(&[1, 1], &s1, &[0, 0], &s1).is_err()); // 1 listed, absent
        assert!(pq
            .update(&[1, 1], &s1, &[1, 1], &[seg(1, 9, false)])
            .is_err()); // category
        assert!(pq.update(&[1], &s1, &[1, 1], &s1).is_err()); // lengths
        assert!(pq.update(&[0], &[seg(0, 1, false)], &[0], &[]).is_err()); // VOID id listed
        assert!(PanopticQuality::new(&[cats[0], cats[0]]).is_err());
        assert_eq!(rgb_to_id(&[1, 2, 3])?, vec![1 + 512 + 3 * 65536]);
        Ok(())
    }
}
