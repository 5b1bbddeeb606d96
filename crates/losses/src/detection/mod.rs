//! Two-stage detector losses as Detectron v1 (ShuLiu1993/PANet, Detectron.pytorch) computes
//! them: `lib/utils/net.py::smooth_l1_loss`, `lib/modeling/FPN.py::fpn_rpn_losses` (sigmoid
//! objectness), `lib/modeling/fast_rcnn_heads.py::fast_rcnn_losses`,
//! `lib/modeling/mask_rcnn_heads.py::mask_rcnn_losses`. The targets come from
//! `segkit_core::ops::detection` (`rpn_targets`, `sample_rois`, `mask_targets`).
//!
//! - [`smooth_l1_loss`]: `1/N sum_i w_out[i] SmoothL1_beta(w_in[i] (pred[i] - target[i]))`,
//!   `N` = `pred.dim(0)` (the images for the RPN, the RoIs for the box head), with
//!   `SmoothL1_beta(x) = 0.5 x^2 / beta` if `|x| < beta`, else `|x| - 0.5 beta`.
//! - [`sampled_sigmoid_bce`]: BCE-with-logits over the labelled anchors (`label >= 0`; -1 is
//!   ignored), summed and divided by a given normaliser (the RPN: `RPN_BATCH_SIZE_PER_IM x
//!   IMS_PER_BATCH`).
//! - [`fpn_rpn_losses`]: both RPN losses summed over the FPN levels (Detectron reports one loss
//!   per level and sums them into the total), smooth-L1 `beta = 1/9`.
//! - [`fast_rcnn_losses`]: cross-entropy averaged over the RoIs, smooth-L1 over the
//!   class-specific targets divided by the RoI count. PANet's code passes `beta = 1/3`
//!   (Detectron.pytorch's default is 1): [`PANET_BOX_BETA`].
//! - [`mask_rcnn_loss`]: BCE-with-logits on each mask RoI's class channel, ignoring `-1`
//!   targets, summed and divided by the number of non-ignored targets (times
//!   `MRCNN.WEIGHT_LOSS_MASK`). The reference divides `0 / 0` (NaN) when every target is
//!   ignored (an image batch without foreground); segkit returns 0 with zero gradients.
//!
//! Gradients equal PyTorch's (the branch mask of the smooth-L1 is a constant, `|x|` has
//! derivative 0 at 0; see `tests/tests/panet_targets.rs`).
//!
//! # Shapes
//! RPN per level: logits `B x A x H x W`, labels the same; deltas, targets and weights
//! `B x 4A x H x W`. Box head: scores `R x K`, deltas / targets / weights `R x 4K`. Mask head:
//! logits `R x K x M x M`, targets `R x M x M` (the class channel's, as
//! `segkit_core::ops::detection::MaskTargets`).
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use segkit_losses::detection::{fast_rcnn_losses, PANET_BOX_BETA};
//!
//! let dev = Device::Cpu;
//! let scores = Var::from_tensor(&Tensor::zeros((2, 3), candle_core::DType::F32, &dev)?)?;
//! let deltas = Tensor::zeros((2, 12), candle_core::DType::F32, &dev)?;
//! let targets = deltas.clone();
//! let l = fast_rcnn_losses(scores.as_tensor(), &deltas, &[2, 0], &targets, &targets, &targets,
//!     PANET_BOX_BETA)?;
//! assert!((l.cls.to_scalar::<f32>()? - 3f32.ln()).abs() < 1e-6);
//! assert_eq!(l.bbox.to_scalar::<f32>()?, 0.0);
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use candle_core::{DType, Tensor};

use crate::util::{abs_torch, bce_with_logits, check_float, picked_log_probs, shape_err};
use crate::{Error, Result};

/// Smooth-L1 `beta` of Detectron's RPN (`fpn_rpn_losses`, `single_scale_rpn_losses`): 1/9.
pub const RPN_BETA: f64 = 1.0 / 9.0;
/// Smooth-L1 `beta` of PANet's box head (`fast_rcnn_losses(..., beta=1/3)`).
pub const PANET_BOX_BETA: f64 = 1.0 / 3.0;

fn same_shape(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(shape_err(what, a.dims(), b.dims()));
    }
    Ok(())
}

