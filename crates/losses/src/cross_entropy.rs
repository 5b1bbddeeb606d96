//! Softmax cross-entropy with an ignore index and class weights, as mmseg's `CrossEntropyLoss`,
//! and its sigmoid form ([`BinaryCrossEntropyLoss`], `use_sigmoid=True`).
//!
//! Reference: mmseg 1.2.2 `mmseg/models/losses/cross_entropy_loss.py` (`cross_entropy`,
//! `CrossEntropyLoss` with `use_sigmoid=False`) and `mmseg/models/losses/utils.py`
//! (`weight_reduce_loss`), as called by `BaseDecodeHead.loss_by_feat` (`ignore_index=255`).
//!
//! Per element, `l_i = -w[y_i] * log_softmax(x)_i[y_i]` (`F.cross_entropy(reduction='none',
//! weight=class_weight, ignore_index)`; ignored elements give 0), optionally times a per-element
//! sample weight (mmseg's `weight` argument, e.g. OHEM's). The loss is
//! `loss_weight * sum_i l_i / (avg_factor + eps)` with `eps = f32::EPSILON` and
//!
//! | `avg_non_ignore` | no class weights | class weights |
//! |---|---|---|
//! | `false` (mmseg default) | all elements | `sum_i w[y_i]` over all elements |
//! | `true` (PyTorch's `mean`) | non-ignored elements | `sum_i w[y_i]` over non-ignored elements |
//!
//! With `avg_non_ignore = false` and class weights, mmseg counts an ignored element with
//! `w[ignore_index]`; that only exists when `ignore_index < C` (mmseg 1.2.2 raises
//! `IndexError` otherwise, and so does its `avg_non_ignore = true` path with class weights,
//! whose evident intent, zero weight for ignored elements, is implemented here). The first case
//! is a typed error here.
//!
//! PSSL pre-training (PaddleSeg) uses 1001 classes (1000 ImageNet classes + background at index
//! 1000), ignore index 1001 and class weights 1.0 / 0.1 (background); PaddleSeg normalises by
//! the summed class weights of the non-ignored pixels, i.e. `avg_non_ignore = true`
//! ([`CrossEntropyLoss::pssl`], [`pssl_class_weight`]).
//!
//! # Shapes
//! `logits`: `N x C x d1 x .. x dk` (k >= 0, e.g. `N x C x H x W`), `target`: `N x d1 x .. x dk`
//! integer (`u8`, `u32` or `i64`), optional sample weight: same shape as `target`.
//! Output: a scalar (rank-0) tensor; [`CrossEntropyLoss::per_element`] gives `N x d1 x .. x dk`.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use segkit_losses::CrossEntropyLoss;
//!
//! let logits = Var::from_tensor(&Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &Device::Cpu)?)?;
//! let target = Tensor::new(&[[[0u32, 1], [2, 255]]], &Device::Cpu)?;
//! let loss = CrossEntropyLoss::default().forward(logits.as_tensor(), &target)?;
//! // Three pixels of loss ln 3, averaged over all four (mmseg's default).
//! assert!((loss.to_scalar::<f32>()? - 0.75 * 3f32.ln()).abs() < 1e-6);
//! let grads = loss.backward()?;
//! assert!(grads.get(logits.as_tensor()).is_some());
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::util::{
    bce_with_logits, check_float, from_f32, labels_i64, log_sigmoid, picked_log_probs, scalar,
    shape_err, to_vec_f32,
};
use crate::{Error, Result};

/// mmseg's `CrossEntropyLoss` (softmax) with the decode head's ignore index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrossEntropyLoss {
    /// Target value whose elements contribute neither loss nor gradient (mmseg decode heads:
    /// 255; PSSL: 1001).
    pub ignore_index: i64,
    /// Per-class rescaling weight `w[c]` (PyTorch's `weight`); `None` means all ones.
    pub class_weight: Option<Vec<f32>>,
    /// Average over non-ignored elements only (mmseg's `avg_non_ignore`, PyTorch's `mean`);
    /// `false` (mmseg's default) averages over all elements.
    pub avg_non_ignore: bool,
    /// Factor applied to the loss (mmseg's `loss_weight`; e.g. 0.4 for auxiliary heads).
    pub loss_weight: f64,
}

impl Default for CrossEntropyLoss {
    fn default() -> Self {
        Self::mmseg()
    }
}

