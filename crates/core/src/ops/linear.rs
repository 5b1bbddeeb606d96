//! [`linear`]: `x W^T + b` over the last dimension, as `torch.nn.functional.linear`.
//!
//! On CPU with f32 tensors that record no gradients it calls the `gemm` crate directly (the
//! GEMM candle's matmul uses, AVX-512 where the CPU has it) into an output buffer that is never
//! zero-filled: without a bias `gemm` writes every element, with one the buffer starts as the
//! broadcast bias and `gemm` accumulates onto it (no separate bias pass). candle's matmul
//! allocates its output with zeros first, then `gemm` overwrites them — ~6% of Swin-T's
//! forward. Everything else takes candle's ops (same values).
//!
//! # Shapes
//! `x`: `.. x din`, `weight`: `dout x din`, `bias`: `dout` -> `.. x dout`.

use candle_core::{DType, Device, Tensor};

use super::resize::with_cpu_f32;
use crate::{Error, Result};

/// `x W^T + b` over the last dimension of `x` (any rank >= 1); see the module docs.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
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
    let tracked = x.track_op() || weight.track_op() || bias.is_some_and(Tensor::track_op);
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let fast = !tracked
        && rows > 0
        && dout > 0
        && cpu_f32(x)
        && cpu_f32(weight)
        && bias.is_none_or(cpu_f32);
    if !fast {
        let y = x
            .reshape((x.elem_count() / din.max(1), din))?
            .matmul(&weight.t()?)?;
        let y = match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        return Ok(y.reshape(out_dims)?);
    }
    let len = rows.checked_mul(dout).ok_or_else(|| {
        Error::InvalidArgument(format!("linear: {rows} x {dout} outputs overflow usize"))
    })?;
    let bias = bias
        .map(|b| with_cpu_f32(b, |s| Ok(s.to_vec())))
        .transpose()?;
    let out = with_cpu_f32(x, |xs| {
        with_cpu_f32(weight, |ws| {
            Ok(gemm_rows(xs, ws, bias.as_deref(), rows, din, dout, len))
        })
    })?;
    Ok(Tensor::from_vec(out, out_dims, &Device::Cpu)?)
}

/// `rows x dout` = `xs (rows x din)` times `ws (dout x din)` transposed, plus `bias`.
fn gemm_rows(
    xs: &[f32],
    ws: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    din: usize,
    dout: usize,
    len: usize,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if let Some(b) = bias {
        for _ in 0..rows {
            out.extend_from_slice(b);
        }
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `out` has capacity for `rows x dout` (row stride dout, column stride 1); `xs` is
    // `rows x din` row-major, `ws` `dout x din` row-major read as its transpose (`din x dout`:
    // row stride 1, column stride din); the three do not overlap. With a bias the buffer is
    // initialised and read (dst = dst + x w^T); without, `gemm` only writes it (read_dst =
    // false), so every element is initialised before `set_len`.
    unsafe {
        gemm::gemm(
            rows,
            dout,
            din,
            out.as_mut_ptr(),
            1,
            dout as isize,
            bias.is_some(),
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
            par,
        );
        out.set_len(len);
    }
    out
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
}
