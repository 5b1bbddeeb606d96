//! Layer normalisation: [`LayerNorm`] over the last dimension, [`LayerNorm2d`] over the
//! channels of an NCHW map, and the sine position embedding of DETR-style decoders.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// LayerNorm over the channel dimension of an NCHW map (as in ConvNeXt / Mask2Former).
///
/// # Shapes
/// `N x C x H x W` -> same.
#[derive(Debug)]
pub struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm2d {
    /// Loads `weight` and `bias` of length `channels` (initially 1 and 0).
    pub fn new(channels: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", crate::init::ONE)?,
            bias: vb.get_with_hints(channels, "bias", crate::init::ZERO)?,
            eps,
        })
    }

    /// Normalises each pixel's channel vector.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.elem_count();
        let mean = x.mean_keepdim(1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let y = y.broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?;
        Ok(y.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?)
    }
}

/// HF's `OneFormerSinePositionEmbedding` (normalize = true, scale 2 pi, temperature 10000)
/// for an unmasked `h x w` map, flattened: `(h w) x (2 feats)`, y features first, each half
/// interleaving sin (even) and cos (odd). Computed in f32 as PyTorch does.
///
/// Used by the deformable-attention pixel decoder and OneFormer's transformer decoder.
pub fn sine_position_embedding(
    h: usize,
    w: usize,
    feats: usize,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let scale = (2.0 * std::f64::consts::PI) as f32;
    let eps = 1e-6f32;
    let dim_t: Vec<f32> = (0..feats)
        .map(|k| {
            let e = (2 * (k / 2)) as f32 / feats as f32;
            10000f32.powf(e)
        })
        .collect();
    let ye: Vec<f32> = (1..=h)
        .map(|i| i as f32 / (h as f32 + eps) * scale)
        .collect();
    let xe: Vec<f32> = (1..=w)
        .map(|j| j as f32 / (w as f32 + eps) * scale)
        .collect();
    let enc = |v: f32, k: usize| {
        let a = v / dim_t[k];
        if k.is_multiple_of(2) {
            a.sin()
        } else {
            a.cos()
        }
    };
    // Each half of a row depends on the row (y) or the column (x) only: the h + w encodings
    // are computed once and copied (the same values as evaluating each element).
    let table = |e: &[f32]| -> Vec<f32> {
        e.iter()
            .flat_map(|&v| (0..feats).map(move |k| enc(v, k)))
            .collect()
    };
    let (yt, xt) = (table(&ye), table(&xe));
    let mut out = Vec::with_capacity(h * w * 2 * feats);
    for yr in yt.chunks_exact(feats.max(1)).take(h) {
        for xr in xt.chunks_exact(feats.max(1)).take(w) {
            out.extend_from_slice(yr);
            out.extend_from_slice(xr);
        }
    }
    Tensor::from_vec(out, (h * w, 2 * feats), dev)
}

