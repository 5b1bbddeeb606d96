//! The attention blocks OneFormer's transformer parts share: `torch.nn.MultiheadAttention`
//! (packed input projection) and scaled dot-product attention over batch-first projections.
//!
//! Reference: PyTorch `torch/nn/modules/activation.py` (`MultiheadAttention`,
//! `in_proj_weight` / `in_proj_bias` / `out_proj`), as transformers'
//! `models/oneformer/modeling_oneformer.py` uses it in the query transformer, the masked
//! cross-attention and the text encoder.
//!
//! # Shapes
//! `query: B x Lq x C`, `key, value: B x Lk x C` -> `B x Lq x C`; an additive mask broadcasts
//! to `B x heads x Lq x Lk`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_oneformer::attention::MultiheadAttention;
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let attn = MultiheadAttention::new(32, 4, 0.0, vb).unwrap();
//! let q = Tensor::zeros((2, 5, 32), DType::F32, &Device::Cpu).unwrap();
//! let kv = Tensor::zeros((2, 7, 32), DType::F32, &Device::Cpu).unwrap();
//! assert_eq!(attn.forward(&q, &kv, &kv, None, false).unwrap().dims(), &[2, 5, 32]);
//! ```

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

use crate::{Error, Result};

/// Inverted dropout with probability `p` when `train` (`torch.nn.functional.dropout`: an
/// element is zeroed when its uniform draw is below `p`, the rest scaled by `1 / (1 - p)`);
/// identity otherwise. The draws come from [`segkit_core::random::uniform`]: the thread's
/// seeded stream when a trainer installed one (reproducible, exact resume), else candle's
/// generator.
pub(crate) fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        let keep = segkit_core::random::uniform(x.dims(), x.device())?
            .ge(p)?
            .to_dtype(x.dtype())?;
        Ok(((x * keep)? * (1.0 / (1.0 - p)))?)
    } else {
        Ok(x.clone())
    }
}

/// `l` applied to `x` through [`segkit_core::ops::linear`] (no zero-filled output; with
/// gradients one op whose weight gradient is one GEMM over every row).
pub(crate) fn linear(l: &Linear, x: &Tensor) -> Result<Tensor> {
    segkit_core::ops::linear(x, l.weight(), l.bias())
}

/// Scaled dot-product attention over batch-first projections.
/// `q: B x Lq x C`, `k, v: B x Lk x C`, `mask`: additive, broadcastable to `B x heads x Lq x Lk`.
///
/// One fused op ([`segkit_core::ops::attention`]: the graph keeps `q`, `k`, `v` and the output,
/// not the `B x heads x Lq x Lk` scores and probabilities); dropout on the probabilities, when
/// training, is its multiplier drawn from [`segkit_core::random::uniform`] as [`dropout`] draws.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    attn_dropout: f64,
    train: bool,
) -> Result<Tensor> {
    let (b, lq, _) = q.dims3()?;
    let lk = k.dim(1)?;
    let keep = if train && attn_dropout > 0.0 {
        let u = segkit_core::random::uniform(&[b, heads, lq, lk], q.device())?;
        Some((u.ge(attn_dropout)?.to_dtype(q.dtype())? * (1.0 / (1.0 - attn_dropout)))?)
    } else {
        None
    };
    let opts = segkit_core::ops::AttentionOptions {
        mask,
        keep: keep.as_ref(),
        scale: None,
    };
    segkit_core::ops::attention(q, k, v, heads, opts)
}

/// `torch.nn.MultiheadAttention` (packed `in_proj_weight` / `in_proj_bias`, `out_proj`).
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    out: Linear,
    heads: usize,
    dropout: f64,
}

impl MultiheadAttention {
    /// Loads `in_proj_weight` (`3C x C`), `in_proj_bias`, `out_proj.{weight,bias}`.
    pub fn new(dim: usize, heads: usize, dropout: f64, vb: VarBuilder<'_>) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::InvalidConfig(format!(
                "multi-head attention: width {dim} is not divisible into {heads} heads"
            )));
        }
        let w = vb.get((3 * dim, dim), "in_proj_weight")?;
        let b = vb.get(3 * dim, "in_proj_bias")?;
        let part = |i: usize| -> Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, i * dim, dim)?.contiguous()?,
                Some(b.narrow(0, i * dim, dim)?.contiguous()?),
            ))
        };
        Ok(Self {
            wq: part(0)?,
            wk: part(1)?,
            wv: part(2)?,
            out: candle_nn::linear(dim, dim, vb.pp("out_proj"))?,
            heads,
            dropout,
        })
    }

    /// Batch-first attention: `query: B x Lq x C`, `key, value: B x Lk x C`; `mask` additive
    /// (`-inf` where attention is not allowed), broadcastable to `B x heads x Lq x Lk`.
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let q = linear(&self.wq, query)?;
        let k = linear(&self.wk, key)?;
        let v = linear(&self.wv, value)?;
        let o = attend(&q, &k, &v, self.heads, mask, self.dropout, train)?;
        linear(&self.out, &o)
    }
}

#[cfg(test)]
mod tests {
    use super::dropout;
    use candle_core::{Device, Tensor};

    /// Seeded dropout: the same stream state gives the same mask, about `p` of the values
    /// are zeroed, the rest scaled by `1 / (1 - p)`; evaluation is the identity.
    #[test]
    fn dropout_draws_from_the_seeded_stream() {
        let x = Tensor::ones((64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let run = |state| {
            segkit_core::random::set_thread_state(Some(state));
            let y = dropout(&x, 0.25, true).unwrap();
            segkit_core::random::set_thread_state(None);
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (a, b, c) = (run(5), run(5), run(6));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((zeros - 0.25).abs() < 0.03, "{zeros}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let e = dropout(&x, 0.25, false).unwrap();
        assert_eq!(e.sum_all().unwrap().to_scalar::<f32>().unwrap(), 4096.0);
    }
}
