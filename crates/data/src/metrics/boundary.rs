//! The boundary F-score of Gated-SCNN (Takikawa et al., ICCV 2019, section 4: "boundary
//! F-score ... at thresholds 3, 5, 9 and 12 pixels" on Cityscapes), as its official evaluation
//! computes it (nv-tlabs/GSCNN `utils/f_boundary.py`, adapted from the DAVIS benchmark's
//! `db_eval_boundary`, and `train.py`'s `evaluate`):
//!
//! - for every image and every class `c`, the binary masks `pred == c` and `gt == c`, both set
//!   to 0 where the ground truth is the ignore label;
//! - their one-pixel boundaries (`seg2bmap`: a pixel differs from its right, lower or
//!   lower-right neighbour; the last row / column compare along the border only);
//! - the tolerance `d` in pixels: `ceil(bound_th * sqrt(H^2 + W^2))` for `bound_th < 1`, else
//!   `bound_th` ([`BoundaryTolerance`]); a boundary pixel is matched when a boundary pixel of
//!   the other map lies in the disk of radius `d` around it (`binary_dilation(.., disk(d))`,
//!   `dy^2 + dx^2 <= d^2`);
//! - precision = matched predicted / predicted boundary pixels, recall = matched ground-truth /
//!   ground-truth boundary pixels, `F = 2PR / (P + R)` (0 when `P + R = 0`); an image where the
//!   class has no boundary in either map scores `F = 1`, in exactly one of them `F = 0`;
//! - per class, the mean F over images; the score is the mean over classes.
//!
//! The official thresholds are `bound_th` 0.0005, 0.001875, 0.00375 and 0.005, i.e. 2, 5, 9 and
//! 12 pixels at 1024 x 2048 (the paper states 3, 5, 9, 12).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How far a boundary pixel may be from the other map's boundary and still match.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundaryTolerance {
    /// A fixed radius in pixels (`bound_th >= 1` in the official code).
    Pixels(usize),
    /// A fraction of the image diagonal, rounded up (`bound_th < 1`: `ceil(th * diag)`).
    DiagonalFraction(f64),
}

impl BoundaryTolerance {
    /// The radius in pixels for an `H x W` image.
    pub fn pixels(&self, height: usize, width: usize) -> Result<usize> {
        match *self {
            Self::Pixels(p) => Ok(p),
            Self::DiagonalFraction(f) => {
                if !(f.is_finite() && f > 0.0) {
                    return Err(Error::InvalidArgument(format!(
                        "boundary tolerance: the diagonal fraction must be > 0, got {f}"
                    )));
                }
                let diag = ((height * height + width * width) as f64).sqrt();
                Ok((f * diag).ceil() as usize)
            }
        }
    }
}

/// The result of [`BoundaryFScore::compute`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundaryFResult {
    /// Per class, the mean F over the images seen (NaN before any image).
    pub per_class: Vec<f64>,
    /// The mean of `per_class` (the official "F_Score").
    pub mean: f64,
}

/// The accumulated boundary F-score over images (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct BoundaryFScore {
    num_classes: usize,
    ignore_index: i64,
    tolerance: BoundaryTolerance,
    sum: Vec<f64>,
    count: Vec<u64>,
}

impl BoundaryFScore {
    /// An empty accumulator for classes `0..num_classes`, ground-truth pixels equal to
    /// `ignore_index` excluded.
    pub fn new(num_classes: usize, ignore_index: i64, tolerance: BoundaryTolerance) -> Self {
        Self {
            num_classes,
            ignore_index,
            tolerance,
            sum: vec![0.0; num_classes],
            count: vec![0; num_classes],
        }
    }

    /// Adds one image: predicted and ground-truth class maps of `H x W`, row-major.
    pub fn update<P, G>(&mut self, pred: &[P], gt: &[G], height: usize, width: usize) -> Result<()>
    where
        P: Copy + Into<i64>,
        G: Copy + Into<i64>,
    {
        let n = height * width;
        if pred.len() != n || gt.len() != n || n == 0 {
            return Err(Error::InvalidArgument(format!(
                "boundary F-score: prediction ({}) and ground truth ({}) must both hold \
                 {height} x {width} > 0 values",
                pred.len(),
                gt.len()
            )));
        }
        let radius = self.tolerance.pixels(height, width)?;
        let pred: Vec<i64> = pred.iter().map(|&p| p.into()).collect();
        let gt: Vec<i64> = gt.iter().map(|&g| g.into()).collect();
        for c in 0..self.num_classes {
            let c = c as i64;
            let fg: Vec<bool> = (0..n)
                .map(|i| pred[i] == c && gt[i] != self.ignore_index)
                .collect();
            let gm: Vec<bool> = gt.iter().map(|&g| g == c).collect();
            let f = boundary_f(&fg, &gm, height, width, radius).0;
            self.sum[c as usize] += f;
            self.count[c as usize] += 1;
        }
        Ok(())
    }

    /// Per-class and mean F over the images added so far.
    pub fn compute(&self) -> BoundaryFResult {
        let per_class: Vec<f64> = self
            .sum
            .iter()
            .zip(&self.count)
            .map(|(&s, &k)| if k == 0 { f64::NAN } else { s / k as f64 })
            .collect();
        let mean = per_class.iter().sum::<f64>() / self.num_classes.max(1) as f64;
        BoundaryFResult { per_class, mean }
    }
}

