//! The optimizer updates of one parameter. On CPU f32 the parameter and its state are updated
//! in place, each by one parallel pass (AdamW: `m`, `v`, then `p`; SGD: the momentum buffer,
//! then `p`), where the composed tensor ops (any device) take 8 (SGD) to 16 (AdamW)
//! single-threaded passes, each into a fresh buffer (fresh pages the kernel must zero: ~0.5 s
//! of a OneFormer step). The kernels do the composed ops' arithmetic operation for operation in
//! f32 (candle's `t * s` is `t * s + 0`, `t / s` is `t * (1 / s)`, `t + s` is `t * 1 + s`), so
//! the two agree bit for bit (tested).

use candle_core::{CpuStorage, Device, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use rayon::prelude::*;
use segkit_core::ops::with_cpu_slices;

use crate::TrainResult;

const CHUNK: usize = 1 << 14;

/// AdamW's per-step constants, as the composed ops round them to f32.
#[derive(Debug, Clone, Copy)]
pub(super) struct AdamW {
    /// `1 - lr wd` when the parameter decays.
    pub decay: Option<f32>,
    pub b2: f32,
    pub one_minus_b1: f32,
    pub one_minus_b2: f32,
    /// `1 / sqrt(1 - b2^t)`.
    pub inv_bc2_sqrt: f32,
    pub eps: f32,
    /// `lr / (1 - b1^t)`.
    pub step_size: f32,
}

/// SGD's per-step constants.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sgd {
    pub weight_decay: Option<f32>,
    pub momentum: Option<f32>,
    pub nesterov: bool,
    pub lr: f32,
}

/// Whether the kernels take these tensors: all CPU f32, and the parameter (the first)
/// contiguous, as it is updated where it lies.
fn applies(ts: &[Option<&Tensor>]) -> bool {
    ts.iter()
        .flatten()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
        && ts
            .first()
            .copied()
            .flatten()
            .is_none_or(Tensor::is_contiguous)
}

/// An element-wise in-place update `dst = f(dst, srcs)` over contiguous CPU f32 tensors,
/// chunk-parallel.
struct Update<F> {
    name: &'static str,
    f: F,
}

impl<F> Update<F> {
    fn new(name: &'static str, f: F) -> Self {
        Self { name, f }
    }
}

impl<F> Update<F> {
    fn run<const N: usize>(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        srcs: [(&CpuStorage, &Layout); N],
    ) -> candle_core::Result<()>
    where
        F: Fn(f32, [f32; N]) -> f32 + Sync,
    {
        let bad = || candle_core::Error::Msg(format!("{}: non-contiguous operand", self.name));
        let (a, b) = dst_l.contiguous_offsets().ok_or_else(bad)?;
        let CpuStorage::F32(dst) = dst else {
            candle_core::bail!("{}: expected f32", self.name)
        };
        let dst = &mut dst[a..b];
        let mut s: [&[f32]; N] = [&[]; N];
        for (s, (st, l)) in s.iter_mut().zip(srcs) {
            let (a, b) = l.contiguous_offsets().ok_or_else(bad)?;
            *s = &st.as_slice::<f32>()?[a..b];
            if s.len() != dst.len() {
                candle_core::bail!("{}: operand sizes differ", self.name)
            }
        }
        dst.par_chunks_mut(CHUNK).enumerate().for_each(|(k, d)| {
            let s = s.map(|s| &s[k * CHUNK..k * CHUNK + d.len()]);
            for (i, x) in d.iter_mut().enumerate() {
                *x = (self.f)(*x, s.map(|s| s[i]));
            }
        });
        Ok(())
    }
}

/// One AdamW step: updates `var` and returns the moments `(m, v)` (`None` before the first
/// step); existing moments are updated in place on CPU.
pub(super) fn adamw(
    var: &Var,
    g: &Tensor,
    m: Option<Tensor>,
    v: Option<Tensor>,
    c: AdamW,
) -> TrainResult<(Tensor, Tensor)> {
    let p = var.as_tensor();
    if !applies(&[Some(p), Some(g), m.as_ref(), v.as_ref()]) {
        let (new_p, m, v) = adamw_composed(&p.detach(), g, m.as_ref(), v.as_ref(), c)?;
        var.set(&new_p)?;
        return Ok((m, v));
    }
    let g = g.contiguous()?;
    let (first, m, v) = match (m, v) {
        (Some(m), Some(v)) => (false, m.contiguous()?, v.contiguous()?),
        _ => (true, g.zeros_like()?, g.zeros_like()?),
    };
    let w1 = c.one_minus_b1;
    m.inplace_op2(
        &g,
        &Update::new("segkit-adamw-exp-avg", move |m: f32, [g]: [f32; 1]| {
            if first {
                g * w1 + 0.0
            } else {
                m + ((g - m) * w1 + 0.0)
            }
        }),
    )?;
    let (b2, w2) = (c.b2, c.one_minus_b2);
    v.inplace_op2(
        &g,
        &Update::new("segkit-adamw-exp-avg-sq", move |v: f32, [g]: [f32; 1]| {
            let g2 = (g * g) * w2 + 0.0;
            if first {
                g2
            } else {
                (v * b2 + 0.0) + g2
            }
        }),
    )?;
    p.inplace_op3(
        &m,
        &v,
        &Update::new("segkit-adamw-step", move |p: f32, [m, v]: [f32; 2]| {
            let p = c.decay.map_or(p, |d| p * d + 0.0);
            let denom = (v.sqrt() * c.inv_bc2_sqrt + 0.0) * 1.0 + c.eps;
            p - ((m / denom) * c.step_size + 0.0)
        }),
    )?;
    Ok((m, v))
}