/// Detectron's `smooth_l1_loss` (see the module docs). Errors if the shapes differ, `pred` is
/// not floating-point or rank 0, or `beta <= 0`.
pub fn smooth_l1_loss(
    pred: &Tensor,
    targets: &Tensor,
    inside_weights: &Tensor,
    outside_weights: &Tensor,
    beta: f64,
) -> Result<Tensor> {
    check_float("smooth_l1 pred", pred)?;
    if pred.rank() == 0 {
        return Err(Error::InvalidArgument("smooth_l1: pred has rank 0".into()));
    }
    if beta.is_nan() || beta <= 0.0 {
        return Err(Error::InvalidArgument(format!(
            "smooth_l1: beta must be positive, got {beta}"
        )));
    }
    same_shape("smooth_l1 targets", pred, targets)?;
    same_shape("smooth_l1 inside weights", pred, inside_weights)?;
    same_shape("smooth_l1 outside weights", pred, outside_weights)?;
    let dt = pred.dtype();
    let (t, wi, wo) = (
        targets.to_dtype(dt)?.detach(),
        inside_weights.to_dtype(dt)?.detach(),
        outside_weights.to_dtype(dt)?.detach(),
    );
    let x = (pred - t)?.mul(&wi)?;
    let ax = abs_torch(&x)?;
    let small = ax.lt(beta)?.to_dtype(dt)?.detach();
    let quad = (x.sqr()? * (0.5 / beta))?;
    let lin = (ax - 0.5 * beta)?;
    let l = (small.mul(&quad)? + small.affine(-1.0, 1.0)?.mul(&lin)?)?;
    let n = pred.dim(0)?.max(1) as f64;
    Ok((wo.mul(&l)?.sum_all()? / n)?)
}

/// BCE-with-logits over the entries with `labels >= 0` (1 positive, 0 negative, -1 ignored),
/// summed and divided by `normalizer`. Errors if the shapes differ or `normalizer <= 0`.
pub fn sampled_sigmoid_bce(logits: &Tensor, labels: &Tensor, normalizer: f64) -> Result<Tensor> {
    check_float("sampled BCE logits", logits)?;
    same_shape("sampled BCE labels", logits, labels)?;
    if normalizer.is_nan() || normalizer <= 0.0 {
        return Err(Error::InvalidArgument(format!(
            "sampled BCE: normaliser must be positive, got {normalizer}"
        )));
    }
    let lab = labels.to_dtype(logits.dtype())?.detach();
    let weight = lab.ge(0.0)?.to_dtype(logits.dtype())?;
    let y = lab.relu()?;
    let l = bce_with_logits(logits, &y)?.mul(&weight)?;
    Ok((l.sum_all()? / normalizer)?)
}

/// One FPN level's RPN outputs and targets (shapes in the module docs).
#[derive(Debug, Clone, Copy)]
pub struct RpnLevelInputs<'a> {
    /// Objectness logits `B x A x H x W`.
    pub logits: &'a Tensor,
    /// Box deltas `B x 4A x H x W`.
    pub deltas: &'a Tensor,
    /// Labels `B x A x H x W`: 1, 0, -1.
    pub labels: &'a Tensor,
    /// Box targets `B x 4A x H x W`.
    pub bbox_targets: &'a Tensor,
    /// Inside weights `B x 4A x H x W`.
    pub inside_weights: &'a Tensor,
    /// Outside weights `B x 4A x H x W`.
    pub outside_weights: &'a Tensor,
}

/// The RPN losses summed over levels.
#[derive(Debug, Clone)]
pub struct RpnLosses {
    /// Objectness: `sum_levels sampled_sigmoid_bce(.., batch_size_per_image * B)`.
    pub cls: Tensor,
    /// Boxes: `sum_levels smooth_l1_loss(.., beta = 1/9)` (each divided by `B`).
    pub bbox: Tensor,
}

