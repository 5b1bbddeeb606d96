//! Explanations of a classifier's decision on candle's autograd, behind one [`Explainer`]
//! trait: [`SmoothGrad`] (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise")
//! as captum's `NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad")`, and
//! [`IntegratedGradients`] (Sundararajan et al. 2017) as captum's `IntegratedGradients` with
//! `method="riemann_trapezoid"`.
//!
//! An explainer maps a batch `B x C x H x W` (the classifier's normalised input) and one
//! target class per image to a per-element attribution of the same shape; [`reduce_channels`]
//! turns that into one score per pixel (`B x H x W`).
//!
//! # Shapes
//! - `x`: `B x C x H x W`; `targets`: `B` class ids; result `B x C x H x W`.

use candle_core::{Tensor, Var};

use super::noise::gaussian_noise;
use crate::{TrainError, TrainResult};

/// A differentiable classifier: normalised images `N x C x H x W` -> logits `N x K`.
pub type LogitsFn<'a> = &'a (dyn Fn(&Tensor) -> TrainResult<Tensor> + Sync);

/// Something that attributes a classifier's target logit to its input elements.
pub trait Explainer: Send + Sync {
    /// Attribution `B x C x H x W` of `targets[b]`'s logit to the elements of image `b` of `x`;
    /// `keys[b]` seeds whatever randomness the method draws for image `b` (so an image's
    /// explanation does not depend on the batch it was computed in).
    fn attribute(
        &self,
        f: LogitsFn<'_>,
        x: &Tensor,
        targets: &[usize],
        keys: &[String],
    ) -> TrainResult<Tensor>;

    /// A short name for logs (`smoothgrad`, `integrated_gradients`).
    fn name(&self) -> &'static str;
}

/// How a per-element attribution becomes one score per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ChannelReduce {
    /// Maximum over channels (Simonyan et al.'s saliency map). Default.
    #[default]
    Max,
    /// Sum over channels (captum's `visualize_image_attr`).
    Sum,
}

/// `B x C x H x W` -> `B x H x W` by `how`.
pub fn reduce_channels(attr: &Tensor, how: ChannelReduce) -> TrainResult<Tensor> {
    Ok(match how {
        ChannelReduce::Max => attr.max(1)?,
        ChannelReduce::Sum => attr.sum(1)?,
    })
}

/// Gradients of `sum_i logits[i, targets[i]]` with respect to the `N` inputs `xs` (each row's
/// gradient is its own target's: in inference mode the rows do not interact).
pub fn input_gradients(f: LogitsFn<'_>, xs: &Tensor, targets: &[usize]) -> TrainResult<Tensor> {
    let var = Var::from_tensor(&xs.detach())?;
    let logits = f(var.as_tensor())?;
    let (n, k) = logits.dims2()?;
    if n != targets.len() {
        return Err(bad(format!("{} targets for {n} inputs", targets.len())));
    }
    if let Some(t) = targets.iter().find(|t| **t >= k) {
        return Err(bad(format!(
            "target class {t} but the model has {k} classes"
        )));
    }
    let idx: Vec<u32> = targets.iter().map(|t| *t as u32).collect();
    let idx = Tensor::from_vec(idx, (n, 1), xs.device())?;
    let sel = logits.gather(&idx, 1)?.sum_all()?;
    let grads = sel.backward()?;
    grads
        .get(var.as_tensor())
        .cloned()
        .ok_or_else(|| bad("the model's logits do not depend on its input".into()))
}

fn bad(reason: String) -> TrainError {
    segkit_core::Error::InvalidConfig(format!("explanation: {reason}")).into()
}

/// The noise level of [`SmoothGrad`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum NoiseLevel {
    /// A standard deviation in input units (captum's `stdevs`).
    Absolute(f64),
    /// A fraction of each image's value range `max - min` (the SmoothGrad paper: 0.1-0.2).
    Fraction(f64),
}

/// SmoothGrad: the mean over `samples` noisy copies `x + sigma z` of the absolute input
/// gradient of the target logit (captum's `NoiseTunnel(Saliency(model))` with `abs=True`,
/// `nt_type="smoothgrad"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmoothGrad {
    /// Noisy copies per image (the paper's N; default 50, captum's `nt_samples`).
    pub samples: usize,
    /// Noise standard deviation.
    pub noise: NoiseLevel,
    /// Noisy copies per forward / backward pass (captum's `nt_samples_batch_size`, across
    /// images).
    pub batch: usize,
}

impl Default for SmoothGrad {
    fn default() -> Self {
        Self {
            samples: 50,
            noise: NoiseLevel::Fraction(0.15),
            batch: 16,
        }
    }
}

