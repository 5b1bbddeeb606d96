//! Fused element-wise ops for the hot paths of residual networks.
//!
//! `add_act(a, b, act)` = `act(a + b)` in one parallel pass: a ResNet block's residual add and
//! ReLU, which candle would run as two single-threaded passes with two fresh buffers.
//!
//! # Shapes
//! `a` and `b` of the same shape -> that shape.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::resize::{alloc_output, cpu_output, with_cpu_f32};
use super::{activate, Activation};
use crate::{Error, Result};

const CHUNK: usize = 1 << 14;

/// `act(a + b)` for two tensors of the same shape (no broadcasting).
pub fn add_act(a: &Tensor, b: &Tensor, act: Activation) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(Error::shape("add_act operand", a.dims(), b.dims()));
    }
    // The fused pass has no backward: tensors that record gradients take candle's ops.
    let fast = !a.track_op()
        && !b.track_op()
        && a.device().is_cpu()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && matches!(act, Activation::None | Activation::Relu);
    if !fast {
        return activate(&(a + b)?, act);
    }
    let out = with_cpu_f32(a, |xa| {
        with_cpu_f32(b, |xb| {
            let mut out = alloc_output(xa.len());
            out.par_chunks_mut(CHUNK)
                .zip(xa.par_chunks(CHUNK).zip(xb.par_chunks(CHUNK)))
                .for_each(|(o, (x, y))| match act {
                    Activation::Relu => {
                        for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                            *o = (x + y).max(0.0);
                        }
                    }
                    _ => {
                        for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                            *o = x + y;
                        }
                    }
                });
            Ok(out)
        })
    })?;
    cpu_output(out, a.dims(), DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 37, 41), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (2, 3, 37, 41), &dev)?;
        for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
            let want = activate(&(&a + &b)?, act)?;
            let got = add_act(&a, &b, act)?;
            let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-6, "{act:?}: {d}");
        }
        // A transposed (non-contiguous) operand.
        let bt = b.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
        let d = (add_act(&a, &bt, Activation::Relu)? - (&a + &b)?.relu()?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6);
        assert!(add_act(&a, &a.narrow(3, 0, 5)?, Activation::Relu).is_err());
        Ok(())
    }
}
