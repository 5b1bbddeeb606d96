//! [`group_norm`]: `torch.nn.GroupNorm` followed by an activation.
//!
//! For a CPU f32 tensor that records no gradient it is one kernel, parallel over (image,
//! group): the group's mean and variance in f64 (two passes over its `C/G x spatial` contiguous
//! elements, independent lanes so that the loops vectorise), then one pass writing
//! `act((x - mean) * gamma_c / sqrt(var + eps) + beta_c)` per channel (the mean subtracted as an
//! f32 and its f64 remainder). candle's `GroupNorm`
//! takes ten tensor ops and as many full-size intermediates for the same result (PANet's
//! neck and heads and OneFormer's pixel decoder run it after most convolutions). Anything else
//! (gradients, other devices and dtypes) takes `candle_nn::GroupNorm` itself.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::batch_norm::lanes_sum;
use super::conv::{activate, bias_act, Activation};
use super::resize::{alloc_output, with_cpu_f32};
use crate::{Error, Result};

/// `act(GroupNorm(x))` over `groups` groups of channels, with per-channel `weight` (gamma) and
/// `bias` (beta), as `torch.nn.GroupNorm(groups, C, eps)` then the activation.
///
/// # Shapes
/// `x`: `N x C x ...` (rank >= 3), `weight`, `bias`: `C` -> the shape of `x`.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 3 {
        return Err(Error::InvalidArgument(format!(
            "group_norm: the input must be N x C x ..., got shape {dims:?}"
        )));
    }
    let (n, c) = (dims[0], dims[1]);
    if groups == 0 || !c.is_multiple_of(groups) {
        return Err(Error::InvalidArgument(format!(
            "group_norm: {groups} groups do not divide {c} channels"
        )));
    }
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if t.dims() != [c] {
            return Err(Error::shape(format!("group_norm {name}"), &[c], t.dims()));
        }
    }
    let fast = !(x.track_op() || weight.track_op() || bias.track_op())
        && [x, weight, bias]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
        && x.elem_count() > 0;
    if !fast {
        return activate(&composed(x, groups, weight, bias, eps)?, act);
    }
    let x = x.contiguous()?;
    let (gamma, beta) = (weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?);
    let spatial = x.elem_count() / (n * c);
    let cg = c / groups;
    let block = cg * spatial;
    let out = with_cpu_f32(&x, |xs| {
        let mut out = alloc_output(xs.len());
        out.par_chunks_mut(block)
            .zip(xs.par_chunks(block))
            .enumerate()
            .for_each(|(i, (dst, src))| {
                let g = i % groups;
                let m = block as f64;
                let mean = lanes_sum(src, |v| v as f64) / m;
                let var = lanes_sum(src, |v| {
                    let d = v as f64 - mean;
                    d * d
                }) / m;
                let rstd = 1.0 / (var + eps).sqrt();
                // The mean as f32 plus its remainder: `(x - hi) - lo` keeps the digits that a
                // rounded mean would lose when it is large against the spread.
                let hi = mean as f32;
                let mu = (hi, (mean - hi as f64) as f32);
                for (j, (d, s)) in dst
                    .chunks_exact_mut(spatial)
                    .zip(src.chunks_exact(spatial))
                    .enumerate()
                {
                    let ch = g * cg + j;
                    let k = (gamma[ch] as f64 * rstd) as f32;
                    affine_plane(d, s, mu, k, beta[ch]);
                    bias_act(d, 0.0, act);
                }
            });
        Ok(out)
    })?;
    Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
}

/// candle's `GroupNorm` forward (the path with gradients and off the CPU).
fn composed(x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let c = x.dim(1)?;
    let gn = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, groups, eps)?;
    Ok(candle_core::Module::forward(&gn, x)?)
}

