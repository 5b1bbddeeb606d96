//! Box IoU (the overlap matrix of R-CNN target assignment).
//!
//! [`BoxConvention::Legacy`]: Detectron's `cython_bbox.bbox_overlaps` (`lib/utils/
//! cython_bbox.pyx`): `iw = min(x2) - max(x1) + 1`, `ih` likewise, zero unless both are
//! positive, `ua = area_n + area_k - iw ih` with `+1` areas, IoU `iw ih / ua`, in `f32`.
//! [`BoxConvention::Continuous`]: torchvision's `box_iou`: widths without `+1`, intersection
//! sides clamped at 0, `inter / (area_n + area_k - inter)`, in `f32`.
//!
//! A zero-area union gives NaN in both references; here it gives 0 (degenerate boxes overlap
//! nothing).

use super::{Box4, BoxConvention};

/// IoU of `a` and `b` under `convention` (see the module docs).
#[inline]
pub fn box_iou(a: &Box4, b: &Box4, convention: BoxConvention) -> f32 {
    let o = convention.offset();
    let iw = a[2].min(b[2]) - a[0].max(b[0]) + o;
    let ih = a[3].min(b[3]) - a[1].max(b[1]) + o;
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let area_a = (a[2] - a[0] + o) * (a[3] - a[1] + o);
    let area_b = (b[2] - b[0] + o) * (b[3] - b[1] + o);
    let inter = iw * ih;
    let union = area_a + area_b - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The `boxes.len() x queries.len()` IoU matrix, row-major (`bbox_overlaps(boxes, queries)`).
pub fn box_overlaps(boxes: &[Box4], queries: &[Box4], convention: BoxConvention) -> Vec<f32> {
    let mut out = Vec::with_capacity(boxes.len() * queries.len());
    for b in boxes {
        out.extend(queries.iter().map(|q| box_iou(b, q, convention)));
    }
    out
}

/// For each of `boxes`, the largest IoU with any of `queries` and the first query attaining it
/// (numpy's `argmax(axis=1)`); `(0.0, 0)` when `queries` is empty.
pub fn max_overlaps(
    boxes: &[Box4],
    queries: &[Box4],
    convention: BoxConvention,
) -> (Vec<f32>, Vec<usize>) {
    use rayon::prelude::*;
    boxes
        .par_iter()
        .map(|b| {
            let mut best = (0.0f32, 0usize);
            for (k, q) in queries.iter().enumerate() {
                let v = box_iou(b, q, convention);
                if k == 0 || v > best.0 {
                    best = (v, k);
                }
            }
            best
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_continuous_iou() {
        let a = [0.0, 0.0, 9.0, 9.0];
        let b = [5.0, 0.0, 14.0, 9.0];
        assert_eq!(box_iou(&a, &b, BoxConvention::Legacy), 50.0 / 150.0);
        assert_eq!(box_iou(&a, &b, BoxConvention::Continuous), 36.0 / 126.0);
        assert_eq!(
            box_iou(&a, &[20.0, 0.0, 30.0, 9.0], BoxConvention::Legacy),
            0.0
        );
        let z = [3.0, 3.0, 3.0, 3.0];
        assert_eq!(box_iou(&z, &z, BoxConvention::Continuous), 0.0);
        assert_eq!(box_iou(&z, &z, BoxConvention::Legacy), 1.0);
        let (m, i) = max_overlaps(&[a], &[b, a, a], BoxConvention::Legacy);
        assert_eq!((m[0], i[0]), (1.0, 1));
        assert_eq!(box_overlaps(&[a, b], &[a], BoxConvention::Legacy).len(), 2);
        let (m, i) = max_overlaps(&[a], &[], BoxConvention::Legacy);
        assert_eq!((m[0], i[0]), (0.0, 0));
    }
}
