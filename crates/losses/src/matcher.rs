//! OneFormer's (Mask2Former's) Hungarian matcher between queries and ground-truth masks.
//!
//! Reference: transformers 5.x `models/oneformer/modeling_oneformer.py`,
//! `OneFormerHungarianMatcher.forward` (refactored from SHI-Labs/OneFormer
//! `oneformer/modeling/matcher.py`), run under `torch.no_grad()`.
//!
//! Per image: `cost = cost_mask * CE + cost_class * (-softmax(class)[:, labels]) + cost_dice *
//! dice` (OneFormer: 5, 2, 5), where CE and dice are the pair-wise sigmoid cross-entropy and
//! dice costs on `num_points` points shared by all masks of the image (one `torch.rand(1, P, 2)`
//! draw per image, taken from the [`PointSource`]); NaN and infinite costs become `f32::MAX`;
//! the assignment is [`linear_sum_assignment`] (scipy's).
//!
//! # Shapes
//! `masks_queries_logits`: `B x Q x H x W`, `class_queries_logits`: `B x Q x (K + 1)`; per image
//! a [`MaskTargets`] with `masks` `T x Ht x Wt` (0/1 floats, any size) and `T` class indices.
//! Output: per image `min(Q, T)` pairs `(query, target)`, queries ascending.
//!
//! # Example
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_losses::{MaskTargets, OneFormerHungarianMatcher, SeededPointSource};
//!
//! let dev = Device::Cpu;
//! let masks = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &dev)?;
//! let classes = Tensor::randn(0f32, 1.0, (1, 4, 3), &dev)?;
//! let targets = vec![MaskTargets { masks: Tensor::ones((2, 8, 8), DType::F32, &dev)?, classes: vec![0, 1] }];
//! let matcher = OneFormerHungarianMatcher { num_points: 32, ..Default::default() };
//! let m = matcher.forward(&masks, &classes, &targets, &mut SeededPointSource::new(0))?;
//! assert_eq!(m[0].0.len(), 2);
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::lsap::linear_sum_assignment;
use crate::mask::{pair_wise_dice_loss, pair_wise_sigmoid_cross_entropy_loss};
use crate::point_sample::{point_sample_host, PointSource};
use crate::util::{check_float, index_tensor, shape_err, softmax};
use crate::{Error, Result};

/// The ground truth of one image: binary masks and their class indices.
#[derive(Debug, Clone)]
pub struct MaskTargets {
    /// `T x Ht x Wt` masks (float 0/1).
    pub masks: Tensor,
    /// `T` class indices in `0..K`.
    pub classes: Vec<usize>,
}

impl MaskTargets {
    /// Errors unless `masks` is `T x Ht x Wt` with `T = classes.len()`.
    pub(crate) fn check(&self, num_labels: usize) -> Result<(usize, usize, usize)> {
        let (t, h, w) = self.masks.dims3().map_err(|_| {
            shape_err(
                "target masks",
                &[self.classes.len(), 0, 0],
                self.masks.dims(),
            )
        })?;
        if t != self.classes.len() {
            return Err(shape_err(
                "target masks",
                &[self.classes.len(), h, w],
                self.masks.dims(),
            ));
        }
        if let Some(&c) = self.classes.iter().find(|&&c| c >= num_labels) {
            return Err(Error::InvalidArgument(format!(
                "target class {c} out of range for {num_labels} class logits"
            )));
        }
        Ok((t, h, w))
    }
}

/// `OneFormerHungarianMatcher`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OneFormerHungarianMatcher {
    /// Weight of the classification cost (`class_weight`, 2.0).
    pub cost_class: f64,
    /// Weight of the sigmoid cross-entropy mask cost (`mask_weight`, 5.0).
    pub cost_mask: f64,
    /// Weight of the dice cost (`dice_weight`, 5.0).
    pub cost_dice: f64,
    /// Points sampled per image for the mask costs (`train_num_points`, 12544).
    pub num_points: usize,
}

impl Default for OneFormerHungarianMatcher {
    fn default() -> Self {
        Self {
            cost_class: 2.0,
            cost_mask: 5.0,
            cost_dice: 5.0,
            num_points: 12544,
        }
    }
}

/// Per image, the matched `(query indices, target indices)`.
pub type Matching = Vec<(Vec<usize>, Vec<usize>)>;

