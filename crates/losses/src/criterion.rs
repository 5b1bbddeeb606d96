//! OneFormer's set criterion: Hungarian matching, then class cross-entropy with a down-weighted
//! "no object" class, point-sampled sigmoid CE and dice mask losses, the query-text contrastive
//! loss, and the same per auxiliary decoder layer.
//!
//! Reference: transformers 5.x `models/oneformer/modeling_oneformer.py`, `OneFormerLoss`
//! (`forward`, `loss_labels`, `loss_masks`, `get_num_masks`, `loss_contrastive`) and
//! `OneFormerForUniversalSegmentation.get_loss_dict` / `get_loss` (the weighting).
//!
//! Per decoder layer (last layer first, then every auxiliary layer in order):
//! 1. match queries to targets ([`OneFormerHungarianMatcher`], one `rand(1, P, 2)` per image);
//! 2. `loss_mask` / `loss_dice`: the matched mask logits and the (zero-padded to the batch's
//!    largest) target masks are sampled at importance-sampled points
//!    ([`crate::point_sample`](mod@crate::point_sample), `rand(R, floor(P * oversample), 2)` then `rand(R, P - k, 2)`),
//!    and [`sigmoid_cross_entropy_loss`] / [`dice_loss`] are normalised by
//!    `num_masks = max(total targets in the batch, 1)`;
//! 3. `loss_cross_entropy`: softmax CE over `K + 1` classes for every query, target "no object"
//!    (`K`) for unmatched queries, class weights 1 and `eos_coef` (0.1) for "no object",
//!    weighted mean (PyTorch's `CrossEntropyLoss(weight)`);
//!
//! plus, for the last layer only, `loss_contrastive` ([`query_text_contrastive_loss`]).
//! The weighted total ([`OneFormerLosses::total`]) is
//! `sum 2 * ce + 5 * mask + 5 * dice (+ 0.5 * contrastive)` over all layers, summed in the
//! reference's dictionary order.
//!
//! # Shapes
//! Per layer: `masks_queries_logits` `B x Q x H x W`, `class_queries_logits` `B x Q x (K + 1)`;
//! targets: `B` [`MaskTargets`] (`T_b x Ht_b x Wt_b` masks, `T_b` classes); contrastive:
//! image and text queries `B x ..`, a scalar `logit_scale`. Every loss is a scalar.
//!
//! # Example
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_losses::{MaskTargets, OneFormerLoss, OneFormerLossConfig, SeededPointSource, SetPrediction};
//!
//! let dev = Device::Cpu;
//! let cfg = OneFormerLossConfig { num_points: 24, ..OneFormerLossConfig::oneformer(3) };
//! let pred = SetPrediction {
//!     masks_queries_logits: Tensor::randn(0f32, 1.0, (1, 5, 8, 8), &dev)?,
//!     class_queries_logits: Tensor::randn(0f32, 1.0, (1, 5, 4), &dev)?,
//! };
//! let targets = vec![MaskTargets { masks: Tensor::ones((2, 8, 8), DType::F32, &dev)?, classes: vec![0, 2] }];
//! let losses = OneFormerLoss::new(cfg).forward(&pred, &[], &targets, None, &mut SeededPointSource::new(1))?;
//! let total = losses.total()?;
//! assert_eq!(total.dims(), &[] as &[usize]);
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::contrastive::query_text_contrastive_loss;
use crate::mask::{dice_loss, sigmoid_cross_entropy_loss};
use crate::matcher::{MaskTargets, Matching, OneFormerHungarianMatcher};
use crate::point_sample::{point_sample_host, sample_coords_host, PointSource};
use crate::util::{
    check_float, from_f32, index_tensor, picked_log_probs, scalar, shape_err, to_vec_f32,
};
use crate::{Error, Result};

