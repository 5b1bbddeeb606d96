//! Binary mask losses: dice, sigmoid cross-entropy and sigmoid focal loss, normalised by the
//! number of masks as in Mask2Former / OneFormer, their pair-wise (matching-cost) versions, and
//! torchvision's focal loss.
//!
//! References: transformers 5.x `models/oneformer/modeling_oneformer.py` (`dice_loss`,
//! `sigmoid_cross_entropy_loss`, `pair_wise_dice_loss`, `pair_wise_sigmoid_cross_entropy_loss`,
//! copied there from Mask2Former / MaskFormer), `models/maskformer/modeling_maskformer.py`
//! (`sigmoid_focal_loss`), and torchvision `ops/focal_loss.py` (`sigmoid_focal_loss`).
//!
//! - dice: `p = sigmoid(x)`, per mask `1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)`, summed over
//!   masks and divided by `num_masks`;
//! - sigmoid CE: `BCEWithLogits(x, y)` averaged over each mask's points, summed over masks and
//!   divided by `num_masks`;
//! - focal: `BCEWithLogits(x, y) * (1 - p_t)^gamma * alpha_t` with `p_t = p y + (1 - p)(1 - y)`,
//!   `alpha_t = alpha y + (1 - alpha)(1 - y)` (skipped for `alpha < 0`); defaults alpha 0.25,
//!   gamma 2.
//!
//! The references call these with `inputs` of shape `R x P` (MaskFormer flattens masks first);
//! inputs of higher rank are flattened to `R x (..)` here.
//!
//! # Shapes
//! `inputs` (logits) and `labels` (in `[0, 1]`): `R x P` -> scalar. Pair-wise: `inputs`
//! `Q x P`, `labels` `T x P` -> `Q x T`. torchvision focal: any shape, reduction none keeps it.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_losses::{dice_loss, sigmoid_cross_entropy_loss};
//!
//! let x = Tensor::new(&[[0f32, 2.0, -1.0], [1.0, 0.5, -3.0]], &Device::Cpu)?;
//! let y = Tensor::new(&[[0f32, 1.0, 0.0], [1.0, 1.0, 0.0]], &Device::Cpu)?;
//! let d = dice_loss(&x, &y, 2.0)?;
//! let ce = sigmoid_cross_entropy_loss(&x, &y, 2.0)?;
//! assert!(d.to_scalar::<f32>()? > 0.0 && ce.to_scalar::<f32>()? > 0.0);
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::util::{bce_with_logits, check_float, scalar, shape_err};
use crate::Result;

/// A loss reduction (PyTorch's `reduction` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Reduction {
    /// No reduction: one loss per element.
    None,
    /// Mean over all elements.
    #[default]
    Mean,
    /// Sum over all elements.
    Sum,
}

fn flat_pair(what: &str, inputs: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    check_float(what, inputs)?;
    if inputs.dims() != labels.dims() {
        return Err(shape_err(
            &format!("{what} labels"),
            inputs.dims(),
            labels.dims(),
        ));
    }
    let r = inputs.dims().first().copied().unwrap_or(1);
    let inputs = if inputs.rank() == 2 {
        inputs.clone()
    } else {
        inputs.reshape((r, ()))?
    };
    let labels = labels
        .detach()
        .to_dtype(inputs.dtype())?
        .reshape(inputs.dims())?;
    Ok((inputs, labels))
}

fn div_num_masks(x: &Tensor, num_masks: f64) -> Result<Tensor> {
    let n = scalar(num_masks, x.dtype(), x.device())?;
    Ok(x.div(&n)?)
}

fn mean_last(x: &Tensor) -> Result<Tensor> {
    let p = x.dim(1)?;
    let n = scalar(p as f64, x.dtype(), x.device())?;
    Ok(x.sum(1)?.broadcast_div(&n)?)
}

/// Mask2Former's dice loss: `sum_r (1 - (2 p.y + 1) / (sum p + sum y + 1)) / num_masks`.
pub fn dice_loss(inputs: &Tensor, labels: &Tensor, num_masks: f64) -> Result<Tensor> {
    let (x, y) = flat_pair("dice inputs", inputs, labels)?;
    let p = candle_nn::ops::sigmoid(&x)?;
    let num = (p.mul(&y)?.sum(1)? * 2.0)?;
    let den = (p.sum(1)? + y.sum(1)?)?;
    let loss = ((num + 1.0)?.div(&(den + 1.0)?)?.affine(-1.0, 1.0))?;
    div_num_masks(&loss.sum_all()?, num_masks)
}

