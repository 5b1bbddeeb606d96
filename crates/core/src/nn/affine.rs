//! [`ConvNormAct`]'s inference BatchNorm as a per-channel scale and shift that segkit's CPU
//! convolution kernels apply while packing the weights (no folded weight copy in memory).

use std::borrow::Cow;

use candle_core::{DType, Tensor};

use super::{ConvNormAct, NormLayer};
use crate::Result;

/// Per-output-channel `(scale, shift)`.
type Affine = (Vec<f64>, Vec<f32>);

impl ConvNormAct {
    /// An inference BatchNorm as `scale = gamma / sqrt(var + eps)` (f64) and f32
    /// `shift = (bias - mean) * scale + beta` per output channel, computed in f64 (cached unless
    /// the weights are variables that training may still change).
    pub(super) fn affine(&self) -> Result<Option<Cow<'_, Affine>>> {
        if let Some(a) = self.affine.get() {
            return Ok(Some(Cow::Borrowed(a)));
        }
        let Some(NormLayer::Batch {
            weight,
            bias,
            mean,
            var,
            eps,
            ..
        }) = &self.norm
        else {
            return Ok(None);
        };
        let f64s = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.to_vec1()?) };
        let (gamma, beta, mean_v, var_v) = (f64s(weight)?, f64s(bias)?, f64s(mean)?, f64s(var)?);
        let b0 = match &self.bias {
            Some(b) => f64s(b)?,
            None => vec![0.0; gamma.len()],
        };
        // Exactly the values of the folded weights and bias (`ConvNormAct::fold`): the
        // kernels round `w * scale` from f64 once per weight, as the fold does.
        let scale: Vec<f64> = gamma
            .iter()
            .zip(&var_v)
            .map(|(g, v)| g / (v + eps).sqrt())
            .collect();
        let shift: Vec<f32> = (0..scale.len())
            .map(|i| ((b0[i] - mean_v[i]) * scale[i] + beta[i]) as f32)
            .collect();
        let a = (scale, shift);
        if self.weight.is_variable() || weight.is_variable() {
            return Ok(Some(Cow::Owned(a)));
        }
        Ok(Some(Cow::Borrowed(self.affine.get_or_init(|| a))))
    }
}