/// Configuration of [`OneFormerLoss`]: the one home of OneFormer's criterion settings (segkit
/// models embed it as `OneFormerConfig::loss`).
///
/// Fields of transformers' `OneFormerConfig`; where segkit's name differs, HF's is accepted as
/// a serde alias (`num_labels`, `no_object_weight`, `train_num_points`). Missing fields take
/// [`OneFormerLossConfig::default`]; unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OneFormerLossConfig {
    /// Number of classes `K` (`num_labels`); the class logits have `K + 1` entries, the last
    /// being "no object".
    #[serde(alias = "num_labels")]
    pub num_classes: usize,
    /// Class-loss weight of the "no object" class (`no_object_weight`, 0.1).
    #[serde(alias = "no_object_weight")]
    pub eos_coef: f64,
    /// Weight of `loss_cross_entropy` and of the matcher's class cost (`class_weight`, 2.0).
    pub class_weight: f64,
    /// Weight of `loss_mask` and of the matcher's mask cost (`mask_weight`, 5.0).
    pub mask_weight: f64,
    /// Weight of `loss_dice` and of the matcher's dice cost (`dice_weight`, 5.0).
    pub dice_weight: f64,
    /// Weight of `loss_contrastive` (`contrastive_weight`, 0.5).
    pub contrastive_weight: f64,
    /// Initial temperature `t` of the query-text contrastive loss: its learnable
    /// `logit_scale` starts at `log(1 / t)` (`contrastive_temperature`, 0.07); `None`: no
    /// learnable scale.
    pub contrastive_temperature: Option<f64>,
    /// Points per mask for the mask losses and the matcher (`train_num_points`, 12544).
    #[serde(alias = "train_num_points")]
    pub num_points: usize,
    /// Oversampling of the importance sampling (`oversample_ratio`, 3.0).
    pub oversample_ratio: f64,
    /// Fraction of points chosen by uncertainty (`importance_sample_ratio`, 0.75).
    pub importance_sample_ratio: f64,
}

impl Default for OneFormerLossConfig {
    /// OneFormer's settings for the 150 classes of the shi-labs ADE20K checkpoints.
    fn default() -> Self {
        Self::oneformer(150)
    }
}

impl OneFormerLossConfig {
    /// OneFormer's defaults for `num_classes` classes.
    pub fn oneformer(num_classes: usize) -> Self {
        Self {
            num_classes,
            eos_coef: 0.1,
            class_weight: 2.0,
            mask_weight: 5.0,
            dice_weight: 5.0,
            contrastive_weight: 0.5,
            contrastive_temperature: Some(0.07),
            num_points: 12544,
            oversample_ratio: 3.0,
            importance_sample_ratio: 0.75,
        }
    }

    /// The matcher this criterion uses (costs = loss weights, same number of points).
    pub fn matcher(&self) -> OneFormerHungarianMatcher {
        OneFormerHungarianMatcher {
            cost_class: self.class_weight,
            cost_mask: self.mask_weight,
            cost_dice: self.dice_weight,
            num_points: self.num_points,
        }
    }
}

/// The predictions of one decoder layer.
#[derive(Debug, Clone)]
pub struct SetPrediction {
    /// `B x Q x H x W` mask logits.
    pub masks_queries_logits: Tensor,
    /// `B x Q x (K + 1)` class logits.
    pub class_queries_logits: Tensor,
}

/// Inputs of the query-text contrastive loss.
#[derive(Debug, Clone, Copy)]
pub struct ContrastiveInputs<'a> {
    /// The decoder's contrastive queries, `B x ..`.
    pub image_queries: &'a Tensor,
    /// The text mapper's queries, `B x ..` (same shape).
    pub text_queries: &'a Tensor,
    /// The learnable `logit_scale` (scalar).
    pub logit_scale: &'a Tensor,
}

/// The unweighted losses of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerLosses {
    /// `loss_cross_entropy`.
    pub cross_entropy: Tensor,
    /// `loss_mask` (point-sampled sigmoid CE).
    pub mask: Tensor,
    /// `loss_dice` (point-sampled dice).
    pub dice: Tensor,
    /// The matching used, per image `(queries, targets)`.
    pub matching: Matching,
}

/// Everything [`OneFormerLoss::forward`] computes (unweighted, as the criterion's dict).
#[derive(Debug, Clone)]
pub struct OneFormerLosses {
    /// The last decoder layer's losses.
    pub main: LayerLosses,
    /// `loss_contrastive`, when contrastive inputs were given.
    pub contrastive: Option<Tensor>,
    /// The auxiliary layers' losses (`loss_*_{i}`), in order.
    pub aux: Vec<LayerLosses>,
    weights: [f64; 4],
}