/// PSSL's class weights: 1.0 for every class and `background_weight` for `background`.
///
/// PSSL uses `pssl_class_weight(1001, 1000, 0.1)`.
pub fn pssl_class_weight(
    num_classes: usize,
    background: usize,
    background_weight: f32,
) -> Vec<f32> {
    let mut w = vec![1.0f32; num_classes];
    if let Some(b) = w.get_mut(background) {
        *b = background_weight;
    }
    w
}

impl CrossEntropyLoss {
    /// mmseg's decode-head default: ignore 255, no class weights, mean over **all** elements
    /// (`avg_non_ignore=False`), loss weight 1.
    pub fn mmseg() -> Self {
        Self {
            ignore_index: 255,
            class_weight: None,
            avg_non_ignore: false,
            loss_weight: 1.0,
        }
    }

    /// Ignore 255, mean over the non-ignored elements (mmseg's `avg_non_ignore=True`, which is
    /// `F.cross_entropy`'s `mean`).
    pub fn mean_non_ignored() -> Self {
        Self {
            avg_non_ignore: true,
            ..Self::mmseg()
        }
    }

    /// PSSL pre-training: 1001 classes (background 1000, weight 0.1), ignore 1001, weighted mean
    /// over non-ignored pixels (PaddleSeg's normalisation).
    pub fn pssl() -> Self {
        Self {
            ignore_index: 1001,
            class_weight: Some(pssl_class_weight(1001, 1000, 0.1)),
            avg_non_ignore: true,
            loss_weight: 1.0,
        }
    }

    /// The loss, a scalar tensor.
    pub fn forward(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        self.forward_weighted(logits, target, None)
    }

    /// The loss with a per-element sample weight (mmseg's `weight` argument, e.g. the OHEM
    /// sampler's): the element losses are multiplied by it before the reduction; the averaging
    /// factor does not depend on it.
    pub fn forward_weighted(
        &self,
        logits: &Tensor,
        target: &Tensor,
        weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.reduce(self.prepare(logits, target, None)?, target, weight)
    }

    /// The loss of `logits` (`N x C x h x w`) resized bilinearly to the target's `H x W` with
    /// `align_corners`, as mmseg's `BaseDecodeHead.loss_by_feat` scores a head: equal to
    /// `forward(&resize_bilinear(logits, (H, W), align_corners)?, target)`, but the resized
    /// logits and their gradient are never built
    /// ([`segkit_core::ops::resized_log_softmax_gather`]); on CPU the values are PyTorch's
    /// `F.interpolate` kernel's.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use segkit_losses::CrossEntropyLoss;
    /// let logits = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu)?;
    /// let target = Tensor::zeros((2, 64, 64), candle_core::DType::U32, &Device::Cpu)?;
    /// let ce = CrossEntropyLoss::default();
    /// let fused = ce.forward_resized(&logits, &target, false)?.to_scalar::<f32>()?;
    /// let up = segkit_core::ops::resize_bilinear(&logits, (64, 64), false)?;
    /// assert!((fused - ce.forward(&up, &target)?.to_scalar::<f32>()?).abs() < 1e-6);
    /// # Ok::<(), segkit_losses::Error>(())
    /// ```
    pub fn forward_resized(
        &self,
        logits: &Tensor,
        target: &Tensor,
        align_corners: bool,
    ) -> Result<Tensor> {
        self.reduce(
            self.prepare(logits, target, Some(align_corners))?,
            target,
            None,
        )
    }

    /// `loss_weight * sum(loss * weight) / (avg_factor + eps)`.
    fn reduce(&self, prep: Prepared, target: &Tensor, weight: Option<&Tensor>) -> Result<Tensor> {
        let mut loss = prep.loss.clone();
        if let Some(w) = weight {
            if w.dims() != target.dims() {
                return Err(shape_err("sample weight", target.dims(), w.dims()));
            }
            loss = loss.mul(&w.detach().to_dtype(loss.dtype())?)?;
        }
        let avg_factor = self.avg_factor(&prep)?;
        // `loss.sum() / (avg_factor + eps)`, the denominator rounded to f32 as PyTorch does.
        let denom = (avg_factor as f32 + f32::EPSILON) as f64;
        let denom = scalar(denom, loss.dtype(), loss.device())?;
        let mean = loss.sum_all()?.div(&denom)?;
        Ok((mean * self.loss_weight)?)
    }