/// The one-pixel boundary of a binary `H x W` mask (DAVIS / BSDS `seg2bmap`).
pub fn seg2bmap(mask: &[bool], height: usize, width: usize) -> Vec<bool> {
    let at = |y: usize, x: usize| y < height && x < width && mask[y * width + x];
    let mut b = vec![false; height * width];
    for y in 0..height {
        for x in 0..width {
            let s = at(y, x);
            let (e, so, se) = (at(y, x + 1), at(y + 1, x), at(y + 1, x + 1));
            b[y * width + x] = if y + 1 == height && x + 1 == width {
                false
            } else if y + 1 == height {
                s ^ e
            } else if x + 1 == width {
                s ^ so
            } else {
                (s ^ e) | (s ^ so) | (s ^ se)
            };
        }
    }
    b
}

/// `(F, precision, recall)` of a predicted against a ground-truth binary mask with a
/// tolerance of `radius` pixels (`db_eval_boundary`, the ignore region already removed).
pub fn boundary_f(
    pred: &[bool],
    gt: &[bool],
    height: usize,
    width: usize,
    radius: usize,
) -> (f64, f64, f64) {
    let pb = seg2bmap(pred, height, width);
    let gb = seg2bmap(gt, height, width);
    let n_fg = pb.iter().filter(|&&v| v).count();
    let n_gt = gb.iter().filter(|&&v| v).count();
    let (precision, recall) = match (n_fg, n_gt) {
        (0, 0) => (1.0, 1.0),
        (0, _) => (1.0, 0.0),
        (_, 0) => (0.0, 1.0),
        _ => {
            let fg_match = matched(&pb, &gb, height, width, radius);
            let gt_match = matched(&gb, &pb, height, width, radius);
            (fg_match as f64 / n_fg as f64, gt_match as f64 / n_gt as f64)
        }
    };
    let f = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    (f, precision, recall)
}

/// How many `on` pixels of `a` have an `on` pixel of `b` within the disk of `radius`.
fn matched(a: &[bool], b: &[bool], height: usize, width: usize, radius: usize) -> usize {
    // Row prefix counts of b: a disk query is one range per row offset.
    let mut pre = vec![0u32; height * (width + 1)];
    for y in 0..height {
        for x in 0..width {
            pre[y * (width + 1) + x + 1] = pre[y * (width + 1) + x] + u32::from(b[y * width + x]);
        }
    }
    let r = radius as i64;
    let half: Vec<i64> = (-r..=r)
        .map(|dy| {
            let mut h = 0;
            while (h + 1) * (h + 1) + dy * dy <= r * r {
                h += 1;
            }
            h
        })
        .collect();
    let (hh, ww) = (height as i64, width as i64);
    let mut count = 0;
    for y in 0..hh {
        for x in 0..ww {
            if !a[(y * ww + x) as usize] {
                continue;
            }
            let hit = (-r..=r).any(|dy| {
                let yy = y + dy;
                if yy < 0 || yy >= hh {
                    return false;
                }
                let h = half[(dy + r) as usize];
                let (x0, x1) = ((x - h).max(0), (x + h + 1).min(ww));
                let row = (yy * (ww + 1)) as usize;
                pre[row + x1 as usize] > pre[row + x0 as usize]
            });
            count += usize::from(hit);
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_map_of_a_square() {
        // A 2 x 2 square at (1..3, 1..3) of a 4 x 4 mask.
        let m: Vec<bool> = (0..16)
            .map(|i| (1..3).contains(&(i / 4)) && (1..3).contains(&(i % 4)))
            .collect();
        let b: Vec<u8> = seg2bmap(&m, 4, 4).into_iter().map(u8::from).collect();
        assert_eq!(b, vec![1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn shifted_mask_within_tolerance() {
        let (h, w) = (20, 20);
        let sq = |o: usize| -> Vec<bool> {
            (0..h * w)
                .map(|i| (5 + o..12 + o).contains(&(i / w)) && (5..12).contains(&(i % w)))
                .collect()
        };
        let (f0, _, _) = boundary_f(&sq(0), &sq(2), h, w, 1);
        let (f2, p, r) = boundary_f(&sq(0), &sq(2), h, w, 2);
        assert!(f0 < 1.0);
        assert_eq!((f2, p, r), (1.0, 1.0, 1.0));
        let mut m = BoundaryFScore::new(2, 255, BoundaryTolerance::Pixels(2));
        let lab = |v: Vec<bool>| -> Vec<u8> { v.into_iter().map(u8::from).collect() };
        m.update(&lab(sq(0)), &lab(sq(2)), h, w).unwrap();
        assert_eq!(m.compute().mean, 1.0);
        assert!(m.update(&[0u8; 3], &[0u8; 4], 2, 2).is_err());
    }

    #[test]
    fn official_thresholds_at_cityscapes_size() {
        let px: Vec<usize> = [0.0005, 0.001875, 0.00375, 0.005]
            .iter()
            .map(|&t| {
                BoundaryTolerance::DiagonalFraction(t)
                    .pixels(1024, 2048)
                    .unwrap()
            })
            .collect();
        assert_eq!(px, vec![2, 5, 9, 12]);
    }
}
