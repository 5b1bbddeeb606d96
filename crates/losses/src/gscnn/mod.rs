//! The Gated-SCNN training losses: per-image class-weighted cross-entropy, class-balanced edge
//! BCE, edge-attention cross-entropy and the dual-task loss, combined as `JointEdgeSegLoss`.
//!
//! Reference: nv-tlabs/GSCNN (Takikawa et al., "Gated-SCNN: Gated Shape CNNs for Semantic
//! Segmentation", ICCV 2019), `loss.py` (`JointEdgeSegLoss`, `bce2d`, `edge_attention`,
//! `ImageBasedCrossEntropyLoss2d`, `CrossEntropyLoss2d`), `my_functionals/DualTaskLoss.py` and
//! `my_functionals/custom_functional.py` (`compute_grad_mag`). Defaults of `train.py`: all four
//! weights 1, `wt_bound` (upper bound) 1.0, `BATCH_WEIGHTING` false; the edge term carries a
//! fixed extra factor 20.
//!
//! Faithfulness notes, each matching what the official code computes:
//! - `GSCNN.forward` passes the *sigmoid* edge output to the criterion, and `bce2d` applies
//!   `binary_cross_entropy_with_logits` to it, i.e. a second sigmoid. [`edge_bce_loss`] takes
//!   whatever the caller passes as logits; [`JointEdgeSegLoss`] passes the edge map it is given.
//!   The edge-attention mask (`edge.max(1) > 0.8`) reads the same map as probabilities.
//! - `compute_grad_mag` as published returns early: `convTri` returns its input and
//!   `gradient_central_diff` returns `(input, input)`, so the "gradient magnitude" is
//!   `sqrt(2 * E^2 + 1e-6) / max(...)` of the map itself (an acknowledged bug, GSCNN issues #16
//!   and #79). [`DualTaskLoss`] computes that by default ([`DualTaskGradient::AsReleased`]);
//!   [`DualTaskGradient::AsPaper`] runs the code past the early returns: the triangle filter
//!   of radius 4 (`convTri`: replicate-then-reflect padding, separable `[1..5..1] / 25`), then
//!   central differences `0.5 * (E[i+1] - E[i-1])` with zero padding (`conv2d_same`) along
//!   both axes, `sqrt(Ox^2 + Oy^2 + 1e-6) / max`.
//! - With PyTorch 1.0 (the released code's era) an image whose target pixels are all ignored
//!   adds 0 to `ImageBasedCrossEntropyLoss2d` (`NLLLoss2d` divides by the total weight only
//!   when it is positive; the NaN class weights of its empty histogram multiply nothing).
//!   That happens to the attention loss whenever no edge probability exceeds 0.8, as at the
//!   start of training; [`ImageBasedCrossEntropyLoss`] does the same (newer PyTorch returns NaN).
//! - The dual-task loss draws Gumbel noise `-log(eps - log(U + eps))` from `U ~ torch.rand`.
//!   [`DualTaskLoss::forward`] takes `U` as an argument (for parity and reproducibility);
//!   without it the noise is zero (the deterministic softmax with temperature `tau`).
//! - The official code hard-codes 19 classes in the dual-task loss (other counts fail there);
//!   here `C` comes from the logits. `mag.max()` is over the whole batch, all classes; its
//!   gradient is shared evenly among tied maxima (PyTorch >= 1.7). Ignored pixels (255) have their logits replaced by 0 (no gradient) and count as
//!   class 0 in the one-hot target, as in the reference.
//! - `ImageBasedCrossEntropyLoss2d` weights classes per image (or per batch) by
//!   `1 + upper_bound * (1 - hist)` for present classes (`1 / hist` with `norm`), `hist` being
//!   the class frequency over targets in `0..=C` (numpy `histogram(range(C + 1), density)`), and
//!   sums the per-image weighted means.
//!
//! # Shapes
//! Segmentation logits `N x C x H x W`, segmentation target `N x H x W` integer, edge map and
//! edge target `N x 1 x H x W` float (edge target 1 = edge, 0 = not, > 1 ignored), Gumbel `U`
//! `N x C x H x W` (or `N x C x HW`) in `[0, 1)`. Every loss is a scalar.
//!
//! # Example
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_losses::JointEdgeSegLoss;
//!
//! let dev = Device::Cpu;
//! let seg = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &dev)?;
//! let edge = Tensor::rand(0f32, 1.0, (1, 1, 8, 8), &dev)?;
//! let seg_t = Tensor::zeros((1, 8, 8), DType::U32, &dev)?;
//! let edge_t = Tensor::zeros((1, 1, 8, 8), DType::F32, &dev)?;
//! let losses = JointEdgeSegLoss::gscnn(4).forward(&seg, &edge, &seg_t, &edge_t, None)?;
//! let total = losses.total()?;
//! assert_eq!(total.dims(), &[] as &[usize]);
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::cross_entropy::{ce_indices, CrossEntropyLoss};
mod dual;

