//! [`transpose_last2`]: `x.transpose(-2, -1).contiguous()` of a rank-3 tensor, as one blocked,
//! parallel copy on CPU (tokens `B x L x C` to channel-major maps `B x C x L` and back). candle's
//! strided copy walks the source element by element (2.6% of Swin-T's forward went to turning
//! its four stages into NCHW maps).

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::resize::{alloc_output, with_cpu_f32};
use crate::{Error, Result};

/// Side of the square blocks copied at once: 16 x 16 f32 = one KiB read and written per block.
const BLOCK: usize = 16;

/// `B x M x N` -> `B x N x M` (the last two dimensions swapped), contiguous. CPU f32 tensors
/// that record no gradient take a blocked parallel copy; anything else takes candle's
/// `transpose` + `contiguous`, which also carries gradients.
pub fn transpose_last2(x: &Tensor) -> Result<Tensor> {
    let (b, m, n) = x.dims3().map_err(|_| {
        Error::InvalidArgument(format!(
            "transpose_last2: expected a B x M x N tensor, got shape {:?}",
            x.dims()
        ))
    })?;
    if x.track_op() || !x.device().is_cpu() || x.dtype() != DType::F32 || x.elem_count() == 0 {
        return Ok(x.transpose(1, 2)?.contiguous()?);
    }
    let x = x.contiguous()?;
    let out = with_cpu_f32(&x, |xs| {
        let mut out = alloc_output(xs.len());
        // One task per image and band of BLOCK output rows (source columns).
        out.par_chunks_mut(n * m)
            .zip(xs.par_chunks(m * n))
            .flat_map(|(img, src)| {
                img.par_chunks_mut(BLOCK * m)
                    .enumerate()
                    .map(move |(band, dst)| (src, band * BLOCK, dst))
            })
            .for_each(|(src, j0, dst)| {
                let nj = dst.len() / m;
                for i0 in (0..m).step_by(BLOCK) {
                    let ni = BLOCK.min(m - i0);
                    for jj in 0..nj {
                        let row = &mut dst[jj * m + i0..][..ni];
                        for (ii, d) in row.iter_mut().enumerate() {
                            *d = src[(i0 + ii) * n + j0 + jj];
                        }
                    }
                }
            });
        Ok(out)
    })?;
    Ok(Tensor::from_vec(out, (b, n, m), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::transpose_last2;
    use crate::Result;

    /// Equal to candle's transpose for sizes that are and are not multiples of the block, one
    /// and several images; with gradients it keeps candle's op (and its backward pass).
    #[test]
    fn equals_candle_transpose() -> Result<()> {
        for (b, m, n) in [
            (1, 16, 16),
            (2, 37, 53),
            (3, 1, 40),
            (1, 100, 7),
            (2, 64, 96),
        ] {
            let x = Tensor::arange(0f32, (b * m * n) as f32, &Device::Cpu)?.reshape((b, m, n))?;
            let want = x
                .transpose(1, 2)?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let got = transpose_last2(&x)?;
            assert_eq!(got.dims(), [b, n, m]);
            assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, want, "{b}x{m}x{n}");
        }
        let v = Var::from_tensor(&Tensor::ones(
            (2, 3, 5),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)?;
        let y = transpose_last2(v.as_tensor())?;
        assert!(y.sum_all()?.backward()?.get(v.as_tensor()).is_some());
        assert!(transpose_last2(&Tensor::ones(
            (2, 3),
            candle_core::DType::F32,
            &Device::Cpu
        )?)
        .is_err());
        Ok(())
    }
}