impl OneFormerLosses {
    /// The losses under transformers' names (`loss_mask`, `loss_dice`, `loss_cross_entropy`,
    /// `loss_contrastive`, then `loss_mask_0`, ..), unweighted, in the reference's order.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![
            ("loss_mask".to_string(), self.main.mask.clone()),
            ("loss_dice".to_string(), self.main.dice.clone()),
            (
                "loss_cross_entropy".to_string(),
                self.main.cross_entropy.clone(),
            ),
        ];
        if let Some(c) = &self.contrastive {
            v.push(("loss_contrastive".to_string(), c.clone()));
        }
        for (i, l) in self.aux.iter().enumerate() {
            v.push((format!("loss_mask_{i}"), l.mask.clone()));
            v.push((format!("loss_dice_{i}"), l.dice.clone()));
            v.push((format!("loss_cross_entropy_{i}"), l.cross_entropy.clone()));
        }
        v
    }

    /// The losses of [`Self::named`], each multiplied by its weight (`get_loss_dict`).
    pub fn weighted(&self) -> Result<Vec<(String, Tensor)>> {
        let [wc, wm, wd, wq] = self.weights;
        self.named()
            .into_iter()
            .map(|(k, t)| {
                let w = if k.starts_with("loss_cross_entropy") {
                    wc
                } else if k.starts_with("loss_mask") {
                    wm
                } else if k.starts_with("loss_dice") {
                    wd
                } else {
                    wq
                };
                Ok((k, (t * w)?))
            })
            .collect()
    }

    /// The training loss: the sum of [`Self::weighted`] (`get_loss`).
    pub fn total(&self) -> Result<Tensor> {
        let mut it = self.weighted()?.into_iter();
        let (_, mut acc) = it
            .next()
            .ok_or_else(|| Error::InvalidArgument("no losses".into()))?;
        for (_, t) in it {
            acc = (acc + t)?;
        }
        Ok(acc)
    }
}

/// Errors unless `matching` pairs, for each of the `b` images, distinct queries in `0..q` with
/// targets of that image.
fn check_matching(matching: &Matching, targets: &[MaskTargets], b: usize, q: usize) -> Result<()> {
    if matching.len() != b || targets.len() != b {
        return Err(Error::InvalidArgument(format!(
            "{} matchings and {} target sets for a batch of {b}",
            matching.len(),
            targets.len()
        )));
    }
    for (i, ((src, tgt), t)) in matching.iter().zip(targets).enumerate() {
        let n = t.classes.len();
        let (tm, th, tw) = t.masks.dims3()?;
        if tm != n {
            return Err(shape_err("target masks", &[n, th, tw], t.masks.dims()));
        }
        if src.len() != tgt.len() || src.iter().any(|&s| s >= q) || tgt.iter().any(|&j| j >= n) {
            return Err(Error::InvalidArgument(format!(
                "matching of image {i} pairs queries {src:?} (of {q}) with targets {tgt:?} (of {n})"
            )));
        }
    }
    Ok(())
}

/// transformers' `OneFormerLoss`.
#[derive(Debug, Clone, PartialEq)]
pub struct OneFormerLoss {
    /// The configuration.
    pub config: OneFormerLossConfig,
}

impl OneFormerLoss {
    /// The criterion for `config`.
    pub fn new(config: OneFormerLossConfig) -> Self {
        Self { config }
    }

    /// All losses of the last layer (`outputs`), the auxiliary layers (`aux`) and, if given,
    /// the contrastive loss. `source` supplies the uniform draws in PyTorch's order.
    pub fn forward(
        &self,
        outputs: &SetPrediction,
        aux: &[SetPrediction],
        targets: &[MaskTargets],
        contrastive: Option<ContrastiveInputs<'_>>,
        source: &mut dyn PointSource,
    ) -> Result<OneFormerLosses> {
        let num_masks = targets
            .iter()
            .map(|t| t.classes.len())
            .sum::<usize>()
            .max(1) as f64;
        let main = self.layer(outputs, targets, num_masks, source)?;
        let contrastive = contrastive
            .map(|c| query_text_contrastive_loss(c.image_queries, c.text_queries, c.logit_scale))
            .transpose()?;
        let aux = aux
            .iter()
            .map(|p| self.layer(p, targets, num_masks, source))
            .collect::<Result<Vec<_>>>()?;
        let c = &self.config;
        Ok(OneFormerLosses {
            main,
            contrastive,
            aux,
            weights: [
                c.class_weight,
                c.mask_weight,
                c.dice_weight,
                c.contrastive_weight,
            ],
        })
    }

