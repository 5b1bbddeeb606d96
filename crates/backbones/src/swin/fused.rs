//! Helpers of the fused f32 CPU inference path (the linear layers' fused epilogues are
//! [`segkit_core::ops::linear_gelu`] and [`segkit_core::ops::linear_residual`]).

use candle_core::{DType, Tensor};

use crate::Result;

/// Whether `t` can take the fused CPU path.
pub(crate) fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op()
}

/// Borrows the f32 data of a CPU tensor (made contiguous if it is not).
pub(crate) fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let data = match &*storage {
        candle_core::Storage::Cpu(s) => s.as_slice::<f32>()?,
        _ => {
            return Err(candle_core::Error::Msg("fused Swin op on a non-CPU tensor".into()).into())
        }
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(f(&data[a..b])),
        None => Err(candle_core::Error::Msg("fused Swin op on a strided tensor".into()).into()),
    }
}