/// Mask2Former's sigmoid cross-entropy: `sum_r mean_p BCEWithLogits(x, y) / num_masks`.
pub fn sigmoid_cross_entropy_loss(
    inputs: &Tensor,
    labels: &Tensor,
    num_masks: f64,
) -> Result<Tensor> {
    let (x, y) = flat_pair("sigmoid CE inputs", inputs, labels)?;
    let l = bce_with_logits(&x, &y)?;
    div_num_masks(&mean_last(&l)?.sum_all()?, num_masks)
}

/// The element-wise focal loss (torchvision's, `reduction='none'`).
fn focal_elementwise(x: &Tensor, y: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    let p = candle_nn::ops::sigmoid(x)?;
    let ce = bce_with_logits(x, y)?;
    let one_minus_p = p.affine(-1.0, 1.0)?;
    let one_minus_y = y.affine(-1.0, 1.0)?;
    let p_t = (p.mul(y)? + one_minus_p.mul(&one_minus_y)?)?;
    let q = p_t.affine(-1.0, 1.0)?;
    let modulating = if gamma == 2.0 {
        q.sqr()?
    } else {
        q.powf(gamma)?
    };
    let mut loss = ce.mul(&modulating)?;
    if alpha >= 0.0 {
        let alpha_t = ((y * alpha)? + (one_minus_y * (1.0 - alpha))?)?;
        loss = alpha_t.mul(&loss)?;
    }
    Ok(loss)
}

/// MaskFormer's sigmoid focal loss: `sum_r mean_p focal(x, y) / num_masks` (alpha 0.25,
/// gamma 2 in MaskFormer; `alpha < 0` disables the alpha weighting).
pub fn sigmoid_focal_loss(
    inputs: &Tensor,
    labels: &Tensor,
    num_masks: f64,
    alpha: f64,
    gamma: f64,
) -> Result<Tensor> {
    let (x, y) = flat_pair("focal inputs", inputs, labels)?;
    let l = focal_elementwise(&x, &y, alpha, gamma)?;
    div_num_masks(&mean_last(&l)?.sum_all()?, num_masks)
}

/// torchvision's `sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction)` (defaults
/// alpha 0.25, gamma 2, reduction none); inputs of any shape.
pub fn sigmoid_focal_loss_torchvision(
    inputs: &Tensor,
    targets: &Tensor,
    alpha: f64,
    gamma: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    check_float("focal inputs", inputs)?;
    if !((0.0..=1.0).contains(&alpha) || alpha == -1.0) {
        return Err(crate::Error::InvalidArgument(format!(
            "focal alpha must be in [0, 1] or -1 (torchvision), got {alpha}"
        )));
    }
    if inputs.dims() != targets.dims() {
        return Err(shape_err("focal targets", inputs.dims(), targets.dims()));
    }
    let y = targets.detach().to_dtype(inputs.dtype())?;
    let l = focal_elementwise(inputs, &y, alpha, gamma)?;
    Ok(match reduction {
        Reduction::None => l,
        Reduction::Sum => l.sum_all()?,
        Reduction::Mean => {
            let n = scalar(l.elem_count() as f64, l.dtype(), l.device())?;
            l.sum_all()?.div(&n)?
        }
    })
}

fn pair_inputs(inputs: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    check_float("pair-wise inputs", inputs)?;
    let (_, p) = inputs.dims2()?;
    let (t, pl) = labels.dims2()?;
    if pl != p {
        return Err(shape_err("pair-wise labels", &[t, p], labels.dims()));
    }
    Ok((inputs.clone(), labels.detach().to_dtype(inputs.dtype())?))
}

/// `(BCE(x, 1) / p, BCE(x, 0) / p)` for f32 CPU `x` that records no gradient (the matcher's
/// cost, 150 queries x 12544 points per decoder layer), in one parallel pass instead of ~20
/// single-threaded element-wise ops: the same f32 operations in the same order as the composed
/// path (`min(x, 0) - ln(exp(-|x|) + 1)`, then `(0 x - ls) / p` and `(x - ls) / p`), so the
/// values are identical. `None` for anything else.
fn bce_pair_untracked(x: &Tensor, p: usize) -> Result<Option<(Tensor, Tensor)>> {
    use rayon::prelude::*;
    if x.track_op() || !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let hw = p as f64 as f32;
    let mut pos = vec![0f32; xs.len()];
    let mut neg = vec![0f32; xs.len()];
    const CHUNK: usize = 1 << 14;
    pos.par_chunks_mut(CHUNK)
        .zip(neg.par_chunks_mut(CHUNK))
        .zip(xs.par_chunks(CHUNK))
        .for_each(|((po, ne), xc)| {
            for ((po, ne), &v) in po.iter_mut().zip(ne.iter_mut()).zip(xc) {
                // candle's `minimum`: `if a > b { b } else { a }`.
                let m = if v > 0.0 { 0.0 } else { v };
                let ls = m - ((-(v * v.signum_torch())).exp() + 1.0).ln();
                *po = (0.0 * v - ls) / hw;
                *ne = (v - ls) / hw;
            }
        });
    let dev = x.device();
    Ok(Some((
        Tensor::from_vec(pos, x.shape(), dev)?,
        Tensor::from_vec(neg, x.shape(), dev)?,
    )))
}

