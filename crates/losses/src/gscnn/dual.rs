//! GSCNN's dual-task loss (`my_functionals/DualTaskLoss.py`, `custom_functional.py`), as
//! released and as the paper describes it; see the parent module's docs.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::util::{abs_torch, check_float, from_f32, labels_i64, max_all_even, shape_err, softmax};
use crate::{Error, Result};

/// Which "gradient magnitude" [`DualTaskLoss`] takes of the class maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DualTaskGradient {
    /// The released code: `convTri` and `gradient_central_diff` return early, so the map is
    /// `sqrt(2 * E^2 + 1e-6)`, normalised by its maximum (no spatial derivative).
    #[default]
    AsReleased,
    /// The paper: triangle smoothing (radius 4) and central differences, `sqrt(Ox^2 + Oy^2 +
    /// 1e-6)`, normalised by its maximum. Needs `H, W >= 3`.
    AsPaper,
}

/// GSCNN's `DualTaskLoss`: L1 between the boundary maps of the (Gumbel-)softmax prediction and
/// of the one-hot target, averaged over each map's boundary pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DualTaskLoss {
    /// Ignored target value (255).
    pub ignore_index: i64,
    /// Gumbel-softmax temperature (0.5).
    pub tau: f64,
    /// As released (default) or as the paper.
    pub gradient: DualTaskGradient,
}

impl Default for DualTaskLoss {
    fn default() -> Self {
        Self {
            ignore_index: 255,
            tau: 0.5,
            gradient: DualTaskGradient::AsReleased,
        }
    }
}

/// The official `compute_grad_mag` (see the module docs), `N x C x H x W`.
fn grad_mag(e: &Tensor, gradient: DualTaskGradient) -> Result<Tensor> {
    let mag = match gradient {
        DualTaskGradient::AsReleased => {
            let sq = e.mul(e)?;
            ((&sq + &sq)? + 1e-6)?.sqrt()?
        }
        DualTaskGradient::AsPaper => {
            let s = conv_tri(&conv_tri(e, 3, 4)?, 2, 4)?;
            let (ox, oy) = (central_diff(&s, 3)?, central_diff(&s, 2)?);
            ((ox.sqr()? + oy.sqr()?)? + 1e-6)?.sqrt()?
        }
    };
    let m = max_all_even(&mag)?;
    Ok(mag.broadcast_div(&m)?)
}

