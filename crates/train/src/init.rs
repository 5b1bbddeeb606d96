//! Deterministic initial weights of a training run: [`segkit_core::init::mmseg_value`]
//! (mmseg's initialisation schemes, drawn from a per-parameter stream of the run's seed).

use candle_core::Tensor;

use crate::TrainResult;

/// Deterministic initial value of one parameter (see [`segkit_core::init::mmseg_value`]).
pub(crate) fn init_value(
    name: &str,
    shape: &[usize],
    seed: u64,
    zero_gamma: Option<&str>,
) -> TrainResult<Tensor> {
    Ok(segkit_core::init::mmseg_value(
        name, shape, seed, zero_gamma,
    )?)
}