/// AdamW as candle tensor ops (`torch.optim.AdamW`'s single-tensor update).
fn adamw_composed(
    p: &Tensor,
    g: &Tensor,
    m: Option<&Tensor>,
    v: Option<&Tensor>,
    c: AdamW,
) -> TrainResult<(Tensor, Tensor, Tensor)> {
    let f = f64::from;
    let p = match c.decay {
        Some(d) => (p * f(d))?,
        None => p.clone(),
    };
    let m = match m {
        // exp_avg.lerp_(grad, 1 - beta1), from zeros.
        None => (g * f(c.one_minus_b1))?,
        Some(m) => (m + ((g - m)? * f(c.one_minus_b1))?)?,
    };
    let g2 = (g * g)?;
    let v = match v {
        None => (g2 * f(c.one_minus_b2))?,
        Some(v) => ((v * f(c.b2))? + (g2 * f(c.one_minus_b2))?)?,
    };
    let denom = ((v.sqrt()? * f(c.inv_bc2_sqrt))? + f(c.eps))?;
    let upd = (m.div(&denom)? * f(c.step_size))?;
    Ok(((p - upd)?, m, v))
}

/// One SGD step: updates `var` and returns the momentum buffer (`None` without momentum); an
/// existing buffer is updated in place on CPU.
pub(super) fn sgd(
    var: &Var,
    g: &Tensor,
    buf: Option<Tensor>,
    c: Sgd,
) -> TrainResult<Option<Tensor>> {
    let p = var.as_tensor();
    if !applies(&[Some(p), Some(g), buf.as_ref()]) {
        let (new_p, buf) = sgd_composed(&p.detach(), g, buf.as_ref(), c)?;
        var.set(&new_p)?;
        return Ok(buf);
    }
    let g = g.contiguous()?;
    let d = move |p: f32, g: f32| c.weight_decay.map_or(g, |wd| g + (p * wd + 0.0));
    let Some(mom) = c.momentum else {
        p.inplace_op2(
            &g,
            &Update::new("segkit-sgd-step", move |p: f32, [g]: [f32; 1]| {
                p - (d(p, g) * c.lr + 0.0)
            }),
        )?;
        return Ok(None);
    };
    let (first, buf) = match buf {
        Some(b) => (false, b.contiguous()?),
        None => (true, g.zeros_like()?),
    };
    buf.inplace_op3(
        &g,
        p,
        &Update::new("segkit-sgd-momentum", move |b: f32, [g, p]: [f32; 2]| {
            if first {
                d(p, g)
            } else {
                (b * mom + 0.0) + d(p, g)
            }
        }),
    )?;
    p.inplace_op3(
        &g,
        &buf,
        &Update::new("segkit-sgd-step", move |p: f32, [g, b]: [f32; 2]| {
            let upd = if c.nesterov {
                d(p, g) + (b * mom + 0.0)
            } else {
                b
            };
            p - (upd * c.lr + 0.0)
        }),
    )?;
    Ok(Some(buf))
}

/// SGD as candle tensor ops (`torch.optim.SGD`'s single-tensor update).
fn sgd_composed(
    p: &Tensor,
    g: &Tensor,
    buf: Option<&Tensor>,
    c: Sgd,
) -> TrainResult<(Tensor, Option<Tensor>)> {
    let f = f64::from;
    let d = match c.weight_decay {
        Some(wd) => (g + (p * f(wd))?)?,
        None => g.clone(),
    };
    let (upd, buf) = match c.momentum {
        Some(mom) => {
            let buf = match buf {
                None => d.copy()?,
                Some(b) => ((b * f(mom))? + &d)?,
            };
            let upd = if c.nesterov {
                (&d + (&buf * f(mom))?)?
            } else {
                buf.clone()
            };
            (upd, Some(buf))
        }
        None => (d, None),
    };
    Ok(((p - (upd * f(c.lr))?)?, buf))
}

impl<F: Fn(f32, [f32; 1]) -> f32 + Sync> InplaceOp2 for Update<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        self.run(s1, l1, [(s2, l2)])
    }
}

