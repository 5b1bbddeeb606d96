//! Fused element-wise ops for the hot paths of residual networks.
//!
//! `add_act(a, b, act)` = `act(a + b)` in one parallel pass: a ResNet block's residual add and
//! ReLU, which candle would run as two single-threaded passes with two fresh buffers.
//!
//! # Shapes
//! `a` and `b` of the same shape -> that shape.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor};
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

/// `act(y + b)` written into `y`'s own buffer: no output allocation, so a residual block's sum
/// does not sit next to its last conv's output at the peak (what PyTorch's in-place `+=` and
/// ReLU do). Pass a `y` that nothing else holds — a conv's fresh output: any other handle to
/// `y`'s storage (a clone, a view) sees the sum too. Anything the in-place pass does not cover
/// (gradients recorded, other devices or dtypes, a non-contiguous `y`) takes [`add_act`].
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use segkit_core::ops::{add_act_in_place, Activation};
/// let y = Tensor::new(&[-2f32, 1.0], &Device::Cpu)?; // e.g. a conv's output
/// let r = Tensor::new(&[1f32, 1.0], &Device::Cpu)?;
/// let out = add_act_in_place(y, &r, Activation::Relu)?;
/// assert_eq!(out.to_vec1::<f32>()?, [0.0, 2.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn add_act_in_place(y: Tensor, b: &Tensor, act: Activation) -> Result<Tensor> {
    if y.dims() != b.dims() {
        return Err(Error::shape("add_act operand", y.dims(), b.dims()));
    }
    let fast = !y.track_op()
        && !b.track_op()
        && y.device().is_cpu()
        && b.device().is_cpu()
        && y.dtype() == DType::F32
        && b.dtype() == DType::F32
        && y.is_contiguous()
        && b.is_contiguous()
        && matches!(act, Activation::None | Activation::Relu);
    if !fast {
        return add_act(&y, b, act);
    }
    y.inplace_op2(b, &AddActInPlace(act))?;
    Ok(y)
}

struct AddActInPlace(Activation);

impl InplaceOp2 for AddActInPlace {
    fn name(&self) -> &'static str {
        "segkit-add-act-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("segkit add_act_in_place: non-contiguous operand")
        };
        let src = &s2.as_slice::<f32>()?[b0..b1];
        let CpuStorage::F32(dst) = s1 else {
            candle_core::bail!("segkit add_act_in_place: f32 only")
        };
        let relu = matches!(self.0, Activation::Relu);
        dst[a0..a1]
            .par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, &x) in o.iter_mut().zip(x) {
                    let z = *o + x;
                    *o = if relu { z.max(0.0) } else { z };
                }
            });
        Ok(())
    }
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

    /// The in-place variant equals `add_act` and leaves the other operand alone.
    #[test]
    fn in_place_matches() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 37, 41), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (2, 3, 37, 41), &dev)?;
        let b_before = b.flatten_all()?.to_vec1::<f32>()?;
        for act in [Activation::None, Activation::Relu, Activation::Sigmoid] {
            let want = add_act(&a, &b, act)?.flatten_all()?.to_vec1::<f32>()?;
            let y = a.copy()?;
            let got = add_act_in_place(y, &b, act)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(got, want, "{act:?}");
        }
        assert_eq!(b.flatten_all()?.to_vec1::<f32>()?, b_before);
        assert!(add_act_in_place(a.copy()?, &a.narrow(3, 0, 5)?, Activation::Relu).is_err());
        Ok(())
    }
}