impl SmoothGrad {
    /// SmoothGrad with given unit normal draws `z` (`B * samples x C x H x W`, image-major as
    /// captum's `repeat_interleave`): copy `b * samples + s` is `x[b] + sigma_b z[..]`.
    pub fn attribute_with_noise(
        &self,
        f: LogitsFn<'_>,
        x: &Tensor,
        targets: &[usize],
        z: &Tensor,
    ) -> TrainResult<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = self.samples.max(1);
        if z.dims() != [b * n, c, h, w] || targets.len() != b {
            return Err(bad(format!(
                "noise {:?} / {} targets for input {:?} and {n} samples",
                z.dims(),
                targets.len(),
                x.dims()
            )));
        }
        let mut sigmas = Vec::with_capacity(b);
        for i in 0..b {
            sigmas.push(match self.noise {
                NoiseLevel::Absolute(s) => s,
                NoiseLevel::Fraction(fr) => {
                    let xi = x.get(i)?.flatten_all()?;
                    let range = xi.max(0)?.to_scalar::<f32>()? - xi.min(0)?.to_scalar::<f32>()?;
                    fr * range as f64
                }
            });
        }
        let total = b * n;
        let step = self.batch.max(1);
        let mut sums: Vec<Option<Tensor>> = vec![None; b];
        let mut start = 0;
        while start < total {
            let len = step.min(total - start);
            let mut rows = Vec::with_capacity(len);
            let mut tg = Vec::with_capacity(len);
            for j in start..start + len {
                let img = j / n;
                let noisy = (x.get(img)? + (z.get(j)? * sigmas[img])?)?;
                rows.push(noisy);
                tg.push(targets[img]);
            }
            let g = input_gradients(f, &Tensor::stack(&rows, 0)?, &tg)?.abs()?;
            for (r, j) in (start..start + len).enumerate() {
                let img = j / n;
                let gi = g.get(r)?;
                sums[img] = Some(match sums[img].take() {
                    None => gi,
                    Some(s) => (s + gi)?,
                });
            }
            start += len;
        }
        let per: Vec<Tensor> = sums
            .into_iter()
            .map(|s| {
                s.ok_or_else(|| bad("no samples".into()))?
                    .affine(1.0 / n as f64, 0.0)
                    .map_err(Into::into)
            })
            .collect::<TrainResult<_>>()?;
        Ok(Tensor::stack(&per, 0)?)
    }
}

impl Explainer for SmoothGrad {
    fn attribute(
        &self,
        f: LogitsFn<'_>,
        x: &Tensor,
        targets: &[usize],
        keys: &[String],
    ) -> TrainResult<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if keys.len() != b {
            return Err(bad(format!("{} noise keys for {b} images", keys.len())));
        }
        let n = self.samples.max(1);
        let z = keys
            .iter()
            .map(|k| gaussian_noise(k, &[n, c, h, w], x.device()))
            .collect::<TrainResult<Vec<_>>>()?;
        self.attribute_with_noise(f, x, targets, &Tensor::cat(&z, 0)?)
    }

    fn name(&self) -> &'static str {
        "smoothgrad"
    }
}

/// Integrated gradients from a zero baseline (signed, as captum's `IntegratedGradients` with
/// `method="riemann_trapezoid"`): `x * sum_k w_k grad(alpha_k x)` at captum's points and
/// weights, `alpha_k = k / (steps - 1)` and `w_k = 1 / steps`, the two end points' halved.
/// captum's weights sum to `(steps - 1) / steps`, not 1 (its trapezoid divides by the number
/// of points rather than of intervals), so the attributions sum to `(steps - 1) / steps` of
/// `logit(x) - logit(0)`; segkit keeps captum's numbers (`tests/tests/pssl_parity.rs`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IntegratedGradients {
    /// Integration points (captum's `n_steps`; default 50).
    pub steps: usize,
}

impl Explainer for IntegratedGradients {
    fn attribute(
        &self,
        f: LogitsFn<'_>,
        x: &Tensor,
        targets: &[usize],
        _keys: &[String],
    ) -> TrainResult<Tensor> {
        let n = self.steps.max(2);
        let mut acc: Option<Tensor> = None;
        for k in 0..n {
            let alpha = k as f64 / (n - 1) as f64;
            let wgt = if k == 0 || k == n - 1 { 0.5 } else { 1.0 } / n as f64;
            let g = (input_gradients(f, &(x * alpha)?, targets)? * wgt)?;
            acc = Some(match acc {
                None => g,
                Some(a) => (a + g)?,
            });
        }
        let acc = acc.ok_or_else(|| bad("no steps".into()))?;
        Ok((acc * x)?)
    }

    fn name(&self) -> &'static str {
        "integrated_gradients"
    }
}