    /// `loss_weight * F.cross_entropy(logits, target, weight=class_weight,
    /// ignore_index=ignore_index, reduction='none')`: one loss per element (0 where ignored).
    pub fn per_element(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        Ok((self.prepare(logits, target, None)?.loss * self.loss_weight)?)
    }

    fn avg_factor(&self, p: &Prepared) -> Result<f64> {
        let n = p.labels.len();
        Ok(match (&self.class_weight, self.avg_non_ignore) {
            (None, false) => n as f64,
            (None, true) => p.valid.iter().filter(|&&v| v).count() as f64,
            (Some(cw), true) => p
                .labels
                .iter()
                .zip(&p.valid)
                .filter(|(_, &v)| v)
                .map(|(&l, _)| cw[l as usize] as f64)
                .sum(),
            (Some(cw), false) => {
                let mut s = 0f64;
                for (&l, &v) in p.labels.iter().zip(&p.valid) {
                    let c = if v { l } else { self.ignore_index };
                    let w = usize::try_from(c).ok().and_then(|c| cw.get(c)).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "mean over all elements with class weights counts ignored elements with \
                             class_weight[ignore_index = {}], which does not exist for {} classes \
                             (mmseg raises IndexError); use avg_non_ignore = true",
                            self.ignore_index,
                            cw.len()
                        ))
                    })?;
                    s += *w as f64;
                }
                s
            }
        })
    }

    /// Element losses and labels; with `resize = Some(align_corners)` the `N x C x h x w`
    /// logits are scored resized to the `N x H x W` target.
    fn prepare(&self, logits: &Tensor, target: &Tensor, resize: Option<bool>) -> Result<Prepared> {
        check_float("logits", logits)?;
        let ld = logits.dims();
        if ld.len() < 2 || (resize.is_some() && ld.len() != 4) {
            let want = if resize.is_some() {
                "N x C x h x w"
            } else {
                "N x C x ..."
            };
            return Err(Error::InvalidArgument(format!(
                "cross-entropy logits must be {want}, got shape {ld:?}"
            )));
        }
        let c = ld[1];
        let expected = match (resize, target.dims()) {
            (Some(_), &[n, h, w]) if n == ld[0] => vec![n, h, w],
            (Some(_), got) => {
                return Err(Error::InvalidArgument(format!(
                    "target must be N x H x W with N = {} to score resized logits of shape \
                     {ld:?}, got shape {got:?}",
                    ld[0]
                )))
            }
            (None, _) => {
                let mut e = vec![ld[0]];
                e.extend_from_slice(&ld[2..]);
                e
            }
        };
        if target.dims() != expected.as_slice() {
            return Err(shape_err("target", &expected, target.dims()));
        }
        if let Some(cw) = &self.class_weight {
            if cw.len() != c {
                return Err(shape_err("class_weight", &[c], &[cw.len()]));
            }
        }
        let labels = labels_i64("target", target)?;
        let (idx, valid, pix_w) =
            ce_indices(&labels, c, self.ignore_index, self.class_weight.as_deref())?;
        let lp = match resize {
            Some(ac) => segkit_core::ops::resized_log_softmax_gather(
                logits,
                (expected[1], expected[2]),
                ac,
                idx,
            )?,
            None => picked_log_probs(logits, 1, idx)?,
        };
        let w = from_f32(pix_w, &expected, logits.dtype(), logits.device())?;
        let loss = lp.neg()?.mul(&w)?;
        Ok(Prepared {
            loss,
            labels,
            valid,
        })
    }
}