/// candle's `sign` (0 at 0 and for NaN), which `abs_torch` multiplies by.
trait SignTorch {
    fn signum_torch(self) -> Self;
}

impl SignTorch for f32 {
    #[inline(always)]
    fn signum_torch(self) -> f32 {
        f32::from(self > 0.0) - f32::from(self < 0.0)
    }
}

/// Mask2Former's pair-wise dice cost `1 - (2 p y^T + 1) / (sum p + sum y + 1)`.
pub fn pair_wise_dice_loss(inputs: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (x, y) = pair_inputs(inputs, labels)?;
    let p = candle_nn::ops::sigmoid(&x)?;
    let num = (p.matmul(&y.t()?)? * 2.0)?;
    let den = p.sum_keepdim(1)?.broadcast_add(&y.sum(1)?.unsqueeze(0)?)?;
    Ok(((num + 1.0)?.div(&(den + 1.0)?)?.affine(-1.0, 1.0))?)
}

/// Mask2Former's pair-wise sigmoid CE cost
/// `BCE(x, 1) / P @ y^T + BCE(x, 0) / P @ (1 - y)^T`.
pub fn pair_wise_sigmoid_cross_entropy_loss(inputs: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (x, y) = pair_inputs(inputs, labels)?;
    let p = x.dim(1)?;
    let (pos, neg) = match bce_pair_untracked(&x, p)? {
        Some(pn) => pn,
        None => {
            let hw = scalar(p as f64, x.dtype(), x.device())?;
            let pos = bce_with_logits(&x, &x.ones_like()?)?.broadcast_div(&hw)?;
            let neg = bce_with_logits(&x, &x.zeros_like()?)?.broadcast_div(&hw)?;
            (pos, neg)
        }
    };
    let loss_pos = pos.matmul(&y.t()?)?;
    let loss_neg = neg.matmul(&y.affine(-1.0, 1.0)?.t()?)?;
    Ok((loss_pos + loss_neg)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The one-pass cost of untracked inputs equals the composed ops' (taken by a tracked
    /// input) bit for bit, zeros, signs and large magnitudes included.
    #[test]
    fn untracked_sigmoid_ce_cost_equals_the_composed_ops() {
        let dev = Device::Cpu;
        let (q, p, t) = (7, 40_003, 5);
        let xs: Vec<f32> = (0..q * p)
            .map(|i| match i % 11 {
                0 => 0.0,
                1 => -0.0,
                2 => 60.0,
                3 => -90.0,
                _ => ((i as f32 * 0.618_034).fract() - 0.5) * 24.0,
            })
            .collect();
        let ys: Vec<f32> = (0..t * p)
            .map(|i| ((i * 7919) % 3 == 0) as u8 as f32)
            .collect();
        let x = Tensor::from_vec(xs, (q, p), &dev).unwrap();
        let y = Tensor::from_vec(ys, (t, p), &dev).unwrap();
        let fast = pair_wise_sigmoid_cross_entropy_loss(&x, &y).unwrap();
        let var = Var::from_tensor(&x).unwrap();
        let composed = pair_wise_sigmoid_cross_entropy_loss(var.as_tensor(), &y).unwrap();
        assert!(var.as_tensor().track_op());
        let (a, b) = (
            fast.to_vec2::<f32>().unwrap(),
            composed.to_vec2::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        // And the element-wise halves themselves, before the sums.
        let (pos, neg) = bce_pair_untracked(&x, p).unwrap().unwrap();
        let hw = scalar(p as f64, x.dtype(), &dev).unwrap();
        let pos_ref = bce_with_logits(var.as_tensor(), &x.ones_like().unwrap())
            .unwrap()
            .broadcast_div(&hw)
            .unwrap();
        let neg_ref = bce_with_logits(var.as_tensor(), &x.zeros_like().unwrap())
            .unwrap()
            .broadcast_div(&hw)
            .unwrap();
        let bits = |t: &Tensor| segkit_core::testing::f32_bits(t).unwrap();
        assert_eq!(bits(&pos), bits(&pos_ref));
        assert_eq!(bits(&neg), bits(&neg_ref));
    }
}
