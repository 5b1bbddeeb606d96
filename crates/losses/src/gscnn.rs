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
//!   `sqrt(2 * E^2 + 1e-6) / max(...)` of the map itself. That is what [`DualTaskLoss`] computes.
//! - The dual-task loss draws Gumbel noise `-log(eps - log(U + eps))` from `U ~ torch.rand`.
//!   [`DualTaskLoss::forward`] takes `U` as an argument (for parity and reproducibility);
//!   without it the noise is zero (the deterministic softmax with temperature `tau`).
//! - The official code hard-codes 19 classes in the dual-task loss; here `C` comes from the
//!   logits. Ignored pixels (255) have their logits replaced by 0 (no gradient) and count as
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
use crate::util::{
    abs_torch, bce_with_logits, check_float, from_f32, labels_i64, max_all_even, picked_log_probs,
    scalar, shape_err, softmax, to_vec_f32,
};
use crate::{Error, Result};

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

/// GSCNN's `DualTaskLoss`: L1 between the boundary maps of the (Gumbel-)softmax prediction and
/// of the one-hot target, averaged over each map's boundary pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DualTaskLoss {
    /// Ignored target value (255).
    pub ignore_index: i64,
    /// Gumbel-softmax temperature (0.5).
    pub tau: f64,
}

impl Default for DualTaskLoss {
    fn default() -> Self {
        Self {
            ignore_index: 255,
            tau: 0.5,
        }
    }
}

/// The official `compute_grad_mag`: `sqrt(E*E + E*E + 1e-6) / max` (see the module docs).
fn grad_mag(e: &Tensor) -> Result<Tensor> {
    let sq = e.mul(e)?;
    let mag = ((&sq + &sq)? + 1e-6)?.sqrt()?;
    let m = max_all_even(&mag)?;
    Ok(mag.broadcast_div(&m)?)
}

impl DualTaskLoss {
    /// The loss for `logits` and `target`; `uniform` is the `U ~ U[0, 1)` of the Gumbel noise
    /// (`None`: no noise).
    pub fn forward(
        &self,
        logits: &Tensor,
        target: &Tensor,
        uniform: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_float("logits", logits)?;
        let (n, c, h, w) = logits.dims4()?;
        if target.dims() != [n, h, w] {
            return Err(shape_err("target", &[n, h, w], target.dims()));
        }
        let (dev, dt) = (logits.device(), logits.dtype());
        let labels = labels_i64("target", target)?;
        let hw = h * w;
        let mut keep = vec![0u8; n * c * hw];
        let mut onehot = vec![0f32; n * c * hw];
        for (p, &l) in labels.iter().enumerate() {
            let (b, s) = (p / hw, p % hw);
            let ignored = l == self.ignore_index;
            let cls = if ignored {
                0
            } else if l >= 0 && (l as u64) < c as u64 {
                l as usize
            } else {
                return Err(Error::InvalidArgument(format!(
                    "target value {l} is neither a class in 0..{c} nor the ignore index {}",
                    self.ignore_index
                )));
            };
            onehot[(b * c + cls) * hw + s] = 1.0;
            if !ignored {
                for k in 0..c {
                    keep[(b * c + k) * hw + s] = 1;
                }
            }
        }
        let keep = Tensor::from_vec(keep, (n, c, h, w), dev)?;
        let x = keep.where_cond(logits, &logits.zeros_like()?)?;
        let y = match uniform {
            None => x,
            Some(u) => {
                if u.elem_count() != n * c * hw || u.dim(0)? != n || u.dim(1)? != c {
                    return Err(shape_err("gumbel uniform", &[n, c, h, w], u.dims()));
                }
                let eps = 1e-10;
                let u = u.detach().to_dtype(dt)?.reshape((n, c, h, w))?;
                // -log(eps - log(U + eps))
                let noise = (u + eps)?.log()?.affine(-1.0, eps)?.log()?.neg()?;
                (x + noise)?
            }
        };
        let g = softmax(&(y / self.tau)?, 1)?;
        let g = grad_mag(&g)?.reshape((n, c * hw))?;
        let onehot = from_f32(onehot, &[n, c, h, w], dt, dev)?;
        let g_hat = grad_mag(&onehot)?.reshape((n, c * hw))?;
        let l = abs_torch(&(&g - &g_hat)?)?;
        let th = 1e-8;
        let part = |m: Tensor| -> Result<Tensor> {
            let m = m.to_dtype(dt)?;
            let num = l.mul(&m)?.sum_all()?;
            let den = (m.sum_all()? + 1e-10)?;
            Ok(num.div(&den)?)
        };
        let a = part(g.detach().ge(th)?)?;
        let b = part(g_hat.ge(th)?)?;
        Ok(((a * 0.5)? + (b * 0.5)?)?)
    }
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
    use candle_core::{DType, Device};

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
    fn dual_task_shape_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        let t = Tensor::zeros((1, 4, 5), DType::U32, &dev).unwrap();
        assert!(DualTaskLoss::default().forward(&x, &t, None).is_err());
    }
}