/// mmseg's `CrossEntropyLoss(use_sigmoid=True)` (`binary_cross_entropy` in
/// `mmseg/models/losses/cross_entropy_loss.py`): an independent sigmoid per class.
///
/// - logits `N x C x ..` with integer labels `N x ..` (one rank less): the labels are expanded
///   to one-hot targets, elements whose label is negative or `ignore_index` get weight 0 in
///   every class; with `C = 1` (binary segmentation) the class dimension is squeezed and the
///   labels are the targets (they must be 0 or 1 where not ignored);
/// - logits and targets of the same shape (e.g. EncNet's `N x K` class-presence logits against
///   0/1 presence): element-wise, with weight 0 where the target is negative or `ignore_index`.
///
/// The element loss is `F.binary_cross_entropy_with_logits(x, y, pos_weight=class_weight)`
/// (`class_weight` broadcast along the **last** dimension, as PyTorch's `pos_weight`), times
/// the weight; the loss is `loss_weight * mean` over all elements (masked ones included), or
/// with `avg_non_ignore` `loss_weight * sum / (number of valid elements + eps)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use segkit_losses::BinaryCrossEntropyLoss;
/// let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let y = Tensor::new(&[[1f32, 0.0, 1.0], [0.0, 0.0, 1.0]], &Device::Cpu)?;
/// let l = BinaryCrossEntropyLoss::default().forward(&x, &y)?;
/// assert!((l.to_scalar::<f32>()? - 2f32.ln()).abs() < 1e-6);
/// # Ok::<(), segkit_losses::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BinaryCrossEntropyLoss {
    /// Label value whose elements get weight 0 (mmseg's function default -100; decode heads
    /// pass 255 for per-pixel labels).
    pub ignore_index: i64,
    /// PyTorch's `pos_weight`: a factor on the positive term, per entry of the last dimension;
    /// `None` means all ones.
    pub class_weight: Option<Vec<f32>>,
    /// Average over the valid (non-ignored) elements only; `false` (mmseg's default) averages
    /// over all elements.
    pub avg_non_ignore: bool,
    /// Factor applied to the loss (mmseg's `loss_weight`; 0.2 for EncNet's SE loss).
    pub loss_weight: f64,
}

impl Default for BinaryCrossEntropyLoss {
    fn default() -> Self {
        Self {
            ignore_index: -100,
            class_weight: None,
            avg_non_ignore: false,
            loss_weight: 1.0,
        }
    }
}

impl BinaryCrossEntropyLoss {
    /// The loss, a scalar tensor (see the type's docs for the accepted shapes).
    pub fn forward(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        check_float("logits", logits)?;
        let (x, y, valid) = self.targets(logits, target)?;
        let mut elem = match &self.class_weight {
            None => bce_with_logits(&x, &y)?,
            Some(pw) => {
                let last = x.dims().last().copied().unwrap_or(1);
                if pw.len() != last {
                    return Err(Error::InvalidArgument(format!(
                        "class_weight (pos_weight) has {} entries but the logits' last dimension \
                         has {last} (PyTorch broadcasts pos_weight along the last dimension)",
                        pw.len()
                    )));
                }
                let pw = from_f32(pw.clone(), &[last], x.dtype(), x.device())?;
                // (1 - y) x - (1 + (pw - 1) y) log_sigmoid(x), PyTorch's formula.
                let lw = y.broadcast_mul(&(pw - 1.0)?)?.affine(1.0, 1.0)?;
                (y.affine(-1.0, 1.0)?.mul(&x)? - lw.mul(&log_sigmoid(&x)?)?)?
            }
        };
        let n_valid = valid.iter().filter(|&&v| v > 0.0).count();
        let n = valid.len();
        let w = from_f32(valid, x.dims(), x.dtype(), x.device())?;
        elem = elem.mul(&w)?;
        let denom = if self.avg_non_ignore {
            (n_valid as f32 + f32::EPSILON) as f64
        } else {
            n as f64
        };
        let denom = scalar(denom, elem.dtype(), elem.device())?;
        Ok((elem.sum_all()?.div(&denom)? * self.loss_weight)?)
    }