    fn layer(
        &self,
        pred: &SetPrediction,
        targets: &[MaskTargets],
        num_masks: f64,
        source: &mut dyn PointSource,
    ) -> Result<LayerLosses> {
        let masks = &pred.masks_queries_logits;
        let classes = &pred.class_queries_logits;
        check_float("masks_queries_logits", masks)?;
        let (_, _, k1) = classes.dims3()?;
        if k1 != self.config.num_classes + 1 {
            return Err(shape_err(
                "class_queries_logits",
                &[
                    classes.dim(0)?,
                    classes.dim(1)?,
                    self.config.num_classes + 1,
                ],
                classes.dims(),
            ));
        }
        let matching = self
            .config
            .matcher()
            .forward(masks, classes, targets, source)?;
        let (mask, dice) = self.loss_masks(masks, targets, &matching, num_masks, source)?;
        let cross_entropy = self.loss_labels(classes, targets, &matching)?;
        Ok(LayerLosses {
            cross_entropy,
            mask,
            dice,
            matching,
        })
    }

    /// `loss_labels`: the "no object"-weighted class cross-entropy of all queries.
    pub fn loss_labels(
        &self,
        class_logits: &Tensor,
        targets: &[MaskTargets],
        matching: &Matching,
    ) -> Result<Tensor> {
        let (b, q, k1) = class_logits.dims3()?;
        let no_object = k1 - 1;
        let mut target_classes = vec![no_object; b * q];
        for (bi, ((src, tgt), t)) in matching.iter().zip(targets).enumerate() {
            for (&s, &j) in src.iter().zip(tgt) {
                target_classes[bi * q + s] = t.classes[j];
            }
        }
        let w: Vec<f32> = target_classes
            .iter()
            .map(|&c| {
                if c == no_object {
                    self.config.eos_coef as f32
                } else {
                    1.0
                }
            })
            .collect();
        let total_w = w.iter().map(|&x| x as f64).sum::<f64>() as f32;
        let idx = target_classes.iter().map(|&c| c as u32).collect();
        let lp = picked_log_probs(class_logits, 2, idx)?;
        let w = from_f32(w, &[b, q], class_logits.dtype(), class_logits.device())?;
        let denom = scalar(total_w as f64, class_logits.dtype(), class_logits.device())?;
        Ok(lp.mul(&w)?.sum_all()?.neg()?.div(&denom)?)
    }

    /// `loss_masks`: point-sampled sigmoid CE and dice of the matched masks.
    pub fn loss_masks(
        &self,
        mask_logits: &Tensor,
        targets: &[MaskTargets],
        matching: &Matching,
        num_masks: f64,
        source: &mut dyn PointSource,
    ) -> Result<(Tensor, Tensor)> {
        let (b, q, h, w) = mask_logits.dims4()?;
        check_matching(matching, targets, b, q)?;
        let (dev, dt) = (mask_logits.device(), mask_logits.dtype());
        // Targets padded to the batch's largest size (`_pad_images_to_max_in_batch`).
        let (mut hm, mut wm) = (0, 0);
        for t in targets {
            let (_, th, tw) = t.masks.dims3()?;
            hm = hm.max(th);
            wm = wm.max(tw);
        }
        let mut src_rows = Vec::new();
        let mut tgt = Vec::new();
        for (bi, ((src, tj), t)) in matching.iter().zip(targets).enumerate() {
            if src.is_empty() {
                continue;
            }
            let (_, th, tw) = t.masks.dims3()?;
            let tm = to_vec_f32(&t.masks)?;
            for (&s, &j) in src.iter().zip(tj) {
                src_rows.push((bi * q + s) as u32);
                let mut plane = vec![0f32; hm * wm];
                for y in 0..th {
                    let row = &tm[(j * th + y) * tw..(j * th + y + 1) * tw];
                    plane[y * wm..y * wm + tw].copy_from_slice(row);
                }
                tgt.extend(plane);
            }
        }
        let r = src_rows.len();
        let idx = index_tensor(src_rows, &[r], dev)?;
        let pred = mask_logits.reshape((b * q, h, w))?.index_select(&idx, 0)?;
        let tgt = from_f32(tgt, &[r, hm, wm], dt, dev)?;
        let c = &self.config;
        let coords = sample_coords_host(
            &pred.detach(),
            c.num_points,
            c.oversample_ratio,
            c.importance_sample_ratio,
            source,
        )?;
        let p = c.num_points;
        if r == 0 {
            let z = Tensor::zeros((), dt, dev)?;
            return Ok((z.clone(), z));
        }
        let labels = point_sample_host(&tgt, &coords, r, p)?;
        let logits = point_sample_host(&pred, &coords, r, p)?;
        let mask = sigmoid_cross_entropy_loss(&logits, &labels, num_masks)?;
        let dice = dice_loss(&logits, &labels, num_masks)?;
        Ok((mask, dice))
    }
}