impl<F: Fn(f32, [f32; 2]) -> f32 + Sync> InplaceOp3 for Update<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        self.run(s1, l1, [(s2, l2), (s3, l3)])
    }
}

/// `sum |g|^p` over the elements of `g` in f64 (`p` 1, 2 or any other positive power).
pub(super) fn pow_sum(g: &Tensor, p: f64) -> TrainResult<f64> {
    if !applies(&[Some(g)]) {
        let g = g.to_dtype(candle_core::DType::F64)?;
        let s = if p == 2.0 {
            g.sqr()?.sum_all()?
        } else if p == 1.0 {
            g.abs()?.sum_all()?
        } else {
            g.abs()?.powf(p)?.sum_all()?
        };
        return Ok(s.to_scalar::<f64>()?);
    }
    let sum = with_cpu_slices([g], "segkit clip_grad_norm", |[gs]| {
        let term = |v: f32| -> f64 {
            let v = f64::from(v);
            if p == 2.0 {
                v * v
            } else if p == 1.0 {
                v.abs()
            } else {
                v.abs().powf(p)
            }
        };
        Ok(gs
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&v| term(v)).sum::<f64>())
            .sum())
    })?;
    Ok(sum)
}

/// `g * coef` (as candle's `g * coef` rounds it).
pub(super) fn scale(g: &Tensor, coef: f64) -> TrainResult<Tensor> {
    if !applies(&[Some(g)]) {
        return Ok((g * coef)?);
    }
    let c = coef as f32;
    let mut out = vec![0f32; g.elem_count()];
    with_cpu_slices([g], "segkit clip_grad_norm", |[gs]| {
        out.par_chunks_mut(CHUNK)
            .zip(gs.par_chunks(CHUNK))
            .for_each(|(o, g)| o.iter_mut().zip(g).for_each(|(o, &g)| *o = g * c + 0.0));
        Ok(())
    })?;
    Ok(Tensor::from_vec(out, g.shape(), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(t: &Tensor) -> Vec<u32> {
        segkit_core::testing::f32_bits(t).unwrap()
    }

    /// The one-pass kernels equal the composed ops bit for bit (first and later steps, with
    /// and without decay, momentum, Nesterov), over more than one chunk.
    #[test]
    fn kernels_equal_composed_ops() -> TrainResult<()> {
        let dev = Device::Cpu;
        let n = CHUNK * 2 + 77;
        let r = || Tensor::randn(0f32, 1.0, n, &dev);
        let (p, g, s1, s2) = (r()?, r()?, r()?, r()?.abs()?);
        let var = |t: &Tensor| Var::from_tensor(&t.copy()?);
        for decay in [None, Some(0.99f32)] {
            for first in [true, false] {
                let c = AdamW {
                    decay,
                    b2: 0.999,
                    one_minus_b1: 0.1,
                    one_minus_b2: 1e-3,
                    inv_bc2_sqrt: 3.7,
                    eps: 1e-8,
                    step_size: 2e-4,
                };
                let (m, v) = if first {
                    (None, None)
                } else {
                    (Some(&s1), Some(&s2))
                };
                let e = adamw_composed(&p, &g, m, v, c)?;
                let pv = var(&p)?;
                let copy = |t: Option<&Tensor>| t.map(Tensor::copy).transpose();
                let (m, v) = adamw(&pv, &g, copy(m)?, copy(v)?, c)?;
                assert_eq!(bits(pv.as_tensor()), bits(&e.0));
                assert_eq!(bits(&m), bits(&e.1));
                assert_eq!(bits(&v), bits(&e.2));
            }
        }
        for (weight_decay, momentum, nesterov) in [
            (None, None, false),
            (Some(5e-4f32), Some(0.9f32), false),
            (Some(1e-4), Some(0.9), true),
        ] {
            for buf in [None, Some(&s1)] {
                let buf = momentum.and(buf);
                let c = Sgd {
                    weight_decay,
                    momentum,
                    nesterov,
                    lr: 0.01,
                };
                let e = sgd_composed(&p, &g, buf, c)?;
                let pv = var(&p)?;
                let b = sgd(&pv, &g, buf.map(Tensor::copy).transpose()?, c)?;
                assert_eq!(bits(pv.as_tensor()), bits(&e.0));
                assert_eq!(b.map(|t| bits(&t)), e.1.map(|t| bits(&t)));
            }
        }
        assert_eq!(bits(&scale(&g, 0.37)?), bits(&(&g * 0.37)?));
        let g64 = g.to_dtype(candle_core::DType::F64)?;
        for (pw, want) in [
            (2.0, g64.sqr()?.sum_all()?),
            (1.0, g64.abs()?.sum_all()?),
            (3.0, g64.abs()?.powf(3.0)?.sum_all()?),
        ] {
            let (a, e) = (pow_sum(&g, pw)?, want.to_scalar::<f64>()?);
            assert!((a - e).abs() <= 1e-12 * e, "p {pw}: {a} vs {e}");
        }
        Ok(())
    }
}
