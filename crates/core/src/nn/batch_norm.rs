//! [`BatchNormAct`]: a stand-alone `BatchNorm2d` followed by an optional activation, for the
//! places where a norm does not follow a convolution and cannot be folded into one:
//! pre-activation residual blocks (`bn1 = Sequential(BatchNorm2d, ReLU)` of WideResNet's
//! `IdentityResidualBlock`) and norms on concatenated inputs (Gated-SCNN's gate).
//!
//! Keys: `weight`, `bias`, `running_mean`, `running_var` under the module's path (PyTorch's
//! `BatchNorm2d`). Inference computes `act(x * s + t)` with `s = gamma / sqrt(var + eps)`,
//! `t = beta - mean * s` (in f64, rounded once), in one parallel pass over contiguous f32 CPU
//! tensors; training uses batch statistics and updates the running ones (candle's BatchNorm,
//! PyTorch's momentum rule).
//!
//! # Shapes
//! `N x C x H x W` -> same.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::nn::BatchNormAct;
//! use segkit_core::ops::Activation;
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let bn = BatchNormAct::new(8, 1e-5, Activation::Relu, vb).unwrap();
//! let x = Tensor::ones((1, 8, 3, 3), DType::F32, &Device::Cpu).unwrap();
//! assert_eq!(bn.forward_t(&x, false).unwrap().dims(), &[1, 8, 3, 3]);
//! ```

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::ops::{self, Activation};
use crate::{Error, Result};

/// `BatchNorm2d` (+ activation) over an NCHW map; see the module docs.
#[derive(Debug, Clone)]
pub struct BatchNormAct {
    bn: candle_nn::BatchNorm,
    scale: Vec<f32>,
    shift: Vec<f32>,
    scale_t: Tensor,
    shift_t: Tensor,
    act: Activation,
}

impl BatchNormAct {
    /// Loads `weight`, `bias`, `running_mean`, `running_var` (length `channels`) from `vb`.
    pub fn new(channels: usize, eps: f64, act: Activation, vb: VarBuilder<'_>) -> Result<Self> {
        let get = |n: &str| vb.get_with_hints(channels, n, crate::init::norm_param(n, false));
        let (weight, bias) = (get("weight")?, get("bias")?);
        let (mean, var) = (get("running_mean")?, get("running_var")?);
        let f64s = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.to_vec1()?) };
        let (g, b, m, v) = (f64s(&weight)?, f64s(&bias)?, f64s(&mean)?, f64s(&var)?);
        let s: Vec<f64> = g
            .iter()
            .zip(&v)
            .map(|(g, v)| g / (v + eps).sqrt())
            .collect();
        let scale: Vec<f32> = s.iter().map(|&s| s as f32).collect();
        let shift: Vec<f32> = b
            .iter()
            .zip(&m)
            .zip(&s)
            .map(|((b, m), s)| (b - m * s) as f32)
            .collect();
        let dev = weight.device().clone();
        let shape = (1, channels, 1, 1);
        let scale_t = Tensor::from_vec(scale.clone(), shape, &Device::Cpu)?
            .to_dtype(weight.dtype())?
            .to_device(&dev)?;
        let shift_t = Tensor::from_vec(shift.clone(), shape, &Device::Cpu)?
            .to_dtype(weight.dtype())?
            .to_device(&dev)?;
        let bn =
            candle_nn::BatchNorm::new_with_momentum(channels, mean, var, weight, bias, eps, 0.1)?;
        Ok(Self {
            bn,
            scale,
            shift,
            scale_t,
            shift_t,
            act,
        })
    }

    /// Normalises (batch statistics when `train`) and applies the activation.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = self.scale.len();
        if x.rank() != 4 || x.dim(1)? != c {
            return Err(Error::shape(
                "BatchNorm2d input (N x C x H x W)",
                &[1, c, 1, 1],
                x.dims(),
            ));
        }
        if train {
            return ops::batch_norm_train(x, &self.bn, self.act);
        }
        let fast = !x.track_op()
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && matches!(self.act, Activation::None | Activation::Relu);
        if !fast {
            let y = x
                .broadcast_mul(&self.scale_t)?
                .broadcast_add(&self.shift_t)?;
            return ops::activate(&y, self.act);
        }
        let plane = x.dim(2)? * x.dim(3)?;
        let relu = self.act == Activation::Relu;
        let out = ops::with_cpu_f32(&x.contiguous()?, |xs| {
            let mut out = vec![0f32; xs.len()];
            if plane > 0 {
                out.par_chunks_mut(plane)
                    .zip(xs.par_chunks(plane))
                    .enumerate()
                    .for_each(|(i, (o, xi))| {
                        let (s, t) = (self.scale[i % c], self.shift[i % c]);
                        for (o, &v) in o.iter_mut().zip(xi) {
                            let y = v * s + t;
                            *o = if relu { y.max(0.0) } else { y };
                        }
                    });
            }
            Ok(out)
        })?;
        Ok(Tensor::from_vec(out, x.dims(), &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::ModuleT;
    use candle_nn::VarMap;

    #[test]
    fn inference_matches_candle_batch_norm_and_relu() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        BatchNormAct::new(5, 1e-5, Activation::Relu, vb.pp("bn"))?;
        for (k, v) in vm
            .data()
            .lock()
            .map_err(|_| Error::InvalidConfig("lock".into()))?
            .iter()
        {
            let r = Tensor::rand(0.5f32, 1.5, 5, &dev)?;
            v.set(&if k.ends_with("mean") || k.ends_with("bias") {
                (r - 1.0)?
            } else {
                r
            })?;
        }
        let bn = BatchNormAct::new(5, 1e-5, Activation::Relu, vb.pp("bn"))?;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 7, 3), &dev)?;
        let want = bn.bn.forward_t(&x, false)?.relu()?;
        let got = bn.forward_t(&x, false)?;
        let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        assert!(bn.forward_t(&x.narrow(1, 0, 4)?, false).is_err());
        Ok(())
    }
}