impl OneFormerHungarianMatcher {
    /// The cost matrix (`Q x T`, f32 values) of one image; `pred_masks` `Q x H x W`,
    /// `pred_logits` `Q x (K + 1)`.
    fn cost_matrix(
        &self,
        pred_masks: &Tensor,
        pred_logits: &Tensor,
        target: &MaskTargets,
        source: &mut dyn PointSource,
    ) -> Result<(Vec<f64>, usize, usize)> {
        let q = pred_masks.dim(0)?;
        let t = target.classes.len();
        let p = self.num_points;
        let coords = source.uniform(&[1, p, 2])?;
        if coords.len() != p * 2 {
            return Err(shape_err("uniform draw", &[1, p, 2], &[coords.len()]));
        }
        if t == 0 || q == 0 {
            return Ok((Vec::new(), q, t));
        }
        let probs = softmax(pred_logits, 1)?;
        let labels = index_tensor(
            target.classes.iter().map(|&c| c as u32).collect(),
            &[t],
            probs.device(),
        )?;
        let cost_class = probs.index_select(&labels, 1)?.neg()?;
        let tgt = target
            .masks
            .to_dtype(pred_masks.dtype())?
            .to_device(pred_masks.device())?;
        let tgt = point_sample_host(&tgt, &coords, 1, p)?;
        let pred = point_sample_host(pred_masks, &coords, 1, p)?;
        let pred = pred.to_dtype(DType::F32)?;
        let tgt = tgt.to_dtype(DType::F32)?;
        let cost_mask = pair_wise_sigmoid_cross_entropy_loss(&pred, &tgt)?;
        let cost_dice = pair_wise_dice_loss(&pred, &tgt)?;
        let cost = (((cost_mask * self.cost_mask)?
            + (cost_class.to_dtype(DType::F32)? * self.cost_class)?)?
            + (cost_dice * self.cost_dice)?)?;
        let v = cost.flatten_all()?.to_vec1::<f32>()?;
        let v = v
            .into_iter()
            .map(|x| {
                if x.is_finite() {
                    x as f64
                } else {
                    f32::MAX as f64
                }
            })
            .collect();
        Ok((v, q, t))
    }

    /// The matching of every image of the batch (computed without gradient).
    pub fn forward(
        &self,
        masks_queries_logits: &Tensor,
        class_queries_logits: &Tensor,
        targets: &[MaskTargets],
        source: &mut dyn PointSource,
    ) -> Result<Matching> {
        check_float("masks_queries_logits", masks_queries_logits)?;
        check_float("class_queries_logits", class_queries_logits)?;
        let (b, q, _, _) = masks_queries_logits.dims4()?;
        let (bc, qc, k1) = class_queries_logits.dims3()?;
        if (bc, qc) != (b, q) {
            return Err(shape_err(
                "class_queries_logits",
                &[b, q, k1],
                class_queries_logits.dims(),
            ));
        }
        if targets.len() != b {
            return Err(Error::InvalidArgument(format!(
                "{} target sets for a batch of {b}",
                targets.len()
            )));
        }
        let masks = masks_queries_logits.detach();
        let classes = class_queries_logits.detach();
        let mut out = Vec::with_capacity(b);
        for (i, target) in targets.iter().enumerate() {
            target.check(k1)?;
            let (cost, rows, cols) =
                self.cost_matrix(&masks.get(i)?, &classes.get(i)?, target, source)?;
            out.push(linear_sum_assignment(&cost, rows, cols, false)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point_sample::SeededPointSource;
    use candle_core::Device;

    #[test]
    fn nan_costs_still_match_and_bad_targets_error() -> Result<()> {
        let dev = Device::Cpu;
        let mut m = vec![0.5f32; 3 * 4 * 4];
        m[0] = f32::NAN; // query 0's mask cost becomes NaN -> f32::MAX
        let masks = Tensor::from_vec(m, (1, 3, 4, 4), &dev)?;
        let classes = Tensor::zeros((1, 3, 3), DType::F32, &dev)?;
        let targets = vec![MaskTargets {
            masks: Tensor::ones((2, 4, 4), DType::F32, &dev)?,
            classes: vec![0, 1],
        }];
        let matcher = OneFormerHungarianMatcher {
            num_points: 16,
            ..Default::default()
        };
        let mut src = SeededPointSource::new(5);
        let out = matcher.forward(&masks, &classes, &targets, &mut src)?;
        assert_eq!(out[0].0, vec![1, 2]);
        let bad = vec![MaskTargets {
            masks: Tensor::ones((2, 4, 4), DType::F32, &dev)?,
            classes: vec![0, 7],
        }];
        assert!(matcher.forward(&masks, &classes, &bad, &mut src).is_err());
        let bad = vec![MaskTargets {
            masks: Tensor::ones((3, 4, 4), DType::F32, &dev)?,
            classes: vec![0, 1],
        }];
        assert!(matcher.forward(&masks, &classes, &bad, &mut src).is_err());
        Ok(())
    }
}
