//! OneFormer's query-text contrastive loss.
//!
//! Reference: transformers 5.x `models/oneformer/modeling_oneformer.py`,
//! `OneFormerLoss.loss_contrastive` (OneFormer, Jain et al., CVPR 2023, Sec. 3.3): both query
//! sets are flattened per image and L2-normalised (`F.normalize`, eps 1e-12),
//! `logits_per_text = text @ image^T * min(exp(logit_scale), 100)`, and the loss is
//! `CE(logits_per_image, arange(B)) + CE(logits_per_text, arange(B))` (mean reductions).
//! `logit_scale` is a learnable scalar initialised to `ln(1 / 0.07)`; pass it as a
//! [`candle_core::Var`] to train it (its gradient vanishes above the clamp, as PyTorch's).
//!
//! # Shapes
//! `image_queries`, `text_queries`: `B x ..` (e.g. `B x Q x D`), flattened to `B x F`;
//! `logit_scale`: a scalar (rank 0 or one element). Output: a scalar.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use segkit_losses::query_text_contrastive_loss;
//!
//! let dev = Device::Cpu;
//! let img = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev)?;
//! let txt = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev)?;
//! let scale = Tensor::new((1f32 / 0.07).ln(), &dev)?;
//! let loss = query_text_contrastive_loss(&img, &txt, &scale)?;
//! assert!(loss.to_scalar::<f32>()? > 0.0);
//! # Ok::<(), segkit_losses::Error>(())
//! ```

use candle_core::Tensor;

use crate::util::{check_float, log_softmax, scalar, shape_err};
use crate::Result;

/// `F.normalize(x, dim=-1)` for a `B x F` tensor: `x / max(||x||, 1e-12)`.
fn normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
    let eps = norm.ones_like()?.affine(1e-12, 0.0)?;
    let denom = norm.ge(1e-12)?.where_cond(&norm, &eps)?;
    Ok(x.broadcast_div(&denom)?)
}

/// `F.cross_entropy(logits, arange(B))` for a `B x B` matrix.
fn diag_ce(logits: &Tensor) -> Result<Tensor> {
    let b = logits.dim(0)?;
    let lp = log_softmax(logits, 1)?;
    let idx = Tensor::arange(0u32, b as u32, logits.device())?.reshape((b, 1))?;
    let picked = lp.contiguous()?.gather(&idx, 1)?;
    let n = scalar(b as f64, logits.dtype(), logits.device())?;
    Ok(picked.sum_all()?.neg()?.div(&n)?)
}

/// The query-text contrastive loss (see the module docs).
pub fn query_text_contrastive_loss(
    image_queries: &Tensor,
    text_queries: &Tensor,
    logit_scale: &Tensor,
) -> Result<Tensor> {
    check_float("image queries", image_queries)?;
    check_float("text queries", text_queries)?;
    if image_queries.dims() != text_queries.dims() || image_queries.rank() < 1 {
        return Err(shape_err(
            "text queries",
            image_queries.dims(),
            text_queries.dims(),
        ));
    }
    if logit_scale.elem_count() != 1 {
        return Err(shape_err("logit_scale", &[], logit_scale.dims()));
    }
    let b = image_queries.dim(0)?;
    let img = normalize(&image_queries.reshape((b, ()))?)?;
    let txt = normalize(&text_queries.to_dtype(img.dtype())?.reshape((b, ()))?)?;
    let s = logit_scale.reshape(())?.to_dtype(img.dtype())?.exp()?;
    let cap = s.ones_like()?.affine(100.0, 0.0)?;
    let s = s.le(100.0)?.where_cond(&s, &cap)?;
    let logits_per_text = txt.matmul(&img.t()?)?.broadcast_mul(&s)?;
    let logits_per_img = logits_per_text.t()?;
    Ok((diag_ce(&logits_per_img)? + diag_ce(&logits_per_text)?)?)
}
