//! Fused element-wise ops for the hot paths of residual networks.
//!
//! `add_act(a, b, act)` = `act(a + b)` in one parallel pass: a ResNet block's residual add and
//! ReLU, which candle would run as two single-threaded passes with two fresh buffers.
//!
//! `quick_gelu(x)` = `x sigmoid(1.702 x)` (CLIP's QuickGELU) as one differentiable op: the
//! composed ops keep three full-size intermediates and run five passes forward and eight
//! backward.
//!
//! # Shapes
//! `a` and `b` of the same shape -> that shape.

use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::{exp_approx, has_avx2_fma, madd};
use super::resize::{alloc_output, cpu_output, with_cpu_f32};
use super::{activate, cpu_operand, with_cpu_slices, Activation};
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

/// QuickGELU, `x sigmoid(1.702 x)` (OpenAI CLIP's activation), with gradients.
///
/// On CPU f32 one differentiable op (forward and backward each one vectorised, parallel pass;
/// the sigmoid within a few ulp); elsewhere candle's ops.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[-1f32, 0.0, 2.0], &Device::Cpu)?;
/// let y = segkit_core::ops::quick_gelu(&x)?.to_vec1::<f32>()?;
/// assert!((y[2] - 2.0 / (1.0 + (-3.404f32).exp())).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return Ok(x.contiguous()?.apply_op1(QuickGelu)?);
    }
    Ok((x * candle_nn::ops::sigmoid(&(x * f64::from(QUICK_GELU_ALPHA))?)?)?)
}

const QUICK_GELU_ALPHA: f32 = 1.702;

struct QuickGelu;

/// `sigmoid(z)` from `exp(-|z|)` (never overflows; exact zeros only below ~-87).
#[inline(always)]
fn sigmoid<const FMA: bool>(z: f32) -> f32 {
    let e = exp_approx::<FMA>(-z.abs());
    let r = 1.0 / (1.0 + e);
    if z >= 0.0 {
        r
    } else {
        e * r
    }
}

#[inline(always)]
fn quick_gelu_fwd<const FMA: bool>(y: &mut [f32], x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * sigmoid::<FMA>(QUICK_GELU_ALPHA * x);
    }
}

/// `dx = dy (s + 1.702 x s (1 - s))`, `s = sigmoid(1.702 x)`.
#[inline(always)]
fn quick_gelu_bwd<const FMA: bool>(dx: &mut [f32], x: &[f32], dy: &[f32]) {
    for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
        let s = sigmoid::<FMA>(QUICK_GELU_ALPHA * x);
        *d = g * madd::<FMA>(QUICK_GELU_ALPHA * x * s, 1.0 - s, s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quick_gelu_fwd_avx2(y: &mut [f32], x: &[f32]) {
    quick_gelu_fwd::<true>(y, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quick_gelu_bwd_avx2(dx: &mut [f32], x: &[f32], dy: &[f32]) {
    quick_gelu_bwd::<true>(dx, x, dy)
}

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "segkit-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_operand(s, l, "segkit quick_gelu")?;
        let mut y = vec![0f32; x.len()];
        let simd = has_avx2_fma();
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: AVX2 and FMA were detected on this CPU.
                    return unsafe { quick_gelu_fwd_avx2(y, x) };
                }
                let _ = simd;
                quick_gelu_fwd::<false>(y, x)
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = with_cpu_slices([x, dy], "segkit quick_gelu backward", |[x, dy]| {
            let mut dx = vec![0f32; x.len()];
            let simd = has_avx2_fma();
            dx.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
                .for_each(|(d, (x, g))| {
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        // SAFETY: AVX2 and FMA were detected on this CPU.
                        return unsafe { quick_gelu_bwd_avx2(d, x, g) };
                    }
                    let _ = simd;
                    quick_gelu_bwd::<false>(d, x, g)
                });
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
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

    /// QuickGELU and its gradient against the composed candle ops over [-100, 100] (tails
    /// included) and a non-contiguous input.
    #[test]
    fn quick_gelu_matches_composed_ops() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let base = Tensor::randn(0f32, 4.0, (3, 7000), &dev)?;
        let ends = Tensor::new(&[[-100f32, -20.0, 0.0], [1e-3, 20.0, 100.0]], &dev)?;
        for (x, transpose) in [(base, true), (ends, false)] {
            let v = candle_core::Var::from_tensor(&x)?;
            let x = if transpose {
                v.as_tensor().t()?
            } else {
                v.as_tensor().clone()
            };
            let r = Tensor::randn(0f32, 1.0, x.dims(), &dev)?;
            let y1 = quick_gelu(&x)?;
            let y0 = (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?;
            let g1 = (&y1 * &r)?.sum_all()?.backward()?;
            let g0 = (&y0 * &r)?.sum_all()?.backward()?;
            let (g1, g0) = (
                g1.get(v.as_tensor()).unwrap(),
                g0.get(v.as_tensor()).unwrap(),
            );
            for (a, e) in [(&y1, &y0), (g1, g0)] {
                let d = (a - e)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 2e-5, "{:?}: {d}", x.dims());
            }
        }
        Ok(())
    }
}
