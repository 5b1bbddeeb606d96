//! RoIAlign over a feature pyramid, the two ways two-stage detectors pool RoI features
//! (Detectron.pytorch `model_builder.py::roi_feature_transform`, PANet's too):
//!
//! - [`roi_align_all_levels`]: PANet's adaptive feature pooling (`panet=True`): every RoI is
//!   pooled from EVERY level, one output per level, which the head then fuses (element-wise max
//!   in PANet);
//! - [`roi_align_assigned`]: FPN's usual pooling: each RoI from the one level its size assigns it
//!   to ([`super::map_rois_to_levels`]), the per-level results put back in the RoIs' order (the
//!   `rois_idx_restore` permutation of [`super::distribute_to_levels`]).
//!
//! Both call [`crate::ops::roi_align`] (torchvision's `roi_align`, whose `aligned = false` is
//! Detectron's / Caffe2's RoIAlign) with level `l`'s `spatial_scale = 1 / stride_l`.
//!
//! # Shapes
//! `features`: one `N x C x H_l x W_l` map per level (finest first); `rois`: `K x 5` rows
//! `(batch_index, x1, y1, x2, y2)` in input pixels -> `K x C x PH x PW` (one per level for
//! [`roi_align_all_levels`]); `K` may be zero.

use candle_core::Tensor;

use crate::ops::roi_align;
use crate::{Error, Result};

/// Sampling settings of a pyramid RoIAlign (Detectron's `ROI_XFORM_*`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoiAlignConfig {
    /// Output size `PH = PW` (`ROI_XFORM_RESOLUTION`: 7 for PANet's box head, 14 for its mask
    /// head).
    pub resolution: usize,
    /// Samples per bin and axis; `<= 0` is adaptive (`ROI_XFORM_SAMPLING_RATIO`; PANet 2).
    pub sampling_ratio: i32,
    /// torchvision's `aligned` (half-pixel offset); Detectron's RoIAlign is `false`.
    pub aligned: bool,
}

impl RoiAlignConfig {
    /// Detectron's RoIAlign (`aligned = false`) at `resolution` with `sampling_ratio`.
    pub fn detectron(resolution: usize, sampling_ratio: i32) -> Self {
        Self {
            resolution,
            sampling_ratio,
            aligned: false,
        }
    }
}

fn check_levels(features: &[Tensor], scales: &[f32]) -> Result<()> {
    if features.is_empty() || features.len() != scales.len() {
        return Err(Error::InvalidArgument(format!(
            "pyramid RoIAlign: {} feature maps with {} spatial scales (need one scale per \
             map, at least one map)",
            features.len(),
            scales.len()
        )));
    }
    if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::InvalidArgument(format!(
            "pyramid RoIAlign: spatial scale {s} is not a positive number"
        )));
    }
    Ok(())
}

/// PANet's adaptive feature pooling: every RoI pooled from every level `l` at `scales[l]`
/// (`1 / stride`), one `K x C x PH x PW` tensor per level (finest first).
///
/// Errors if `features` and `scales` differ in length or are empty, a scale is not positive,
/// or [`roi_align`] rejects a level (rank, RoI shape, batch index).
pub fn roi_align_all_levels(
    features: &[Tensor],
    rois: &Tensor,
    scales: &[f32],
    cfg: &RoiAlignConfig,
) -> Result<Vec<Tensor>> {
    check_levels(features, scales)?;
    let out = (cfg.resolution, cfg.resolution);
    features
        .iter()
        .zip(scales)
        .map(|(f, &s)| roi_align(f, rois, out, s, cfg.sampling_ratio, cfg.aligned))
        .collect()
}

