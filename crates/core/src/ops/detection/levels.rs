//! Assigning RoIs to FPN levels ("Feature Pyramid Networks for Object Detection", eq. 1) and
//! distributing them to per-level lists.
//!
//! [`BoxConvention::Legacy`]: Detectron's `map_rois_to_fpn_levels` (`lib/utils/fpn.py`):
//! `s = sqrt(max(area, 0))` with `area = (x2 - x1 + 1)(y2 - y1 + 1)`,
//! `level = floor(k0 + log2(s / s0 + 1e-6))` clipped to `[k_min, k_max]`.
//! [`BoxConvention::Continuous`]: torchvision's `LevelMapper`: `s = sqrt((x2 - x1)(y2 - y1))`,
//! `level = floor(k0 + log2(s / s0) + 1e-6)` clipped. Both in `f32`. [`distribute_to_levels`]
//! is Detectron's `distribute` (`collect_and_distribute_fpn_rpn_proposals.py`): the RoIs of
//! each level in their original order, and the permutation (`rois_idx_restore`) that puts the
//! concatenated per-level results back in the original order.

use crate::{Error, Result};

use super::{Box4, BoxConvention};

/// The RoI-to-level rule.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LevelMapper {
    /// Finest level (`FPN.ROI_MIN_LEVEL`). Default 2.
    pub k_min: usize,
    /// Coarsest level (`FPN.ROI_MAX_LEVEL`). Default 5.
    pub k_max: usize,
    /// Canonical box size `s0` (`FPN.ROI_CANONICAL_SCALE`). Default 224.
    pub canonical_scale: f32,
    /// Level of a box of the canonical size (`FPN.ROI_CANONICAL_LEVEL`). Default 4.
    pub canonical_level: usize,
    /// Area convention and placement of the `1e-6` (see the module docs).
    pub convention: BoxConvention,
}

impl LevelMapper {
    /// Detectron's / PANet's rule: levels 2..5, 224 at level 4, legacy areas.
    pub fn detectron() -> Self {
        Self {
            k_min: 2,
            k_max: 5,
            canonical_scale: 224.0,
            canonical_level: 4,
            convention: BoxConvention::Legacy,
        }
    }

    /// torchvision's `LevelMapper(k_min, k_max)` (224 at level 4, `eps = 1e-6`).
    pub fn torchvision(k_min: usize, k_max: usize) -> Self {
        Self {
            k_min,
            k_max,
            convention: BoxConvention::Continuous,
            ..Self::detectron()
        }
    }

    /// The level of one box.
    pub fn level(&self, b: &Box4) -> usize {
        let (w, h) = self.convention.size(b);
        let s0 = self.canonical_scale;
        let k0 = self.canonical_level as f32;
        let t = match self.convention {
            BoxConvention::Legacy => {
                let area = w * h;
                let s = if area < 0.0 { 0.0 } else { area.sqrt() };
                (k0 + (s / s0 + 1e-6).log2()).floor()
            }
            BoxConvention::Continuous => (k0 + ((w * h).sqrt() / s0).log2() + 1e-6).floor(),
        };
        // NaN (degenerate torchvision areas) maps to the finest level, as clamp then cast does.
        if t.is_nan() {
            return self.k_min;
        }
        t.clamp(self.k_min as f32, self.k_max as f32) as usize
    }
}

/// The level of every box under `mapper`.
pub fn map_rois_to_levels(boxes: &[Box4], mapper: &LevelMapper) -> Vec<usize> {
    boxes.iter().map(|b| mapper.level(b)).collect()
}

/// RoIs grouped by level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelAssignment {
    /// For levels `k_min..=k_max`, the indices of that level's RoIs, in their original order.
    pub per_level: Vec<Vec<usize>>,
    /// `restore[i]`: the position of RoI `i` in the concatenation of `per_level` (Detectron's
    /// `rois_idx_restore`), so `concat[restore[i]]` is RoI `i`'s result.
    pub restore: Vec<usize>,
}

/// Groups RoIs by their `levels` (each in `k_min..=k_max`). Errors on a level outside the range.
pub fn distribute_to_levels(
    levels: &[usize],
    k_min: usize,
    k_max: usize,
) -> Result<LevelAssignment> {
    if k_min > k_max {
        return Err(Error::InvalidArgument(format!(
            "levels: k_min {k_min} > k_max {k_max}"
        )));
    }
    let mut per_level = vec![Vec::new(); k_max - k_min + 1];
    for (i, &l) in levels.iter().enumerate() {
        if !(k_min..=k_max).contains(&l) {
            return Err(Error::InvalidArgument(format!(
                "RoI {i} has level {l}, outside {k_min}..={k_max}"
            )));
        }
        per_level[l - k_min].push(i);
    }
    let mut restore = vec![0; levels.len()];
    for (pos, &i) in per_level.iter().flatten().enumerate() {
        restore[i] = pos;
    }
    Ok(LevelAssignment { per_level, restore })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_boxes_and_distribution() {
        let m = LevelMapper::detectron();
        // 224 x 224 legacy box (x2 = 223) is level 4; 112 is level 3; tiny and huge clip.
        let b = [
            [0.0, 0.0, 223.0, 223.0],
            [0.0, 0.0, 111.0, 111.0],
            [0.0, 0.0, 1.0, 1.0],
            [0.0, 0.0, 2e4, 2e4],
        ];
        let l = map_rois_to_levels(&b, &m);
        assert_eq!(l, [4, 3, 2, 5]);
        let d = distribute_to_levels(&l, 2, 5).unwrap();
        assert_eq!(d.per_level, vec![vec![2], vec![1], vec![0], vec![3]]);
        assert_eq!(d.restore, [2, 1, 0, 3]);
        assert!(distribute_to_levels(&[7], 2, 5).is_err());
        assert_eq!(m.level(&[5.0, 5.0, 1.0, 1.0]), 2);
    }
}
