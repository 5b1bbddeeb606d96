//! [`linear`]: `x W^T + b` over the last dimension, as `torch.nn.functional.linear`;
//! [`linear_act`] and [`linear_residual`] add an activation or a residual to it.
//!
//! On CPU with f32 tensors that record no gradients it calls the `gemm` crate directly (the
//! GEMM candle's matmul uses, AVX-512 where the CPU has it) into an output buffer that is never
//! zero-filled (candle's matmul allocates its output with zeros first, then `gemm` overwrites
//! them: ~6% of Swin-T's forward), then applies the bias, the activation and the residual in
//! place, in one parallel pass (`linear_epilogue.rs`). Everything else takes candle's ops (same
//! values).
//!
//! # Shapes
//! `x`: `.. x din`, `weight`: `dout x din`, `bias`: `dout` -> `.. x dout`.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::{cpu_operand, cpu_operands, with_cpu_slices};

use super::conv::Activation;
use super::linear_epilogue::{epilogue_rows, Epilogue};
use super::resize::with_cpu_f32;
use crate::{Error, Result};

/// `x W^T + b` over the last dimension of `x` (any rank >= 1); see the module docs.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_impl(x, weight, bias, Activation::None, None)
}

/// `act(x W^T + b)`: a linear layer and its activation (a transformer MLP's first layer with
/// [`Activation::Gelu`], the exact erf GELU of `torch.nn.GELU()`). For f32 CPU tensors that
/// record no gradients, the bias and a ReLU or GELU are applied to each output tile of the GEMM
/// while it is in cache (AVX-512F) or in one pass after it; a sigmoid, and everything else,
/// is [`linear`] followed by [`activate`](super::activate).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use segkit_core::ops::{linear_act, Activation};
/// let x = Tensor::new(&[[1f32, -2.0]], &Device::Cpu)?;
/// let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu)?;
/// let y = linear_act(&x, &w, None, Activation::Gelu)?.to_vec2::<f32>()?;
/// assert!((y[0][0] - 0.841_345).abs() < 1e-5 && (y[0][1] + 0.045_500).abs() < 1e-5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn linear_act(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    if act == Activation::Sigmoid {
        return super::activate(&linear(x, weight, bias)?, act);
    }
    linear_impl(x, weight, bias, act, None)
}

/// `residual + (x W^T + b)`: a linear layer closing a residual branch (a transformer block's
/// attention projection or MLP output). `residual` has the output's shape. For f32 CPU tensors
/// that record no gradients the sum is formed on each output tile of the GEMM (AVX-512F) or in
/// one pass after it, with no separate output for `x W^T + b`.
pub fn linear_residual(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    linear_impl(x, weight, bias, Activation::None, Some(residual))
}

/// `residual + act(x W^T + b)`; `act` is not a sigmoid.
fn linear_impl(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some(&din) = dims.last() else {
        return Err(Error::InvalidArgument(
            "linear: the input is a scalar, expected at least one dimension".into(),
        ));
    };
    let (dout, wdin) = weight.dims2()?;
    if wdin != din {
        return Err(Error::shape("linear weight", &[dout, din], weight.dims()));
    }
    if let Some(b) = bias {
        if b.dims() != [dout] {
            return Err(Error::shape("linear bias", &[dout], b.dims()));
        }
    }
    let rows = x.elem_count().checked_div(din).unwrap_or(0);
    let mut out_dims = dims;
    let last = out_dims.len() - 1; // rank >= 1: checked above
    out_dims[last] = dout;
    if let Some(r) = residual {
        if r.dims() != out_dims.as_slice() {
            return Err(Error::shape("linear residual", &out_dims, r.dims()));
        }
    }
    let tracked = x.track_op()
        || weight.track_op()
        || bias.is_some_and(Tensor::track_op)
        || residual.is_some_and(Tensor::track_op);
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let fast = rows > 0
        && dout > 0
        && cpu_f32(x)
        && cpu_f32(weight)
        && bias.is_none_or(cpu_f32)
        && residual.is_none_or(cpu_f32);
    if tracked || !fast {
        let y = linear_composed(x, weight, bias, (rows, din, dout), fast, &out_dims)?;
        let y = super::activate(&y, act)?;
        return Ok(match residual {
            Some(r) => (r + y)?,
            None => y,
        });
    }
    rows.checked_mul(dout).ok_or_else(|| {
        Error::InvalidArgument(format!("linear: {rows} x {dout} outputs overflow usize"))
    })?;
    let bias = bias
        .map(|b| with_cpu_f32(b, |s| Ok(s.to_vec())))
        .transpose()?;
    let residual = residual.map(Tensor::contiguous).transpose()?;
    let out = with_cpu_f32(x, |xs| {
        with_cpu_f32(weight, |ws| {
            let run = |res: Option<&[f32]>| {
                let epi = Epilogue {
                    bias: bias.as_deref(),
                    act,
                    residual: res,
                };
                Ok(gemm_rows(xs, ws, (rows, din, dout), epi))
            };
            match &residual {
                Some(r) => with_cpu_f32(r, |rs| run(Some(rs))),
                None => run(None),
            }
        })
    })?;
    Ok(Tensor::from_vec(out, out_dims, &Device::Cpu)?)
}