pub use dual::{DualTaskGradient, DualTaskLoss};

use crate::util::{
    bce_with_logits, check_float, from_f32, labels_i64, picked_log_probs, scalar, shape_err,
    to_vec_f32,
};
use crate::Result;

/// `x.sum() / x.numel()` (PyTorch's `mean`).
fn mean_all(x: &Tensor) -> Result<Tensor> {
    let n = scalar(x.elem_count() as f64, x.dtype(), x.device())?;
    Ok(x.sum_all()?.div(&n)?)
}

/// GSCNN's class-balanced edge BCE (`JointEdgeSegLoss.bce2d`): positives (target 1) weigh
/// `n_neg / (n_pos + n_neg)`, negatives (target 0) `n_pos / (n_pos + n_neg)`, other targets 0;
/// `binary_cross_entropy_with_logits(input, target, weight)` averaged over all elements.
pub fn edge_bce_loss(input: &Tensor, target: &Tensor) -> Result<Tensor> {
    check_float("edge input", input)?;
    if input.dims() != target.dims() {
        return Err(shape_err("edge target", input.dims(), target.dims()));
    }
    let t = to_vec_f32(target)?;
    let pos = t.iter().filter(|&&v| v == 1.0).count();
    let neg = t.iter().filter(|&&v| v == 0.0).count();
    let sum = (pos + neg) as f64;
    let (wp, wn) = ((neg as f64 / sum) as f32, (pos as f64 / sum) as f32);
    let w: Vec<f32> = t
        .iter()
        .map(|&v| {
            if v == 1.0 {
                wp
            } else if v == 0.0 {
                wn
            } else {
                0.0
            }
        })
        .collect();
    let w = from_f32(w, input.dims(), input.dtype(), input.device())?;
    let target = target.detach().to_dtype(input.dtype())?;
    let l = bce_with_logits(input, &target)?.mul(&w)?;
    mean_all(&l)
}

/// The edge-attention target (`JointEdgeSegLoss.edge_attention`): `target` where
/// `edge.max(1) > threshold` (GSCNN: 0.8), `ignore_index` elsewhere. Same dtype as `target`.
pub fn edge_attention_target(
    target: &Tensor,
    edge: &Tensor,
    threshold: f32,
    ignore_index: i64,
) -> Result<Tensor> {
    let (n, _, h, w) = edge.dims4()?;
    if target.dims() != [n, h, w] {
        return Err(shape_err("segmentation target", &[n, h, w], target.dims()));
    }
    let emax = to_vec_f32(&edge.max(1)?)?;
    let labels = labels_i64("segmentation target", target)?;
    let out: Vec<i64> = labels
        .iter()
        .zip(&emax)
        .map(|(&l, &e)| if e > threshold { l } else { ignore_index })
        .collect();
    Ok(Tensor::from_vec(out, (n, h, w), target.device())?.to_dtype(target.dtype())?)
}

/// GSCNN's `ImageBasedCrossEntropyLoss2d` (the training segmentation loss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBasedCrossEntropyLoss {
    /// Number of classes `C` (the histogram has bins `0..C`).
    pub num_classes: usize,
    /// Ignored target value (255).
    pub ignore_index: i64,
    /// `upper_bound` of the class weights (`--wt_bound`, 1.0).
    pub upper_bound: f64,
    /// Weights `1 + upper_bound / hist` instead of `1 + upper_bound * (1 - hist)` (false).
    pub norm: bool,
    /// One weight vector from the whole batch (`cfg.BATCH_WEIGHTING`, false) instead of one
    /// per image.
    pub batch_weighting: bool,
}

impl ImageBasedCrossEntropyLoss {
    /// GSCNN's training defaults for `num_classes` classes.
    pub fn gscnn(num_classes: usize) -> Self {
        Self {
            num_classes,
            ignore_index: 255,
            upper_bound: 1.0,
            norm: false,
            batch_weighting: false,
        }
    }