/// Detectron's `fpn_rpn_losses` with sigmoid objectness (see the module docs). Errors on no
/// level or mismatched shapes.
pub fn fpn_rpn_losses(
    levels: &[RpnLevelInputs<'_>],
    batch_size_per_image: usize,
) -> Result<RpnLosses> {
    let Some(first) = levels.first() else {
        return Err(Error::InvalidArgument("fpn_rpn_losses: no level".into()));
    };
    let ims = first.logits.dims().first().copied().unwrap_or(0);
    let norm = (batch_size_per_image * ims) as f64;
    let mut cls: Option<Tensor> = None;
    let mut bbox: Option<Tensor> = None;
    for l in levels {
        let c = sampled_sigmoid_bce(l.logits, l.labels, norm)?;
        let b = smooth_l1_loss(
            l.deltas,
            l.bbox_targets,
            l.inside_weights,
            l.outside_weights,
            RPN_BETA,
        )?;
        cls = Some(match cls {
            Some(s) => (s + c)?,
            None => c,
        });
        bbox = Some(match bbox {
            Some(s) => (s + b)?,
            None => b,
        });
    }
    match (cls, bbox) {
        (Some(cls), Some(bbox)) => Ok(RpnLosses { cls, bbox }),
        _ => Err(Error::InvalidArgument("fpn_rpn_losses: no level".into())),
    }
}

/// The box-head losses.
#[derive(Debug, Clone)]
pub struct FastRcnnLosses {
    /// Cross-entropy averaged over the RoIs.
    pub cls: Tensor,
    /// Smooth-L1 divided by the RoI count.
    pub bbox: Tensor,
    /// Share of RoIs whose arg-max class is the label (a metric, no gradient).
    pub accuracy: f32,
}

/// Detectron's `fast_rcnn_losses` (see the module docs) with the smooth-L1 `beta` (PANet:
/// [`PANET_BOX_BETA`]). Errors on mismatched shapes or a label `>= K`.
pub fn fast_rcnn_losses(
    cls_score: &Tensor,
    bbox_pred: &Tensor,
    labels: &[usize],
    bbox_targets: &Tensor,
    inside_weights: &Tensor,
    outside_weights: &Tensor,
    beta: f64,
) -> Result<FastRcnnLosses> {
    check_float("fast_rcnn cls_score", cls_score)?;
    let (r, k) = cls_score.dims2()?;
    if labels.len() != r {
        return Err(shape_err("fast_rcnn labels", &[r], &[labels.len()]));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= k) {
        return Err(Error::InvalidArgument(format!(
            "fast_rcnn labels: class {bad} is not below {k}"
        )));
    }
    if r == 0 {
        let zero = cls_score.sum_all()?;
        return Ok(FastRcnnLosses {
            cls: zero.clone(),
            bbox: (bbox_pred.sum_all()? * 0.0)?,
            accuracy: 0.0,
        });
    }
    let idx: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let cls = (picked_log_probs(cls_score, 1, idx)?.mean_all()? * -1.0)?;
    let bbox = smooth_l1_loss(
        bbox_pred,
        bbox_targets,
        inside_weights,
        outside_weights,
        beta,
    )?;
    let pred = cls_score.detach().argmax(1)?.to_vec1::<u32>()?;
    let hits = pred
        .iter()
        .zip(labels)
        .filter(|(&p, &l)| p as usize == l)
        .count();
    Ok(FastRcnnLosses {
        cls,
        bbox,
        accuracy: hits as f32 / r as f32,
    })
}

/// Detectron's `mask_rcnn_losses` on the class channel (see the module docs): `mask_logits`
/// `R x K x M x M`, `classes` one per RoI, `targets` `R x M x M` (1, 0, -1 ignored), times
/// `weight` (`MRCNN.WEIGHT_LOSS_MASK`, 1). Errors on mismatched shapes or a class `>= K`.
pub fn mask_rcnn_loss(
    mask_logits: &Tensor,
    classes: &[usize],
    targets: &Tensor,
    weight: f64,
) -> Result<Tensor> {
    check_float("mask logits", mask_logits)?;
    let (r, k, mh, mw) = mask_logits.dims4()?;
    if classes.len() != r {
        return Err(shape_err("mask classes", &[r], &[classes.len()]));
    }
    if targets.dims() != [r, mh, mw] {
        return Err(shape_err("mask targets", &[r, mh, mw], targets.dims()));
    }
    if let Some(&bad) = classes.iter().find(|&&c| c >= k) {
        return Err(Error::InvalidArgument(format!(
            "mask classes: class {bad} is not below {k}"
        )));
    }
    let rows: Vec<u32> = classes
        .iter()
        .enumerate()
        .map(|(i, &c)| (i * k + c) as u32)
        .collect();
    let idx = Tensor::from_vec(rows, r, mask_logits.device())?;
    let x = mask_logits
        .reshape((r * k, mh * mw))?
        .index_select(&idx, 0)?;
    let t = targets
        .to_dtype(mask_logits.dtype())?
        .reshape((r, mh * mw))?
        .detach();
    let w = t.ge(0.0)?.to_dtype(mask_logits.dtype())?;
    let count = w.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    let l = bce_with_logits(&x, &t.relu()?)?.mul(&w)?.sum_all()?;
    Ok((l * (weight / count.max(1.0)))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn smooth_l1_branches_and_ignored_masks() -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::new(&[[0.05f32, 2.0], [0.0, -1.0]], &dev)?;
        let z = Tensor::zeros((2, 2), DType::F32, &dev)?;
        let one = z.ones_like()?;
        let l = smooth_l1_loss(p.as_tensor(), &z, &one, &one, 1.0 / 9.0)?;
        // 0.5 * 0.05^2 * 9 + (2 - 1/18) + (1 - 1/18), over N = 2.
        let want = (0.5 * 0.0025 * 9.0 + 2.0 + 1.0 - 1.0 / 9.0) / 2.0;
        assert!((l.to_scalar::<f32>()? - want).abs() < 1e-6);
        let g = l.backward()?;
        let g = g
            .get(p.as_tensor())
            .map(|t| t.to_vec2::<f32>())
            .transpose()?;
        assert_eq!(g, Some(vec![vec![0.05 * 9.0 / 2.0, 0.5], vec![0.0, -0.5]]));
        assert!(smooth_l1_loss(p.as_tensor(), &z, &one, &one, 0.0).is_err());
        let logits = Tensor::zeros((1, 2, 2, 2), DType::F32, &dev)?;
        let t = Tensor::full(-1f32, (1, 2, 2), &dev)?;
        assert_eq!(
            mask_rcnn_loss(&logits, &[1], &t, 1.0)?.to_scalar::<f32>()?,
            0.0
        );
        assert!(mask_rcnn_loss(&logits, &[2], &t, 1.0).is_err());
        let lab = Tensor::new(&[[1f32, -1.0, 0.0]], &dev)?;
        let b = sampled_sigmoid_bce(&Tensor::zeros((1, 3), DType::F32, &dev)?, &lab, 2.0)?;
        assert!((b.to_scalar::<f32>()? - 2f32.ln()).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn empty_batches_and_bad_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let s = Tensor::zeros((0, 3), DType::F32, &dev)?;
        let d = Tensor::zeros((0, 12), DType::F32, &dev)?;
        let l = fast_rcnn_losses(&s, &d, &[], &d, &d, &d, PANET_BOX_BETA)?;
        assert_eq!(l.cls.to_scalar::<f32>()?, 0.0);
        assert_eq!(l.bbox.to_scalar::<f32>()?, 0.0);
        let m = Tensor::zeros((0, 3, 4, 4), DType::F32, &dev)?;
        let t = Tensor::zeros((0, 4, 4), DType::F32, &dev)?;
        assert_eq!(mask_rcnn_loss(&m, &[], &t, 1.0)?.to_scalar::<f32>()?, 0.0);
        let s = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let d = Tensor::zeros((2, 12), DType::F32, &dev)?;
        assert!(fast_rcnn_losses(&s, &d, &[0], &d, &d, &d, 1.0).is_err());
        assert!(fast_rcnn_losses(&s, &d, &[0, 3], &d, &d, &d, 1.0).is_err());
        let short = Tensor::zeros((2, 8), DType::F32, &dev)?;
        assert!(fast_rcnn_losses(&s, &d, &[0, 1], &short, &d, &d, 1.0).is_err());
        assert!(fpn_rpn_losses(&[], 256).is_err());
        assert!(sampled_sigmoid_bce(&s, &s, 0.0).is_err());
        Ok(())
    }
}