/// `x W^T + b` as `rows x dout` through candle's autograd: [`LinearOp`] for CPU f32 operands
/// (`cpu_f32`), candle's matmul and broadcast add elsewhere.
fn linear_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (rows, din, dout): (usize, usize, usize),
    cpu_f32: bool,
    out_dims: &[usize],
) -> Result<Tensor> {
    if cpu_f32 {
        rows.checked_mul(dout).ok_or_else(|| {
            Error::InvalidArgument(format!("linear: {rows} x {dout} outputs overflow usize"))
        })?;
        // The op's output has the final shape: a reshape would be one more graph node, whose
        // gradient candle's backward pass zero-fills and adds once more at full size.
        let op = LinearOp {
            rows,
            din,
            dout,
            out: Shape::from(out_dims),
        };
        let (x, w) = (x.contiguous()?, weight.contiguous()?);
        return Ok(match bias {
            Some(b) => x.apply_op3(&w, &b.contiguous()?, op)?,
            None => x.apply_op2(&w, op)?,
        });
    }
    let y = x
        .reshape((x.elem_count() / din.max(1), din))?
        .matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    Ok(y.reshape(out_dims)?)
}

/// `rows x dout` = `xs (rows x din)` times `ws (dout x din)` transposed (the `gemm` crate), then
/// `epi` (the bias, an activation, a residual) in one parallel pass.
pub(super) fn gemm_rows(
    xs: &[f32],
    ws: &[f32],
    (rows, din, dout): (usize, usize, usize),
    epi: Epilogue<'_>,
) -> Vec<f32> {
    let len = rows * dout;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    gemm_rows_into(
        xs,
        ws,
        (rows, din, dout),
        epi,
        &mut out.spare_capacity_mut()[..len],
    );
    // SAFETY: `gemm_rows_into` wrote all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// [`gemm_rows`] into `out` (`rows x dout`, row-major), which it writes whole: it may be
/// uninitialised. `din` is at least 1 (with `din = 0` the GEMM would write nothing).
pub(super) fn gemm_rows_into<'o>(
    xs: &[f32],
    ws: &[f32],
    (rows, din, dout): (usize, usize, usize),
    epi: Epilogue<'_>,
    out: &'o mut [MaybeUninit<f32>],
) -> &'o mut [f32] {
    assert!(
        din > 0 && out.len() == rows * dout && xs.len() >= rows * din && ws.len() >= dout * din,
        "gemm_rows_into: {rows} x {din} x {dout} with buffers {} / {} / {}",
        xs.len(),
        ws.len(),
        out.len()
    );
    // SAFETY: `out` holds `rows x dout` (row stride dout, column stride 1); `xs` is
    // `rows x din` row-major, `ws` `dout x din` row-major read as its transpose (`din x dout`:
    // row stride 1, column stride din); the three do not overlap (`out` is borrowed mutably).
    // `gemm` only writes the buffer (read_dst = false, depth din >= 1), so every element is
    // initialised afterwards.
    let out = unsafe {
        gemm::gemm(
            rows,
            dout,
            din,
            out.as_mut_ptr().cast::<f32>(),
            1,
            dout as isize,
            false,
            xs.as_ptr(),
            1,
            din as isize,
            ws.as_ptr(),
            din as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
        &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32])
    };
    epilogue_rows(out, dout, epi);
    out
}

/// The differentiable form: `(x, weight)` or `(x, weight, bias)`, all contiguous; the output
/// has shape `out` (`x`'s with the last dimension `dout`, `rows x dout` elements).
struct LinearOp {
    rows: usize,
    din: usize,
    dout: usize,
    out: Shape,
}

/// `gemm`'s parallelism over the pool's threads.
fn parallelism() -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

impl LinearOp {
    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> (CpuStorage, Shape) {
        let (rows, din, dout) = (self.rows, self.din, self.dout);
        let epi = Epilogue {
            bias: b,
            ..Epilogue::default()
        };
        let y = gemm_rows(x, w, (rows, din, dout), epi);
        (CpuStorage::F32(y), self.out.clone())
    }

