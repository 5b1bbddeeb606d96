//! Merging and overlap of RLEs: `mask.merge`, `mask.iou` (`rleIou`) and `bbIou`.

use super::{bad, Rle};
use crate::Result;

impl Rle {
    /// Union (`intersect = false`) or intersection of masks of one size (`mask.merge`).
    /// Merging nothing gives the 0 x 0 mask, as pycocotools.
    pub fn merge(rles: &[Rle], intersect: bool) -> Result<Rle> {
        let Some(first) = rles.first() else {
            return Ok(Rle {
                height: 0,
                width: 0,
                counts: Vec::new(),
            });
        };
        let (h, w) = (first.height, first.width);
        if let Some(r) = rles.iter().find(|r| r.height != h || r.width != w) {
            return Err(bad(format!(
                "cannot merge RLEs of sizes {h}x{w} and {}x{}",
                r.height, r.width
            )));
        }
        if rles.len() == 1 {
            return Ok(first.clone());
        }
        if h * w == 0 {
            return Rle::zeros(h, w);
        }
        let mut cnts = first.counts.clone();
        for b in &rles[1..] {
            let a = std::mem::take(&mut cnts);
            let (am, bm) = (a.len(), b.counts.len());
            let (mut ca, mut cb) = (a[0], b.counts[0]);
            let (mut v, mut va, mut vb) = (false, false, false);
            let (mut ia, mut ib) = (1usize, 1usize);
            let mut cc: u32 = 0;
            let mut ct: u32 = 1;
            while ct > 0 {
                let c = ca.min(cb);
                cc += c;
                ct = 0;
                ca -= c;
                if ca == 0 && ia < am {
                    ca = a[ia];
                    ia += 1;
                    va = !va;
                }
                ct += ca;
                cb -= c;
                if cb == 0 && ib < bm {
                    cb = b.counts[ib];
                    ib += 1;
                    vb = !vb;
                }
                ct += cb;
                let vp = v;
                v = if intersect { va && vb } else { va || vb };
                if v != vp || ct == 0 {
                    cnts.push(cc);
                    cc = 0;
                }
            }
        }
        Ok(Rle {
            height: h,
            width: w,
            counts: cnts,
        })
    }

    /// IoU of every detection with every ground truth (`mask.iou(dt, gt, iscrowd)`):
    /// `out[d][g]`. For a crowd ground truth the union is the detection's area.
    pub fn iou(dt: &[Rle], gt: &[Rle], iscrowd: &[bool]) -> Result<Vec<Vec<f64>>> {
        let dt: Vec<&Rle> = dt.iter().collect();
        let gt: Vec<&Rle> = gt.iter().collect();
        iou_refs(&dt, &gt, iscrowd)
    }
}

/// [`Rle::iou`] on references.
pub(crate) fn iou_refs(dt: &[&Rle], gt: &[&Rle], iscrowd: &[bool]) -> Result<Vec<Vec<f64>>> {
    if iscrowd.len() != gt.len() {
        return Err(bad(format!(
            "iscrowd has {} entries for {} ground truths",
            iscrowd.len(),
            gt.len()
        )));
    }
    if let Some(first) = dt.first().or(gt.first()) {
        let (h, w) = (first.height, first.width);
        if let Some(r) = dt
            .iter()
            .chain(gt.iter())
            .find(|r| r.height != h || r.width != w)
        {
            return Err(bad(format!(
                "IoU of RLEs of sizes {h}x{w} and {}x{}",
                r.height, r.width
            )));
        }
    }
    let db: Vec<[f64; 4]> = dt.iter().map(|r| r.to_bbox()).collect();
    let gb: Vec<[f64; 4]> = gt.iter().map(|r| r.to_bbox()).collect();
    let mut out = bbox_iou(&db, &gb, iscrowd);
    for (d, row) in out.iter_mut().enumerate() {
        for (g, o) in row.iter_mut().enumerate() {
            if *o <= 0.0 {
                continue;
            }
            let (a, b) = (&dt[d], &gt[g]);
            let (i, u) = rle_intersection_union(&a.counts, &b.counts);
            let u = if i == 0 {
                1
            } else if iscrowd[g] {
                a.area()
            } else {
                u
            };
            *o = i as f64 / u as f64;
        }
    }
    Ok(out)
}

/// Intersection and union pixel counts of two RLEs of one size (the run walk of `rleIou`).
fn rle_intersection_union(a: &[u32], b: &[u32]) -> (u64, u64) {
    if a.is_empty() || b.is_empty() {
        return (0, 0);
    }
    let (mut ca, mut cb) = (a[0], b[0]);
    let (mut va, mut vb) = (false, false);
    let (mut ia, mut ib) = (1usize, 1usize);
    let (mut i, mut u) = (0u64, 0u64);
    let mut ct: u64 = 1;
    while ct > 0 {
        let c = ca.min(cb);
        if va || vb {
            u += c as u64;
            if va && vb {
                i += c as u64;
            }
        }
        ct = 0;
        ca -= c;
        if ca == 0 && ia < a.len() {
            ca = a[ia];
            ia += 1;
            va = !va;
        }
        ct += ca as u64;
        cb -= c;
        if cb == 0 && ib < b.len() {
            cb = b[ib];
            ib += 1;
            vb = !vb;
        }
        ct += cb as u64;
    }
    (i, u)
}

/// Box IoU `out[d][g]` of `[x, y, w, h]` boxes (`bbIou`); for a crowd ground truth the union is
/// the detection's area.
pub fn bbox_iou(dt: &[[f64; 4]], gt: &[[f64; 4]], iscrowd: &[bool]) -> Vec<Vec<f64>> {
    dt.iter()
        .map(|d| {
            let da = d[2] * d[3];
            gt.iter()
                .enumerate()
                .map(|(g, gb)| {
                    let ga = gb[2] * gb[3];
                    let crowd = iscrowd.get(g).copied().unwrap_or(false);
                    let w = (d[2] + d[0]).min(gb[2] + gb[0]) - d[0].max(gb[0]);
                    if w <= 0.0 {
                        return 0.0;
                    }
                    let h = (d[3] + d[1]).min(gb[3] + gb[1]) - d[1].max(gb[1]);
                    if h <= 0.0 {
                        return 0.0;
                    }
                    let i = w * h;
                    let u = if crowd { da } else { da + ga - i };
                    i / u
                })
                .collect()
        })
        .collect()
}