/// `convTri(E, r)` along `dim`: the official padding (replicate 1, then reflect `r`, keeping
/// the outer `r` values on each side) and the triangle `[1, .., r + 1, .., 1] / (r + 1)^2`.
fn conv_tri(e: &Tensor, dim: usize, r: usize) -> Result<Tensor> {
    let n = e.dim(dim)?;
    if n + 2 <= r {
        return Err(Error::InvalidArgument(format!(
            "the dual-task loss as the paper needs maps of at least {} pixels, got {n}",
            r.saturating_sub(1)
        )));
    }
    // Index into the replicate-padded row a (length n + 2) of its reflect-padded position k.
    let reflect = |k: isize| -> usize {
        let last = (n + 1) as isize;
        let k = if k < 0 { -k } else { k };
        let k = if k > last { 2 * last - k } else { k };
        (k - 1).clamp(0, n as isize - 1) as usize
    };
    let ri = r as isize;
    let mut idx: Vec<u32> = (0..r as isize).map(|j| reflect(j - ri) as u32).collect();
    idx.extend((0..n).map(|j| j as u32));
    let right0 = (n + 2 + r) as isize;
    idx.extend((0..ri).map(|t| reflect(right0 + t - ri) as u32));
    let idx = Tensor::from_vec(idx, n + 2 * r, e.device())?;
    let padded = e.index_select(&idx, dim)?;
    let norm = ((r + 1) * (r + 1)) as f64;
    let mut acc: Option<Tensor> = None;
    for k in 0..=2 * r {
        let f = (r + 1 - k.abs_diff(r)) as f64 / norm;
        let term = (padded.narrow(dim, k, n)? * f)?;
        acc = Some(match acc {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    acc.ok_or_else(|| Error::InvalidArgument("empty triangle filter".into()))
}

/// `0.5 * (E[i + 1] - E[i - 1])` along `dim`, zero outside (`gradient_central_diff`).
fn central_diff(e: &Tensor, dim: usize) -> Result<Tensor> {
    let n = e.dim(dim)?;
    if n < 2 {
        return Err(Error::InvalidArgument(format!(
            "the dual-task loss as the paper needs maps of at least 2 pixels, got {n}"
        )));
    }
    let p = e.pad_with_zeros(dim, 1, 1)?;
    Ok(((p.narrow(dim, 2, n)? - p.narrow(dim, 0, n)?)? * 0.5)?)
}

impl DualTaskLoss {
    /// The loss for `logits` and `target`; `uniform` is the `U ~ U[0, 1)` of the Gumbel noise
    /// (`None`: no noise).
    pub fn forward(
        &self,
        logits: &Tensor,
        target: &Tensor,
        uniform: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_float("logits", logits)?;
        let (n, c, h, w) = logits.dims4()?;
        if target.dims() != [n, h, w] {
            return Err(shape_err("target", &[n, h, w], target.dims()));
        }
        let (dev, dt) = (logits.device(), logits.dtype());
        let labels = labels_i64("target", target)?;
        let hw = h * w;
        let mut keep = vec![0u8; n * c * hw];
        let mut onehot = vec![0f32; n * c * hw];
        for (p, &l) in labels.iter().enumerate() {
            let (b, s) = (p / hw, p % hw);
            let ignored = l == self.ignore_index;
            let cls = if ignored {
                0
            } else if l >= 0 && (l as u64) < c as u64 {
                l as usize
            } else {
                return Err(Error::InvalidArgument(format!(
                    "target value {l} is neither a class in 0..{c} nor the ignore index {}",
                    self.ignore_index
                )));
            };
            onehot[(b * c + cls) * hw + s] = 1.0;
            if !ignored {
                for k in 0..c {
                    keep[(b * c + k) * hw + s] = 1;
                }
            }
        }
        let keep = Tensor::from_vec(keep, (n, c, h, w), dev)?;
        let x = keep.where_cond(logits, &logits.zeros_like()?)?;
        let y = match uniform {
            None => x,
            Some(u) => {
                if u.elem_count() != n * c * hw || u.dim(0)? != n || u.dim(1)? != c {
                    return Err(shape_err("gumbel uniform", &[n, c, h, w], u.dims()));
                }
                let eps = 1e-10;
                let u = u.detach().to_dtype(dt)?.reshape((n, c, h, w))?;
                // -log(eps - log(U + eps))
                let noise = (u + eps)?.log()?.affine(-1.0, eps)?.log()?.neg()?;
                (x + noise)?
            }
        };
        let g = softmax(&(y / self.tau)?, 1)?;
        let g = grad_mag(&g, self.gradient)?.reshape((n, c * hw))?;
        let onehot = from_f32(onehot, &[n, c, h, w], dt, dev)?;
        let g_hat = grad_mag(&onehot, self.gradient)?.reshape((n, c * hw))?;
        let l = abs_torch(&(&g - &g_hat)?)?;
        let th = 1e-8;
        let part = |m: Tensor| -> Result<Tensor> {
            let m = m.to_dtype(dt)?;
            let num = l.mul(&m)?.sum_all()?;
            let den = (m.sum_all()? + 1e-10)?;
            Ok(num.div(&den)?)
        };
        let a = part(g.detach().ge(th)?)?;
        let b = part(g_hat.ge(th)?)?;
        Ok(((a * 0.5)? + (b * 0.5)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dual_task_paper_needs_three_pixels() -> Result<()> {
        let dev = Device::Cpu;
        let paper = DualTaskLoss {
            gradient: DualTaskGradient::AsPaper,
            ..DualTaskLoss::default()
        };
        let x = Tensor::zeros((1, 3, 2, 5), DType::F32, &dev)?;
        let t = Tensor::zeros((1, 2, 5), DType::U32, &dev)?;
        assert!(paper.forward(&x, &t, None).is_err());
        let x = Tensor::zeros((1, 3, 3, 5), DType::F32, &dev)?;
        let t = Tensor::zeros((1, 3, 5), DType::U32, &dev)?;
        assert!(paper.forward(&x, &t, None)?.to_scalar::<f32>()?.is_finite());
        let json = serde_json::to_string(&paper).unwrap();
        assert!(json.contains("\"as_paper\""), "{json}");
        Ok(())
    }

    #[test]
    fn dual_task_shape_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        let t = Tensor::zeros((1, 4, 5), DType::U32, &dev).unwrap();
        assert!(DualTaskLoss::default().forward(&x, &t, None).is_err());
    }
}