    /// The class weights computed from `labels` (numpy `histogram(.., range(C + 1),
    /// density=True)`, then `(hist != 0) * upper_bound * (1 - hist) + 1`), rounded to f32.
    pub fn class_weights(&self, labels: &[i64]) -> Vec<f32> {
        let c = self.num_classes;
        let mut counts = vec![0u64; c];
        for &l in labels {
            // Bins [0,1), .., [C-1, C] (the last bin is closed).
            if l >= 0 && (l as u64) <= c as u64 && c > 0 {
                counts[(l as usize).min(c - 1)] += 1;
            }
        }
        let total: u64 = counts.iter().sum();
        counts
            .iter()
            .map(|&k| {
                let h = k as f64 / total as f64;
                let nz = if h != 0.0 { 1.0 } else { 0.0 };
                let w = if self.norm {
                    nz * self.upper_bound * (1.0 / h) + 1.0
                } else {
                    nz * self.upper_bound * (1.0 - h) + 1.0
                };
                w as f32
            })
            .collect()
    }

    /// The loss: the sum over images of the class-weighted mean NLL of non-ignored pixels.
    pub fn forward(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        check_float("logits", logits)?;
        let (n, c, h, w) = logits.dims4()?;
        if c != self.num_classes {
            return Err(shape_err(
                "logits (classes)",
                &[n, self.num_classes, h, w],
                logits.dims(),
            ));
        }
        if target.dims() != [n, h, w] {
            return Err(shape_err("target", &[n, h, w], target.dims()));
        }
        let labels = labels_i64("target", target)?;
        let hw = h * w;
        let batch_w = self.batch_weighting.then(|| self.class_weights(&labels));
        let mut idx = Vec::with_capacity(labels.len());
        let mut pix_w = Vec::with_capacity(labels.len());
        let mut denom = Vec::with_capacity(n);
        for img in labels.chunks(hw.max(1)).take(n) {
            let cw = match &batch_w {
                Some(b) => b.clone(),
                None => self.class_weights(img),
            };
            let (i, _, pw) = ce_indices(img, c, self.ignore_index, Some(&cw))?;
            denom.push(pw.iter().map(|&x| x as f64).sum::<f64>() as f32);
            idx.extend(i);
            pix_w.extend(pw);
        }
        let lp = picked_log_probs(logits, 1, idx)?;
        let pw = from_f32(pix_w, &[n, h, w], logits.dtype(), logits.device())?;
        let per_img = lp.neg()?.mul(&pw)?.reshape((n, hw))?.sum(1)?;
        // An image without a counted pixel adds 0 (its numerator is 0; see the module docs).
        let denom: Vec<f32> = denom
            .into_iter()
            .map(|d| if d > 0.0 { d } else { 1.0 })
            .collect();
        let denom = from_f32(denom, &[n], logits.dtype(), logits.device())?;
        Ok(per_img.div(&denom)?.sum_all()?)
    }
}

/// Which segmentation loss [`JointEdgeSegLoss`] uses (its `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SegLossMode {
    /// Training: [`ImageBasedCrossEntropyLoss`].
    #[default]
    Train,
    /// Validation: plain cross-entropy averaged over non-ignored pixels (`CrossEntropyLoss2d`).
    Val,
}

/// GSCNN's `JointEdgeSegLoss`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JointEdgeSegLoss {
    /// Number of classes.
    pub num_classes: usize,
    /// Ignored target value (255).
    pub ignore_index: i64,
    /// Upper bound of the per-image class weights (`--wt_bound`, 1.0).
    pub upper_bound: f64,
    /// Batch-level instead of per-image class weights (`cfg.BATCH_WEIGHTING`, false).
    pub batch_weighting: bool,
    /// Training or validation segmentation loss.
    pub mode: SegLossMode,
    /// Weight of the segmentation loss (`--seg_weight`, 1.0).
    pub seg_weight: f64,
    /// Weight of the edge loss (`--edge_weight`, 1.0), applied on top of the fixed factor 20.
    pub edge_weight: f64,
    /// Weight of the edge-attention loss (`--att_weight`, 1.0).
    pub att_weight: f64,
    /// Weight of the dual-task loss (`--dual_weight`, 1.0).
    pub dual_weight: f64,
    /// Edge probability above which a pixel enters the attention loss (0.8).
    pub att_threshold: f32,
    /// The dual-task loss.
    pub dual: DualTaskLoss,
}

/// The four terms of [`JointEdgeSegLoss`], each already weighted (GSCNN's `losses` dict).
#[derive(Debug, Clone)]
pub struct JointEdgeSegLosses {
    /// `seg_loss`.
    pub seg: Tensor,
    /// `edge_loss` (`edge_weight * 20 * bce2d`).
    pub edge: Tensor,
    /// `att_loss`.
    pub att: Tensor,
    /// `dual_loss`.
    pub dual: Tensor,
}

