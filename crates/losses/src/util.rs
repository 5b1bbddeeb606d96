//! Differentiable building blocks shared by the losses, each written so that candle's
//! backward pass gives the same gradient as PyTorch's (including at the kinks).

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// [`segkit_core::Error::ShapeMismatch`] wrapped in this crate's error.
pub(crate) fn shape_err(what: &str, expected: &[usize], got: &[usize]) -> Error {
    segkit_core::Error::shape(what, expected, got)
}

/// Errors unless `t` is a floating-point tensor.
pub(crate) fn check_float(what: &str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "`{what}` must be a floating-point tensor, got {:?}",
            t.dtype()
        )))
    }
}

/// The values of an integer label tensor (`u8`, `u32` or `i64`), row-major.
pub(crate) fn labels_i64(what: &str, t: &Tensor) -> Result<Vec<i64>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::U8 => flat.to_vec1::<u8>()?.into_iter().map(i64::from).collect(),
        DType::U32 => flat.to_vec1::<u32>()?.into_iter().map(i64::from).collect(),
        DType::I64 => flat.to_vec1::<i64>()?,
        dt => {
            return Err(Error::InvalidArgument(format!(
                "`{what}` must be an integer tensor (u8, u32 or i64), got {dt:?}"
            )))
        }
    })
}

/// The values of a float tensor as `f32`, row-major.
pub(crate) fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.detach()
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?)
}

/// A tensor of `shape` from `f32` host values, converted to `dtype` on `device`.
pub(crate) fn from_f32(v: Vec<f32>, shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?)
}

/// A `u32` index tensor of `shape` on `device`.
pub(crate) fn index_tensor(v: Vec<u32>, shape: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// `log_softmax(x, dim)`; the max shift is a constant (it cancels analytically), so the
/// gradient is exactly `grad - softmax * sum(grad)`, as PyTorch's.
pub(crate) fn log_softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let diff = x.broadcast_sub(&max)?;
    let lse = diff.exp()?.sum_keepdim(dim)?.log()?;
    Ok(diff.broadcast_sub(&lse)?)
}

/// `softmax(x, dim)` with a constant max shift.
pub(crate) fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(dim)?;
    Ok(e.broadcast_div(&s)?)
}

/// `|x|` whose derivative is `sign(x)` (0 at 0), as PyTorch's `abs`; candle's `abs` has
/// derivative 1 at 0.
pub(crate) fn abs_torch(x: &Tensor) -> Result<Tensor> {
    Ok(x.mul(&x.sign()?.detach())?)
}

/// `log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|))`, with PyTorch's derivative
/// `1 - sigmoid(x)` everywhere (0.5 at 0).
pub(crate) fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let m = x.minimum(0f64)?;
    let sp = (abs_torch(x)?.neg()?.exp()? + 1.0)?.log()?;
    Ok((m - sp)?)
}

/// Element-wise `F.binary_cross_entropy_with_logits(x, y, reduction='none')`:
/// `(1 - y) * x - log_sigmoid(x)`, PyTorch's formula; derivative `sigmoid(x) - y`.
pub(crate) fn bce_with_logits(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let one_minus_y = y.affine(-1.0, 1.0)?;
    Ok((one_minus_y.mul(x)? - log_sigmoid(x)?)?)
}

/// `x.max()` over all elements, with PyTorch's backward: the gradient is shared evenly among
/// the elements equal to the max (candle's `max` gives each of them the full gradient).
pub(crate) fn max_all_even(x: &Tensor) -> Result<Tensor> {
    let m = x.detach().flatten_all()?.max(0)?;
    let mask = x.broadcast_eq(&m)?.to_dtype(x.dtype())?;
    let count = mask.sum_all()?;
    let s = x.mul(&mask)?.sum_all()?;
    // value: m + 0 exactly; gradient: mask / count.
    let zero_with_grad = (&s - s.detach())?.div(&count)?;
    Ok((m + zero_with_grad)?)
}

/// A scalar tensor `v` of `dtype` on `device`.
pub(crate) fn scalar(v: f64, dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::new(v, dev)?.to_dtype(dtype)?)
}

/// The log-probabilities `log_softmax(logits, dim)` picked at `idx` along `dim`: `logits` has
/// shape `[.., C, ..]` with `C` at `dim`, `idx` one entry per position of the other dims
/// (row-major), each in `0..C`. Returns the tensor of `logits`' shape without `dim`.
pub(crate) fn picked_log_probs(logits: &Tensor, dim: usize, idx: Vec<u32>) -> Result<Tensor> {
    // One op that keeps no class-map-sized intermediate for the backward pass.
    segkit_core::ops::log_softmax_gather(logits, dim, idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn abs_and_log_sigmoid_grads_at_zero() -> Result<()> {
        let x = Var::new(&[0f32, 1.0, -2.0], &Device::Cpu)?;
        let g = abs_torch(x.as_tensor())?.sum_all()?.backward()?;
        let gx = g.get(x.as_tensor()).map(|t| t.to_vec1::<f32>());
        assert_eq!(gx.transpose()?, Some(vec![0.0, 1.0, -1.0]));
        let g = log_sigmoid(x.as_tensor())?.sum_all()?.backward()?;
        let gx = g
            .get(x.as_tensor())
            .map(|t| t.to_vec1::<f32>())
            .transpose()?;
        let gx = gx.unwrap_or_default();
        let want = [
            0.5f32,
            1.0 - 1.0 / (1.0 + (-1f32).exp()),
            1.0 - 1.0 / (1.0 + 2f32.exp()),
        ];
        for (a, b) in gx.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn max_even_splits_ties() -> Result<()> {
        let x = Var::new(&[3f32, 1.0, 3.0, 3.0], &Device::Cpu)?;
        let m = max_all_even(x.as_tensor())?;
        assert_eq!(m.to_scalar::<f32>()?, 3.0);
        let g = m.backward()?;
        let gx = g
            .get(x.as_tensor())
            .map(|t| t.to_vec1::<f32>())
            .transpose()?;
        let third = 1.0f32 / 3.0;
        assert_eq!(gx, Some(vec![third, 0.0, third, third]));
        Ok(())
    }
}
