//! Greedy non-maximum suppression with either box convention.
//!
//! [`BoxConvention::Legacy`]: Detectron's `cython_nms.nms` (`lib/utils/cython_nms.pyx`): areas
//! and intersections with `+1`, a box is suppressed when `IoU >= threshold`.
//! [`BoxConvention::Continuous`]: `torchvision.ops.nms`: no `+1`, suppressed when
//! `IoU > threshold`. Both compute in `f32` in the references' order:
//! `inter = max(0, min(x2) - max(x1) + o) * max(0, min(y2) - max(y1) + o)`,
//! `iou = inter / (area_i + area_j - inter)`.

use crate::{Error, Result};

use super::{Box4, BoxConvention};

/// Greedy NMS over `boxes` with `scores` (one per box). Visits boxes by decreasing score (ties
/// by lower index: a stable sort; Detectron's numpy `argsort` leaves tie order unspecified) and
/// returns the kept indices by decreasing score. Detectron returns the same set in increasing
/// index order, which is the same order when the input is sorted by score, as its proposals
/// are. Errors if the lengths differ or the threshold is NaN.
pub fn nms_boxes(
    boxes: &[Box4],
    scores: &[f32],
    iou_threshold: f32,
    convention: BoxConvention,
) -> Result<Vec<usize>> {
    if boxes.len() != scores.len() {
        return Err(Error::shape("nms scores", &[boxes.len()], &[scores.len()]));
    }
    if iou_threshold.is_nan() {
        return Err(Error::InvalidArgument("nms: IoU threshold is NaN".into()));
    }
    let o = convention.offset();
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    let sorted: Vec<Box4> = order.iter().map(|&i| boxes[i]).collect();
    let area: Vec<f32> = sorted
        .iter()
        .map(|b| (b[2] - b[0] + o) * (b[3] - b[1] + o))
        .collect();
    let mut suppressed = vec![false; sorted.len()];
    let mut keep = Vec::new();
    for i in 0..sorted.len() {
        if suppressed[i] {
            continue;
        }
        keep.push(order[i]);
        let bi = sorted[i];
        for j in i + 1..sorted.len() {
            if suppressed[j] {
                continue;
            }
            let bj = &sorted[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + o).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + o).max(0.0);
            let inter = w * h;
            let iou = inter / (area[i] + area[j] - inter);
            suppressed[j] = match convention {
                BoxConvention::Legacy => iou >= iou_threshold,
                BoxConvention::Continuous => iou > iou_threshold,
            };
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_suppresses_at_equality_and_counts_the_extra_pixel() {
        // Two 10x10 (legacy) boxes overlapping in 5x10: IoU = 50 / 150 = 1/3.
        let b = [[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]];
        let s = [0.9, 0.8];
        assert_eq!(
            nms_boxes(&b, &s, 1.0 / 3.0, BoxConvention::Legacy).unwrap(),
            [0]
        );
        assert_eq!(
            nms_boxes(&b, &s, 0.34, BoxConvention::Legacy).unwrap(),
            [0, 1]
        );
        // Continuous: widths 9, overlap 4 x 9 = 36, IoU = 36 / 126.
        assert_eq!(
            nms_boxes(&b, &s, 0.3, BoxConvention::Continuous).unwrap(),
            [0, 1]
        );
        assert!(nms_boxes(&b, &s[..1], 0.5, BoxConvention::Legacy).is_err());
        assert!(nms_boxes(&[], &[], 0.5, BoxConvention::Legacy)
            .unwrap()
            .is_empty());
    }
}
