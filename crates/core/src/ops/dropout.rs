//! `Dropout2d`: whole channels zeroed in training, as `torch.nn.Dropout2d`.
//!
//! Each `(sample, channel)` plane is kept with probability `1 - p` and scaled by `1 / (1 - p)`,
//! the mask drawn from [`crate::random::uniform`] (seeded per thread when training asks for
//! reproducibility). On CPU (f32) the scaling is one candle custom op that holds the `N x C`
//! scales itself: its backward pass is `dy * scale`. Composed as `x.broadcast_mul(&mask)`,
//! candle's backward pass would also compute a full-size gradient for the constant mask and
//! keep it, with the graph that produced it (four activation-sized tensors per dropout), until
//! the whole backward pass ends. Other devices and dtypes take that composed path.
//!
//! # Shapes
//! `N x C x ...` (rank >= 2) -> same.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_operand, with_cpu_slices};
use crate::{Error, Result};

/// `Dropout2d(p)` of an `N x C x ...` tensor; the identity unless `train` and `p > 0`, zeros
/// for `p >= 1`.
///
/// Errors if `x` has rank below 2.
pub fn dropout2d(x: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return Ok(x.zeros_like()?);
    }
    let (n, c) = match *x.dims() {
        [n, c, ..] => (n, c),
        ref d => {
            return Err(Error::InvalidArgument(format!(
                "dropout2d: `x` must have rank >= 2 (N x C x ...), got shape {d:?}"
            )))
        }
    };
    let mut mask_dims = vec![1; x.rank()];
    (mask_dims[0], mask_dims[1]) = (n, c);
    let mask = crate::random::uniform(&mask_dims, x.device())?
        .ge(p)?
        .to_dtype(DType::F32)?;
    let mask = (mask * (1.0 / (1.0 - p as f64)))?.to_dtype(x.dtype())?;
    if !x.device().is_cpu() || x.dtype() != DType::F32 || x.elem_count() == 0 {
        return Ok(x.broadcast_mul(&mask)?);
    }
    let scale = mask.flatten_all()?.to_vec1::<f32>()?;
    Ok(x.contiguous()?.apply_op1(ChannelScale { scale })?)
}

/// `y[n, c, ...] = x[n, c, ...] * scale[n * C + c]`.
struct ChannelScale {
    scale: Vec<f32>,
}

impl ChannelScale {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let plane = x.len() / self.scale.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .zip(self.scale.par_iter())
            .for_each(|((y, x), &s)| {
                y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * s);
            });
        y
    }
}

impl CustomOp1 for ChannelScale {
    fn name(&self) -> &'static str {
        "segkit-dropout2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_operand(s, l, "segkit dropout2d")?;
        Ok((CpuStorage::F32(self.apply(x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = with_cpu_slices([dy], "segkit dropout2d backward", |[dy]| Ok(self.apply(dy)))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// The custom op equals the composed `broadcast_mul` in values and in the input gradient
    /// (same seed, same mask), and zeroes whole channels.
    #[test]
    fn matches_composed_path_and_zeroes_whole_channels() -> Result<()> {
        let dev = Device::Cpu;
        let n = 2 * 8 * 3 * 5;
        let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() + 0.5).collect();
        let x = Var::from_vec(xs, (2, 8, 3, 5), &dev)?;
        let r = Tensor::from_vec((0..n).map(|i| (i % 7) as f32).collect(), (2, 8, 3, 5), &dev)?;
        crate::random::set_thread_state(Some(7));
        let y = dropout2d(x.as_tensor(), 0.4, true)?;
        let g = (&y * &r)?.sum_all()?.backward()?;
        let gx = g
            .get(x.as_tensor())
            .ok_or_else(|| Error::InvalidArgument("dropout2d: no gradient for x".into()))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        crate::random::set_thread_state(Some(7));
        let mask = crate::random::uniform(&[2, 8, 1, 1], &dev)?
            .ge(0.4)?
            .to_dtype(DType::F32)?;
        let mask = (mask * (1.0 / 0.6f64))?;
        let want = x.as_tensor().broadcast_mul(&mask)?;
        let want_g = r.broadcast_mul(&mask)?.flatten_all()?.to_vec1::<f32>()?;
        crate::random::set_thread_state(None);
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(gx, want_g);
        let m = mask.flatten_all()?.to_vec1::<f32>()?;
        assert!(m.contains(&0.0) && m.iter().any(|&v| v > 1.0), "mask {m:?}");
        Ok(())
    }

    #[test]
    fn identity_in_eval_and_zeros_at_one() -> Result<()> {
        let x = Tensor::ones((1, 2, 2, 2), DType::F32, &Device::Cpu)?;
        assert_eq!(
            dropout2d(&x, 0.5, false)?.sum_all()?.to_scalar::<f32>()?,
            8.0
        );
        assert_eq!(
            dropout2d(&x, 1.0, true)?.sum_all()?.to_scalar::<f32>()?,
            0.0
        );
        assert!(dropout2d(&Tensor::ones(3, DType::F32, &Device::Cpu)?, 0.5, true).is_err());
        Ok(())
    }
}