    /// The logits (squeezed for one class), the float targets and the element weights.
    fn targets(&self, logits: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor, Vec<f32>)> {
        let ld = logits.dims();
        let is_valid = |l: f64| l >= 0.0 && l != self.ignore_index as f64;
        if ld.len() == target.rank() + 1 && ld.len() >= 2 {
            let mut expected = vec![ld[0]];
            expected.extend_from_slice(&ld[2..]);
            if target.dims() != expected.as_slice() {
                return Err(shape_err("target", &expected, target.dims()));
            }
            let labels = labels_i64("target", target)?;
            let c = ld[1];
            if c == 1 {
                // Binary segmentation: `pred.squeeze(1)`, the labels are the targets.
                let mut y = Vec::with_capacity(labels.len());
                let mut w = Vec::with_capacity(labels.len());
                for &l in &labels {
                    let v = is_valid(l as f64);
                    if v && l > 1 {
                        return Err(Error::InvalidArgument(format!(
                            "binary cross-entropy with one class needs labels 0 or 1 (or the \
                             ignore index {}), got {l}",
                            self.ignore_index
                        )));
                    }
                    y.push(if v { l as f32 } else { 0.0 });
                    w.push(if v { 1.0 } else { 0.0 });
                }
                let x = logits.squeeze(1)?;
                let y = from_f32(y, &expected, x.dtype(), x.device())?;
                return Ok((x, y, w));
            }
            // mmseg `_expand_onehot_labels`: one-hot targets, invalid elements weighted 0.
            let inner: usize = ld[2..].iter().product();
            let mut y = vec![0f32; labels.len() * c];
            let mut w = vec![0f32; labels.len() * c];
            for (i, &l) in labels.iter().enumerate() {
                if !is_valid(l as f64) {
                    continue;
                }
                if l as u64 >= c as u64 {
                    return Err(Error::InvalidArgument(format!(
                        "target value {l} is neither a class in 0..{c} nor the ignore index {}",
                        self.ignore_index
                    )));
                }
                let (b, p) = (i / inner, i % inner);
                for k in 0..c {
                    w[(b * c + k) * inner + p] = 1.0;
                }
                y[(b * c + l as usize) * inner + p] = 1.0;
            }
            let y = from_f32(y, ld, logits.dtype(), logits.device())?;
            return Ok((logits.clone(), y, w));
        }
        if target.dims() != ld {
            return Err(shape_err("target", ld, target.dims()));
        }
        let t = if target.dtype().is_float() {
            to_vec_f32(target)?
        } else {
            labels_i64("target", target)?
                .into_iter()
                .map(|v| v as f32)
                .collect()
        };
        let w: Vec<f32> = t
            .iter()
            .map(|&l| if is_valid(l as f64) { 1.0 } else { 0.0 })
            .collect();
        let y = from_f32(t, ld, logits.dtype(), logits.device())?;
        Ok((logits.clone(), y, w))
    }
}

struct Prepared {
    loss: Tensor,
    labels: Vec<i64>,
    valid: Vec<bool>,
}

/// Checks labels against `0..c` and the ignore index; returns the gather indices (0 where
/// ignored), the validity flags and the per-element class weights (0 where ignored).
pub(crate) fn ce_indices(
    labels: &[i64],
    c: usize,
    ignore_index: i64,
    class_weight: Option<&[f32]>,
) -> Result<(Vec<u32>, Vec<bool>, Vec<f32>)> {
    let mut idx = Vec::with_capacity(labels.len());
    let mut valid = Vec::with_capacity(labels.len());
    let mut pix_w = Vec::with_capacity(labels.len());
    for &l in labels {
        if l == ignore_index {
            idx.push(0);
            valid.push(false);
            pix_w.push(0.0);
        } else if l >= 0 && (l as u64) < c as u64 {
            idx.push(l as u32);
            valid.push(true);
            pix_w.push(class_weight.map_or(1.0, |w| w[l as usize]));
        } else {
            return Err(Error::InvalidArgument(format!(
                "target value {l} is neither a class in 0..{c} nor the ignore index {ignore_index}"
            )));
        }
    }
    Ok((idx, valid, pix_w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn rejects_bad_shapes_and_labels() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3, 4, 5), DType::F32, &dev)?;
        let t = Tensor::zeros((2, 4, 4), DType::U32, &dev)?;
        let e = CrossEntropyLoss::default().forward(&x, &t).unwrap_err();
        assert!(e.to_string().contains("[2, 4, 5]"), "{e}");
        let t = Tensor::full(7u32, (2, 4, 5), &dev)?;
        assert!(CrossEntropyLoss::default().forward(&x, &t).is_err());
        let t = Tensor::full(255u32, (2, 4, 5), &dev)?;
        // All ignored: 0 / (0 + eps) = 0 with the non-ignored mean.
        let l = CrossEntropyLoss::mean_non_ignored().forward(&x, &t)?;
        assert_eq!(l.to_scalar::<f32>()?, 0.0);
        let cfg = CrossEntropyLoss {
            class_weight: Some(vec![1.0, 2.0, 3.0]),
            ..CrossEntropyLoss::mmseg()
        };
        assert!(cfg.forward(&x, &t).is_err());
        Ok(())
    }

    #[test]
    fn pssl_weights() {
        let w = pssl_class_weight(1001, 1000, 0.1);
        assert_eq!(w.len(), 1001);
        assert_eq!(w[1000], 0.1);
        assert_eq!(w[0], 1.0);
        let c = CrossEntropyLoss::pssl();
        assert_eq!(c.ignore_index, 1001);
        assert!(c.avg_non_ignore);
    }
}