/// FPN's pooling: RoI `i` from level `levels[i]` (an index into `features`, finest first),
/// results in the RoIs' order, `K x C x PH x PW`.
///
/// Errors as [`roi_align_all_levels`], and if `levels` does not have one entry per RoI or names
/// a level past the last map.
pub fn roi_align_assigned(
    features: &[Tensor],
    rois: &Tensor,
    levels: &[usize],
    scales: &[f32],
    cfg: &RoiAlignConfig,
) -> Result<Tensor> {
    check_levels(features, scales)?;
    let k = rois.dims().first().copied().unwrap_or(0);
    if levels.len() != k {
        return Err(Error::shape("RoI levels", &[k], &[levels.len()]));
    }
    if let Some(&l) = levels.iter().find(|&&l| l >= features.len()) {
        return Err(Error::InvalidArgument(format!(
            "pyramid RoIAlign: RoI level index {l} but only {} feature maps",
            features.len()
        )));
    }
    let out = (cfg.resolution, cfg.resolution);
    let mut parts = Vec::new();
    let mut order = Vec::with_capacity(k);
    for (li, (f, &s)) in features.iter().zip(scales).enumerate() {
        let idx: Vec<u32> = (0..k as u32)
            .filter(|&i| levels[i as usize] == li)
            .collect();
        if idx.is_empty() {
            continue;
        }
        order.extend(idx.iter().map(|&i| i as usize));
        let ids = Tensor::new(idx.as_slice(), rois.device())?;
        let sel = rois.index_select(&ids, 0)?;
        parts.push(roi_align(f, &sel, out, s, cfg.sampling_ratio, cfg.aligned)?);
    }
    if parts.is_empty() {
        // No RoI: an empty result of the right shape.
        let c = features[0].dims().get(1).copied().unwrap_or(0);
        return Ok(Tensor::zeros(
            (0, c, cfg.resolution, cfg.resolution),
            features[0].dtype(),
            features[0].device(),
        )?);
    }
    let cat = Tensor::cat(&parts, 0)?;
    // restore[i] = position of RoI i in the concatenation.
    let mut restore = vec![0u32; k];
    for (pos, &i) in order.iter().enumerate() {
        restore[i] = pos as u32;
    }
    let restore = Tensor::new(restore.as_slice(), rois.device())?;
    Ok(cat.index_select(&restore, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn all_levels_and_assigned_agree_with_single_level_calls() {
        let dev = Device::Cpu;
        let f0 = Tensor::arange(0f32, 2.0 * 3.0 * 16.0 * 16.0, &dev)
            .unwrap()
            .reshape((2, 3, 16, 16))
            .unwrap();
        let f1 = (f0.avg_pool2d(2).unwrap() * 2.0).unwrap();
        let rois = Tensor::new(
            &[[0f32, 1.0, 2.0, 30.0, 20.0], [1.0, 5.0, 5.0, 5.0, 5.0]],
            &dev,
        )
        .unwrap();
        let cfg = RoiAlignConfig::detectron(3, 2);
        let feats = [f0.clone(), f1.clone()];
        let all = roi_align_all_levels(&feats, &rois, &[0.5, 0.25], &cfg).unwrap();
        let one = roi_align(&f1, &rois, (3, 3), 0.25, 2, false).unwrap();
        let d = (&all[1] - &one).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let asg = roi_align_assigned(&feats, &rois, &[1, 0], &[0.5, 0.25], &cfg).unwrap();
        let d0 = (asg.get(0).unwrap() - all[1].get(0).unwrap()).unwrap();
        let d1 = (asg.get(1).unwrap() - all[0].get(1).unwrap()).unwrap();
        for d in [d0, d1] {
            let m = d
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(m, 0.0);
        }
        let empty = Tensor::zeros((0, 5), DType::F32, &dev).unwrap();
        let e = roi_align_assigned(&feats, &empty, &[], &[0.5, 0.25], &cfg).unwrap();
        assert_eq!(e.dims(), [0, 3, 3, 3]);
        assert!(roi_align_assigned(&feats, &rois, &[2, 0], &[0.5, 0.25], &cfg).is_err());
        assert!(roi_align_all_levels(&feats, &rois, &[0.5], &cfg).is_err());
        assert!(roi_align_all_levels(&feats, &rois, &[0.5, 0.0], &cfg).is_err());
    }
}