impl JointEdgeSegLosses {
    /// `seg + edge + att + dual` (the training loop's `main_loss`).
    pub fn total(&self) -> Result<Tensor> {
        Ok((((&self.seg + &self.edge)? + &self.att)? + &self.dual)?)
    }
}

impl JointEdgeSegLoss {
    /// The official training configuration for `num_classes` classes.
    pub fn gscnn(num_classes: usize) -> Self {
        Self {
            num_classes,
            ignore_index: 255,
            upper_bound: 1.0,
            batch_weighting: false,
            mode: SegLossMode::Train,
            seg_weight: 1.0,
            edge_weight: 1.0,
            att_weight: 1.0,
            dual_weight: 1.0,
            att_threshold: 0.8,
            dual: DualTaskLoss::default(),
        }
    }

    fn seg_loss(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        match self.mode {
            SegLossMode::Train => ImageBasedCrossEntropyLoss {
                num_classes: self.num_classes,
                ignore_index: self.ignore_index,
                upper_bound: self.upper_bound,
                norm: false,
                batch_weighting: self.batch_weighting,
            }
            .forward(logits, target),
            SegLossMode::Val => CrossEntropyLoss {
                ignore_index: self.ignore_index,
                ..CrossEntropyLoss::mean_non_ignored()
            }
            .forward(logits, target),
        }
    }

    /// The four losses for segmentation logits `seg`, edge map `edge` (the model's sigmoid
    /// output), their targets, and the dual-task loss's Gumbel `uniform` (see
    /// [`DualTaskLoss::forward`]).
    pub fn forward(
        &self,
        seg: &Tensor,
        edge: &Tensor,
        seg_target: &Tensor,
        edge_target: &Tensor,
        uniform: Option<&Tensor>,
    ) -> Result<JointEdgeSegLosses> {
        let (n, _, h, w) = seg.dims4()?;
        if edge.dims().len() != 4 || edge.dim(0)? != n || edge.dim(2)? != h || edge.dim(3)? != w {
            return Err(shape_err("edge", &[n, 1, h, w], edge.dims()));
        }
        let seg_l = (self.seg_loss(seg, seg_target)? * self.seg_weight)?;
        let edge_l = (edge_bce_loss(edge, edge_target)? * (self.edge_weight * 20.0))?;
        let att_t = edge_attention_target(
            seg_target,
            &edge.detach(),
            self.att_threshold,
            self.ignore_index,
        )?;
        let att_l = (self.seg_loss(seg, &att_t)? * self.att_weight)?;
        let dual_l = (self.dual.forward(seg, seg_target, uniform)? * self.dual_weight)?;
        Ok(JointEdgeSegLosses {
            seg: seg_l,
            edge: edge_l,
            att: att_l,
            dual: dual_l,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn histogram_weights() {
        let l = ImageBasedCrossEntropyLoss::gscnn(3);
        // counts [2, 0, 1] (255 outside the range): hist [2/3, 0, 1/3].
        let w = l.class_weights(&[0, 0, 2, 255]);
        assert_eq!(
            w,
            vec![(1.0 + 1.0 / 3.0) as f32, 1.0, (1.0 + 2.0 / 3.0) as f32]
        );
    }

    #[test]
    fn attention_target_masks_low_edges() -> Result<()> {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[[1u32, 2], [3, 0]]], &dev)?;
        let e = Tensor::new(&[[[[0.9f32, 0.1], [0.8, 0.95]]]], &dev)?;
        let a = edge_attention_target(&t, &e, 0.8, 255)?;
        assert_eq!(a.to_vec3::<u32>()?, vec![vec![vec![1, 255], vec![255, 0]]]);
        Ok(())
    }

    #[test]
    fn all_ignored_image_adds_zero() -> Result<()> {
        let dev = Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &dev)?)?;
        let mut t = vec![1u32; 20];
        t.extend([255u32; 20]);
        let t = Tensor::from_vec(t, (2, 4, 5), &dev)?;
        let ce = ImageBasedCrossEntropyLoss::gscnn(3);
        let both = ce.forward(x.as_tensor(), &t)?;
        let first = ce.forward(&x.as_tensor().narrow(0, 0, 1)?, &t.narrow(0, 0, 1)?)?;
        assert_eq!(both.to_scalar::<f32>()?, first.to_scalar::<f32>()?);
        let g = both.backward()?;
        let g = g
            .get(x.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        let g = g.transpose()?.unwrap_or_default();
        assert!(g.iter().all(|v| v.is_finite()));
        assert!(g[60..].iter().all(|&v| v == 0.0));
        Ok(())
    }
}
