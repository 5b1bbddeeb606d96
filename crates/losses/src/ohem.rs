//! Online hard example mining for segmentation, as mmseg's `OHEMPixelSampler` feeding the
//! decode head's `CrossEntropyLoss`.
//!
//! Reference: mmseg 1.2.2 `mmseg/structures/sampler/ohem_pixel_sampler.py`
//! (`OHEMPixelSampler.sample`) and `BaseDecodeHead.loss_by_feat`, which passes the sampler's
//! per-pixel weight as the loss's `weight`.
//!
//! The weights are computed without gradient. With a threshold (`thresh = 0.7` in mmseg's
//! configs), the softmax probability of the target class is taken for every non-ignored pixel;
//! sorted ascending, `t = max(sorted[min(min_kept * N, n_valid - 1)], thresh)`, and a pixel is
//! kept (weight 1) when its probability is `< t`. Note that when `min_kept * N >= n_valid`
//! (always, with the default `min_kept = 100000` on small crops) `t` is the largest
//! probability, so every pixel but the most confident one(s) is kept. Without a threshold, the
//! `min_kept * N` non-ignored pixels of largest loss are kept (ties in the order of a stable
//! sort; PyTorch's unstable sort may break exact ties differently).
//!
//! The loss is then mmseg's cross-entropy with this sample weight; the averaging factor is
//! unchanged (all pixels, or all non-ignored pixels with `avg_non_ignore`).
//!
//! # Shapes
//! `logits`: `N x C x H x W` (any `N x C x ..`), `target`: `N x H x W` integer;
//! [`OhemPixelSampler::sample`] returns the `N x H x W` weight; the loss is a scalar.
//!
//! # Example
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_losses::OhemCrossEntropyLoss;
//!
//! let logits = Tensor::randn(0f32, 1.0, (1, 4, 6, 6), &Device::Cpu)?;
//! let target = Tensor::zeros((1, 6, 6), DType::U32, &Device::Cpu)?;
//! let loss = OhemCrossEntropyLoss::default().forward(&logits, &target)?;
//! assert_eq!(loss.dims(), &[] as &[usize]);
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::cross_entropy::{ce_indices, CrossEntropyLoss};
use crate::util::{check_float, from_f32, labels_i64, shape_err, softmax, to_vec_f32};
use crate::{Error, Result};

/// mmseg's `OHEMPixelSampler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OhemPixelSampler {
    /// Probability threshold: pixels whose target-class probability is below it are hard
    /// examples (mmseg configs: 0.7). `None` keeps the `min_kept` pixels of largest loss.
    pub thresh: Option<f32>,
    /// Minimum number of kept pixels per image (mmseg: 100000).
    pub min_kept: usize,
    /// The decode head's ignore index (255).
    pub ignore_index: i64,
}

impl Default for OhemPixelSampler {
    fn default() -> Self {
        Self {
            thresh: Some(0.7),
            min_kept: 100_000,
            ignore_index: 255,
        }
    }
}

impl OhemPixelSampler {
    /// The per-pixel weight (1 for kept pixels, 0 otherwise), without gradient.
    ///
    /// Without a threshold the ranking uses `loss.per_element`, as mmseg ranks by the decode
    /// head's own loss (class weights and loss weight included).
    pub fn sample(
        &self,
        logits: &Tensor,
        target: &Tensor,
        loss: &CrossEntropyLoss,
    ) -> Result<Tensor> {
        check_float("logits", logits)?;
        if self.min_kept <= 1 {
            return Err(Error::InvalidArgument(format!(
                "OHEM min_kept must be > 1, got {}",
                self.min_kept
            )));
        }
        let ld = logits.dims();
        if ld.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "OHEM logits must be N x C x ..., got shape {ld:?}"
            )));
        }
        let mut expected = vec![ld[0]];
        expected.extend_from_slice(&ld[2..]);
        if target.dims() != expected.as_slice() {
            return Err(shape_err("target", &expected, target.dims()));
        }
        let logits = logits.detach();
        let labels = labels_i64("target", target)?;
        let batch_kept = self.min_kept.saturating_mul(ld[0]);
        let valid: Vec<bool> = labels.iter().map(|&l| l != self.ignore_index).collect();
        let mut weight = vec![0f32; labels.len()];
        match self.thresh {
            Some(thresh) => {
                // Probability of the target class (class 0 for ignored pixels, unused).
                let (idx, _, _) = ce_indices(&labels, ld[1], self.ignore_index, None)?;
                let prob = softmax(&logits, 1)?;
                let mut ishape = ld.to_vec();
                ishape[1] = 1;
                let idx_t = crate::util::index_tensor(idx, &ishape, logits.device())?;
                let p = to_vec_f32(&prob.contiguous()?.gather(&idx_t, 1)?)?;
                let mut sorted: Vec<f32> = p
                    .iter()
                    .zip(&valid)
                    .filter(|(_, &v)| v)
                    .map(|(&x, _)| x)
                    .collect();
                sorted.sort_by(f32::total_cmp);
                let min_threshold = if sorted.is_empty() {
                    0.0
                } else {
                    sorted[batch_kept.min(sorted.len() - 1)]
                };
                // Python's `max(min_threshold, thresh)`: `thresh` wins only if strictly larger.
                let t = if thresh > min_threshold {
                    thresh
                } else {
                    min_threshold
                };
                for ((w, &x), &v) in weight.iter_mut().zip(&p).zip(&valid) {
                    if v && x < t {
                        *w = 1.0;
                    }
                }
            }
            None => {
                let l = to_vec_f32(&loss.per_element(&logits, target)?)?;
                let mut order: Vec<usize> = (0..l.len()).filter(|&i| valid[i]).collect();
                order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
                for &i in order.iter().take(batch_kept) {
                    weight[i] = 1.0;
                }
            }
        }
        from_f32(weight, &expected, logits.dtype(), logits.device())
    }
}

/// mmseg's decode-head loss with an OHEM sampler: [`CrossEntropyLoss`] weighted by
/// [`OhemPixelSampler::sample`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OhemCrossEntropyLoss {
    /// The pixel sampler (`thresh = 0.7`, `min_kept = 100000`).
    pub sampler: OhemPixelSampler,
    /// The cross-entropy applied to the kept pixels (mmseg default: mean over all pixels).
    pub loss: CrossEntropyLoss,
}

impl OhemCrossEntropyLoss {
    /// The loss, a scalar tensor.
    pub fn forward(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        if self.sampler.ignore_index != self.loss.ignore_index {
            return Err(Error::InvalidArgument(format!(
                "OHEM sampler ignore index {} differs from the loss's {}",
                self.sampler.ignore_index, self.loss.ignore_index
            )));
        }
        let w = self.sampler.sample(logits, target, &self.loss)?;
        self.loss.forward_weighted(logits, target, Some(&w))
    }
}