/// `dst = (src - mu) * k + b` with `mu` as a rounded value and its remainder, vectorised under AVX2 where the CPU has it (same operations, no
/// contraction into FMA, so the result does not depend on it).
fn affine_plane(dst: &mut [f32], src: &[f32], mu: (f32, f32), k: f32, b: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::fastmath::has_avx2_fma() {
        // SAFETY: AVX2 was detected on this CPU.
        return unsafe { affine_plane_avx2(dst, src, mu, k, b) };
    }
    affine_plane_impl(dst, src, mu, k, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn affine_plane_avx2(dst: &mut [f32], src: &[f32], mu: (f32, f32), k: f32, b: f32) {
    affine_plane_impl(dst, src, mu, k, b)
}

#[inline(always)]
fn affine_plane_impl(dst: &mut [f32], src: &[f32], (hi, lo): (f32, f32), k: f32, b: f32) {
    for (o, &v) in dst.iter_mut().zip(src) {
        *o = ((v - hi) - lo) * k + b;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module, Tensor, Var};

    use super::{composed, group_norm, Activation};
    use crate::Result;

    fn data(shape: &[usize], seed: u64, offset: f32) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let v: Vec<f32> = (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0 + offset
            })
            .collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }

    fn max_err(a: &Tensor, b: &Tensor) -> Result<(f32, f32)> {
        let (a, b) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(a.len(), b.len());
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        Ok((err, b.iter().fold(1f32, |m, v| m.max(v.abs()))))
    }

    /// `GroupNorm` in f64 from its definition (biased variance), then the activation.
    fn reference(
        x: &Tensor,
        groups: usize,
        w: &Tensor,
        b: &Tensor,
        act: Activation,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (n, c) = (dims[0], dims[1]);
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let (ws, bs) = (w.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        let spatial = xs.len() / (n * c);
        let block = c / groups * spatial;
        let mut out = vec![0f32; xs.len()];
        for (i, (o, v)) in out.chunks_mut(block).zip(xs.chunks(block)).enumerate() {
            let m = v.iter().map(|&a| a as f64).sum::<f64>() / block as f64;
            let var = v.iter().map(|&a| (a as f64 - m).powi(2)).sum::<f64>() / block as f64;
            for (j, (oo, &a)) in o.iter_mut().zip(v).enumerate() {
                let ch = (i % groups) * (c / groups) + j / spatial;
                let y = (a as f64 - m) / (var + 1e-5).sqrt() * ws[ch] as f64 + bs[ch] as f64;
                *oo = y as f32;
            }
        }
        crate::ops::activate(&Tensor::from_vec(out, dims, &Device::Cpu)?, act)
    }

    /// The fused kernel against GroupNorm computed in f64, and the composed path (gradients,
    /// other devices) equal to candle's `GroupNorm` bit for bit: 4-D and 3-D inputs, one
    /// channel per group and whole-tensor groups, a mean far from zero (where candle's f32 sums
    /// lose digits: the composed path is only checked near zero there), each activation.
    #[test]
    fn fused_matches_group_norm() -> Result<()> {
        for (shape, groups, offset) in [
            (vec![2, 64, 17, 19], 32, 0.0),
            (vec![1, 32, 40], 8, 1e3),
            (vec![3, 6, 5, 7], 6, -20.0),
            (vec![2, 16, 9, 9], 1, 3.0),
        ] {
            let c = shape[1];
            let x = data(&shape, 1, offset)?;
            let w = data(&[c], 2, 1.0)?;
            let b = data(&[c], 3, 0.0)?;
            let gn = candle_nn::GroupNorm::new(w.clone(), b.clone(), c, groups, 1e-5)?;
            let (e, _) = max_err(&composed(&x, groups, &w, &b, 1e-5)?, &gn.forward(&x)?)?;
            assert_eq!(e, 0.0, "{shape:?}: the composed path differs from candle's");
            for act in [Activation::None, Activation::Relu, Activation::Gelu] {
                let want = reference(&x, groups, &w, &b, act)?;
                let got = group_norm(&x, groups, &w, &b, 1e-5, act)?;
                let (err, scale) = max_err(&got, &want)?;
                assert!(err <= 2e-6 * scale, "{shape:?} {act:?}: max err {err}");
            }
        }
        Ok(())
    }

    /// With gradients it takes the composed ops (and so has candle's backward pass).
    #[test]
    fn tracked_input_takes_the_composed_path() -> Result<()> {
        let x = Var::from_tensor(&data(&[2, 8, 6, 6], 4, 0.5)?)?;
        let (w, b) = (data(&[8], 5, 1.0)?, data(&[8], 6, 0.0)?);
        let y = group_norm(x.as_tensor(), 4, &w, &b, 1e-5, Activation::Relu)?;
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() -> Result<()> {
        let x = data(&[1, 6, 4, 4], 7, 0.0)?;
        let (w, b) = (data(&[6], 8, 1.0)?, data(&[6], 9, 0.0)?);
        assert!(group_norm(&x, 4, &w, &b, 1e-5, Activation::None).is_err());
        assert!(group_norm(&x, 0, &w, &b, 1e-5, Activation::None).is_err());
        assert!(group_norm(&x, 3, &w.narrow(0, 0, 5)?, &b, 1e-5, Activation::None).is_err());
        assert!(group_norm(&x.flatten_from(1)?, 3, &w, &b, 1e-5, Activation::None).is_err());
        Ok(())
    }
}