    /// `(dx, dW, db)` for `dy` (`rows x dout`).
    fn backward(&self, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (rows, din, dout) = (self.rows, self.din, self.dout);
        let (mut dx, mut dw) = (
            Vec::with_capacity(rows * din),
            Vec::with_capacity(dout * din),
        );
        // SAFETY: dx (rows x din, row-major) = dy (rows x dout) W (dout x din); dW (dout x din)
        // = dy^T (dy read with row stride 1, column stride dout) x (rows x din). Both outputs
        // have the capacity, are only written (read_dst = false: every element is set before
        // `set_len`) and overlap nothing.
        unsafe {
            gemm::gemm(
                rows,
                din,
                dout,
                dx.as_mut_ptr(),
                1,
                din as isize,
                false,
                dy.as_ptr(),
                1,
                dout as isize,
                w.as_ptr(),
                1,
                din as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
            dx.set_len(rows * din);
            gemm::gemm(
                dout,
                din,
                rows,
                dw.as_mut_ptr(),
                1,
                din as isize,
                false,
                dy.as_ptr(),
                dout as isize,
                1,
                x.as_ptr(),
                1,
                din as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
            dw.set_len(dout * din);
        }
        // Column sums of dy: per-task partial sums over blocks of 256 rows.
        let db = dy
            .par_chunks(256 * dout)
            .map(|blk| {
                let mut s = vec![0f32; dout];
                for r in blk.chunks(dout) {
                    s.iter_mut().zip(r).for_each(|(s, &g)| *s += g);
                }
                s
            })
            .reduce(
                || vec![0f32; dout],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        (dx, dw, db)
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (dx, dw, db) = with_cpu_slices([x, w, dy], "segkit linear backward", |[x, w, dy]| {
            Ok(self.backward(x, w, dy))
        })?;
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw, w.shape(), w.device())?,
            Tensor::from_vec(db, self.dout, w.device())?,
        ))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "segkit-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_operand(s1, l1, "segkit linear")?;
        let w = cpu_operand(s2, l2, "segkit linear")?;
        Ok(self.forward(x, w, None))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "segkit-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [x, w, b] = cpu_operands([(s1, l1), (s2, l2), (s3, l3)], "segkit linear")?;
        Ok(self.forward(x, w, Some(b)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.grads(x, w, dy)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equals candle's matmul + broadcast add (with and without a bias, rank 2 and 4, a
    /// non-contiguous input), and rejects bad shapes.
    #[test]
    fn matches_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (37, 19), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 37, &dev)?;
        for x in [
            Tensor::randn(0f32, 1.0, (5, 19), &dev)?,
            Tensor::randn(0f32, 1.0, (2, 3, 7, 19), &dev)?,
            Tensor::randn(0f32, 1.0, (19, 6), &dev)?.t()?,
        ] {
            let rows = x.elem_count() / 19;
            let flat = x.contiguous()?.reshape((rows, 19))?.matmul(&w.t()?)?;
            for bias in [None, Some(&b)] {
                let want = match bias {
                    Some(b) => flat.broadcast_add(b)?,
                    None => flat.clone(),
                };
                let got = linear(&x, &w, bias)?;
                let mut dims = x.dims().to_vec();
                *dims.last_mut().unwrap() = 37;
                assert_eq!(got.dims(), &dims[..]);
                let d = (got.reshape((rows, 37))? - want)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert!(d < 1e-5, "{:?} bias {}: {d}", x.dims(), bias.is_some());
            }
        }
        let x = Tensor::randn(0f32, 1.0, (4, 18), &dev)?;
        assert!(linear(&x, &w, None).is_err());
        let x = Tensor::randn(0f32, 1.0, (4, 19), &dev)?;
        assert!(linear(&x, &w, Some(&b.narrow(0, 0, 5)?)).is_err());
        Ok(())
    }

    /// With gradients: the output and the gradients of `x`, `W` and `b` equal candle's
    /// matmul + broadcast add (rank 2 and 3 inputs, more rows than one column-sum block, with
    /// and without a bias).
    #[test]
    fn gradients_match_candle_ops() -> Result<()> {
        use candle_core::Var;
        let dev = Device::Cpu;
        let rel = |a: &Tensor, e: &Tensor| -> Result<f32> {
            let s = e.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
            Ok((a - e)?.abs()?.max_all()?.to_scalar::<f32>()? / s)
        };
        for shape in [vec![5, 19], vec![3, 200, 19]] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (37, 19), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 37, &dev)?)?;
            let mut out_shape = shape.clone();
            *out_shape.last_mut().unwrap() = 37;
            let r = Tensor::randn(0f32, 1.0, out_shape.as_slice(), &dev)?;
            for with_bias in [false, true] {
                let bias = with_bias.then(|| b.as_tensor());
                let got = linear(x.as_tensor(), w.as_tensor(), bias)?;
                let mut want = x.as_tensor().broadcast_matmul(&w.as_tensor().t()?)?;
                if let Some(b) = bias {
                    want = want.broadcast_add(b)?;
                }
                assert!(rel(&got, &want)? < 1e-5);
                let g1 = (got * &r)?.sum_all()?.backward()?;
                let g0 = (want * &r)?.sum_all()?.backward()?;
                let mut vars = vec![&x, &w];
                if with_bias {
                    vars.push(&b);
                }
                for v in vars {
                    let (a, e) = (
                        g1.get(v.as_tensor()).unwrap(),
                        g0.get(v.as_tensor()).unwrap(),
                    );
                    let d = rel(a, e)?;
                    assert!(d < 1e-5, "{shape:?} bias {with_bias} {:?}: {d}", v.dims());
                }
            }
        }
        Ok(())
    }

    /// `linear_act` and `linear_residual` equal candle's matmul, broadcast add, activation and
    /// add, on the fused tile path (depth 96), the `gemm` + pass path (depth 300) and with
    /// gradients (where they are candle's ops, and gradients reach every input); a residual of
    /// the wrong shape is an error.
    #[test]
    fn fused_epilogues_match_candle_ops() -> Result<()> {
        use candle_core::Var;
        let dev = Device::Cpu;
        let rel = |a: &Tensor, e: &Tensor| -> Result<f32> {
            let s = e.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
            Ok((a - e)?.abs()?.max_all()?.to_scalar::<f32>()? / s)
        };
        for (rows, din, dout) in [(2 * 151, 96, 70), (67, 300, 33)] {
            let x = Tensor::randn(0f32, 1.0, (2, rows / 2, din), &dev)?;
            let w = (Tensor::randn(0f32, 1.0, (dout, din), &dev)? / (din as f64).sqrt())?;
            let b = Tensor::randn(0f32, 1.0, dout, &dev)?;
            let r = Tensor::randn(0f32, 1.0, (2, rows / 2, dout), &dev)?;
            let y = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
            for act in [
                Activation::None,
                Activation::Relu,
                Activation::Gelu,
                Activation::Sigmoid,
            ] {
                let want = match act {
                    Activation::None => y.clone(),
                    Activation::Relu => y.relu()?,
                    Activation::Gelu => y.gelu_erf()?,
                    Activation::Sigmoid => candle_nn::ops::sigmoid(&y)?,
                };
                let d = rel(&linear_act(&x, &w, Some(&b), act)?, &want)?;
                assert!(d < 1e-5, "{rows}x{din}x{dout} {act:?}: {d}");
            }
            let d = rel(&linear_residual(&x, &w, Some(&b), &r)?, &(&r + &y)?)?;
            assert!(d < 1e-5, "{rows}x{din}x{dout} residual: {d}");
            let d = rel(
                &linear_residual(&x, &w, None, &r)?,
                &(&r + x.broadcast_matmul(&w.t()?)?)?,
            )?;
            assert!(d < 1e-5, "{rows}x{din}x{dout} residual without bias: {d}");
            assert!(linear_residual(&x, &w, Some(&b), &r.narrow(2, 0, dout - 1)?).is_err());

            let (xv, wv, bv, rv) = (
                Var::from_tensor(&x)?,
                Var::from_tensor(&w)?,
                Var::from_tensor(&b)?,
                Var::from_tensor(&r)?,
            );
            let got = linear_act(
                xv.as_tensor(),
                wv.as_tensor(),
                Some(bv.as_tensor()),
                Activation::Gelu,
            )?;
            let got =
                (linear_residual(xv.as_tensor(), wv.as_tensor(), None, rv.as_tensor())? + got)?;
            let xw = xv.as_tensor().broadcast_matmul(&wv.as_tensor().t()?)?;
            let want = ((xw.broadcast_add(bv.as_tensor())?.gelu_erf()? + xw)? + rv.as_tensor())?;
            assert!(rel(&got, &want)? < 1e-5);
            let g1 = got.sum_all()?.backward()?;
            let g0 = want.sum_all()?.backward()?;
            for v in [&xv, &wv, &bv, &rv] {
                let (a, e) = (
                    g1.get(v.as_tensor()).unwrap(),
                    g0.get(v.as_tensor()).unwrap(),
                );
                assert!(rel(a, e)? < 1e-5, "gradient of {:?}", v.dims());
            }
        }
        Ok(())
    }
}