/// `torch.nn.LayerNorm` over the last dimension (`weight`, `bias`), computed in two passes.
///
/// candle's fused `layer_norm` takes the variance as `E[x^2] - E[x]^2` in f32, which loses
/// every significant digit when the mean is large against the spread (OneFormer's task token
/// is a linear map of raw token ids, with values around 1e4). This kernel takes the mean and
/// then the mean squared deviation, in f32 as PyTorch does, one row per rayon task. When the input or the
/// weights record gradients (`Tensor::track_op`), or off the CPU, or for other dtypes, it runs
/// as composed (differentiable) tensor ops with the same two-pass formula.
///
/// # Shapes
/// `... x d` -> `... x d`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of length `size` (initially 1 and 0).
    pub fn new(size: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", crate::init::ONE)?,
            bias: vb.get_with_hints(size, "bias", crate::init::ZERO)?,
            eps,
        })
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.weight.elem_count();
        if x.dim(candle_core::D::Minus1)? != d {
            return Err(Error::shape("LayerNorm input (last dim)", &[d], x.dims()));
        }
        let tracked = x.track_op() || self.weight.track_op() || self.bias.track_op();
        if !tracked && x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.forward_cpu(x);
        }
        if tracked {
            // One differentiable op on CPU f32 (the graph keeps input and output only).
            if let Some(y) =
                crate::ops::layer_norm_train(x, &self.weight, &self.bias, self.eps as f32)?
            {
                return Ok(y);
            }
        }
        let mean = x.mean_keepdim(candle_core::D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(&self.weight.to_dtype(x.dtype())?)?
            .broadcast_add(&self.bias.to_dtype(x.dtype())?)?)
    }

    /// `x + fc2(act(fc1(norm(x))))`: a pre-norm transformer block's feed-forward sub-layer
    /// (Swin's and ViT's MLP with its residual), `fc1 = (weight hidden x d, bias)`,
    /// `fc2 = (weight d x hidden, bias)`.
    ///
    /// On CPU f32 tensors that record no gradients it runs in blocks of rows, so the hidden
    /// activations never exist at full size (see `ops/mlp.rs`); the values are those of
    /// [`LayerNorm::forward`], [`crate::ops::linear_act`] and [`crate::ops::linear_residual`]
    /// in turn, which is what runs otherwise.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use segkit_core::nn::LayerNorm;
    /// use segkit_core::ops::Activation;
    /// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    /// let norm = LayerNorm::new(4, 1e-5, vb)?;
    /// let x = Tensor::arange(0f32, 24.0, &Device::Cpu)?.reshape((2, 3, 4))?;
    /// let (w1, w2) = (Tensor::ones((8, 4), DType::F32, &Device::Cpu)?, Tensor::ones((4, 8), DType::F32, &Device::Cpu)?);
    /// let y = norm.forward_feed_forward(&x, (&w1, None), Activation::Gelu, (&w2, None))?;
    /// // A zero norm weight and bias zero the branch: only the residual is left.
    /// assert_eq!(y.to_vec3::<f32>()?, x.to_vec3::<f32>()?);
    /// # Ok::<(), segkit_core::Error>(())
    /// ```
    ///
    /// Errors if `x`'s last dimension is not the norm's size or a weight's shape does not fit.
    pub fn forward_feed_forward(
        &self,
        x: &Tensor,
        (w1, b1): (&Tensor, Option<&Tensor>),
        act: crate::ops::Activation,
        (w2, b2): (&Tensor, Option<&Tensor>),
    ) -> Result<Tensor> {
        let d = self.weight.elem_count();
        if x.dim(candle_core::D::Minus1)? != d {
            return Err(Error::shape("LayerNorm input (last dim)", &[d], x.dims()));
        }
        let hidden = w1.dim(0)?;
        if w1.dims() != [hidden, d] {
            return Err(Error::shape(
                "feed-forward fc1 weight",
                &[hidden, d],
                w1.dims(),
            ));
        }
        if w2.dims() != [d, hidden] {
            return Err(Error::shape(
                "feed-forward fc2 weight",
                &[d, hidden],
                w2.dims(),
            ));
        }
        for (name, b, len) in [("fc1", b1, hidden), ("fc2", b2, d)] {
            if let Some(b) = b {
                if b.dims() != [len] {
                    return Err(Error::shape(
                        format!("feed-forward {name} bias"),
                        &[len],
                        b.dims(),
                    ));
                }
            }
        }
        let all = [
            Some(x),
            Some(w1),
            b1,
            Some(w2),
            b2,
            Some(&self.weight),
            Some(&self.bias),
        ];
        // Empty rows or an empty hidden map take the composed ops (the blocked kernels need
        // both widths >= 1).
        let fast = d > 0
            && hidden > 0
            && act != crate::ops::Activation::Sigmoid
            && all
                .iter()
                .flatten()
                .all(|t| !t.track_op() && t.device().is_cpu() && t.dtype() == DType::F32);
        if !fast {
            let y = self.forward(x)?;
            let y = crate::ops::linear_act(&y, w1, b1, act)?;
            return crate::ops::linear_residual(&y, w2, b2, x);
        }
        let vec = |t: Option<&Tensor>| t.map(|t| t.flatten_all()?.to_vec1::<f32>()).transpose();
        let (nw, nb) = (self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?);
        let (b1, b2) = (vec(b1)?, vec(b2)?);
        let out = crate::ops::with_cpu_f32(x, |xs| {
            crate::ops::with_cpu_f32(w1, |w1| {
                crate::ops::with_cpu_f32(w2, |w2| {
                    let ff = crate::ops::FeedForward {
                        w1,
                        b1: b1.as_deref(),
                        act,
                        w2,
                        b2: b2.as_deref(),
                        hidden,
                    };
                    Ok(crate::ops::norm_feed_forward_rows(
                        xs,
                        (&nw, &nb, self.eps as f32),
                        &ff,
                    ))
                })
            })
        })?;
        Ok(Tensor::from_vec(out, x.dims(), x.device())?)
    }

    fn forward_cpu(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let b = self.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let eps = self.eps as f32;
        let out =
            crate::ops::with_cpu_f32(x, |xv| Ok(crate::ops::layer_norm_rows(xv, &w, &b, eps)))?;
        Ok(Tensor::from_vec(out, x.dims(), x.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked CPU path against candle's ops (LayerNorm, matmuls, erf GELU, adds) on 700
    /// rows whose 4096-wide hidden map takes three blocks (256, 256, 188 rows), with and
    /// without biases; and the error for a misshapen weight.
    #[test]
    fn feed_forward_matches_candles_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (d, hidden) = (24, 4096);
        let vm = candle_nn::VarMap::new();
        let norm = LayerNorm::new(d, 1e-5, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        for v in vm.all_vars() {
            v.set(&(Tensor::randn(0f32, 0.5, v.shape(), &dev)? + 1.0)?)?;
        }
        let x = Tensor::randn(0f32, 1.0, (2, 350, d), &dev)?;
        let w1 = (Tensor::randn(0f32, 1.0, (hidden, d), &dev)? * 0.2)?;
        let b1 = Tensor::randn(0f32, 1.0, hidden, &dev)?;
        let w2 = (Tensor::randn(0f32, 1.0, (d, hidden), &dev)? * 0.02)?;
        let b2 = Tensor::randn(0f32, 1.0, d, &dev)?;
        for biases in [true, false] {
            let (b1, b2) = if biases {
                (Some(&b1), Some(&b2))
            } else {
                (None, None)
            };
            let got =
                norm.forward_feed_forward(&x, (&w1, b1), crate::ops::Activation::Gelu, (&w2, b2))?;
            let (nw, nb) = (norm.weight.detach(), norm.bias.detach());
            let y = candle_nn::ops::layer_norm(&x, &nw, &nb, 1e-5)?;
            let mut h = y.broadcast_matmul(&w1.t()?)?;
            if let Some(b) = b1 {
                h = h.broadcast_add(b)?;
            }
            let mut o = h.gelu_erf()?.broadcast_matmul(&w2.t()?)?;
            if let Some(b) = b2 {
                o = o.broadcast_add(b)?;
            }
            let want = (o + &x)?;
            let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff <= 2e-5 * scale.max(1.0),
                "biases {biases}: {diff} of {scale}"
            );
        }
        // Zero-width rows: no panic (the blocked kernels need both widths >= 1); the composed
        // ops give an empty result of the input's shape or a typed error.
        let empty = LayerNorm::new(0, 1e-5, VarBuilder::zeros(DType::F32, &dev))?;
        let z = Tensor::zeros((3, 0), DType::F32, &dev)?;
        let (w1z, w2z) = (
            Tensor::zeros((5, 0), DType::F32, &dev)?,
            Tensor::zeros((0, 5), DType::F32, &dev)?,
        );
        let r = empty.forward_feed_forward(
            &z,
            (&w1z, None),
            crate::ops::Activation::Gelu,
            (&w2z, None),
        );
        match r {
            Ok(y) => assert_eq!(y.dims(), [3, 0]),
            Err(e) => assert!(matches!(e, crate::Error::Candle(_)), "{e}"),
        }
        let bad = Tensor::zeros((hidden, d + 1), DType::F32, &dev)?;
        let err =
            norm.forward_feed_forward(&x, (&bad, None), crate::ops::Activation::Gelu, (&w2, None));
        assert!(err.is_err());
        Ok(())
    }

    /// Every element equals DETR's formula evaluated at that element (the y encoding in the
    /// first `feats` channels, the x encoding in the rest; sin on even channels, cos on odd).
    #[test]
    fn sine_position_embedding_matches_the_formula() -> candle_core::Result<()> {
        let (h, w, feats) = (5, 3, 6);
        let got = sine_position_embedding(h, w, feats, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!((got.len(), got[0].len()), (h * w, 2 * feats));
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        for (p, row) in got.iter().enumerate() {
            let (y, x) = ((p / w + 1) as f32, (p % w + 1) as f32);
            for (k, &v) in row.iter().enumerate() {
                let (pos, kk) = if k < feats {
                    (y / (h as f32 + 1e-6) * two_pi, k)
                } else {
                    (x / (w as f32 + 1e-6) * two_pi, k - feats)
                };
                let a = pos / 10000f32.powf((2 * (kk / 2)) as f32 / feats as f32);
                let want = if kk % 2 == 0 { a.sin() } else { a.cos() };
                assert_eq!(v, want, "position {p}, channel {k}");
            }
        }
        Ok(())
    }
}
