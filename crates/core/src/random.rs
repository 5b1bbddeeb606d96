//! A seedable per-thread random source for training-time randomness inside models (dropout
//! masks), so that a training run — and a run resumed from a checkpoint — is reproducible.
//!
//! candle's CPU `Tensor::rand` cannot be seeded. Layers that need random numbers in training
//! call [`uniform`]: when the calling thread has a seed ([`set_thread_state`]), the values come
//! from a SplitMix64 stream whose whole state is one `u64` ([`thread_state`], saved in
//! training checkpoints); without a seed they come from candle's unseeded generator, as
//! before. The state is per thread, so concurrent trainings (e.g. parallel tests) do not
//! disturb each other; a model's forward pass runs on the caller's thread.
//!
//! ```
//! use candle_core::Device;
//! use segkit_core::random;
//! random::set_thread_state(Some(42));
//! let a = random::uniform(&[2, 3], &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
//! random::set_thread_state(Some(42));
//! let b = random::uniform(&[2, 3], &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
//! assert_eq!(a, b);
//! assert!(a.iter().all(|v| (0.0..1.0).contains(v)));
//! random::set_thread_state(None);
//! ```

use std::cell::Cell;

use candle_core::{Device, Tensor};

use crate::Result;

thread_local! {
    static STATE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Seeds (`Some`) or unseeds (`None`) the calling thread's stream. A saved
/// [`thread_state`] restores the stream exactly where it was.
pub fn set_thread_state(state: Option<u64>) {
    STATE.with(|s| s.set(state));
}

/// The calling thread's stream state (`None` when unseeded).
pub fn thread_state() -> Option<u64> {
    STATE.with(Cell::get)
}

/// Runs `f` with the calling thread's stream at `*state`, then stores where `f` left the
/// stream in `*state` and puts the thread's previous stream back: a caller that owns its
/// stream (a trainer's model-side draws) draws from the thread's source without disturbing
/// it, on whichever thread it runs.
pub fn with_thread_state<R>(state: &mut u64, f: impl FnOnce() -> R) -> R {
    let prev = thread_state();
    set_thread_state(Some(*state));
    let out = f();
    *state = thread_state().unwrap_or(0);
    set_thread_state(prev);
    out
}

/// One SplitMix64 step: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An f32 tensor of `shape` with values uniform in `[0, 1)`: from the thread's seeded stream
/// when it has one (24 random bits per value), else from candle's generator.
pub fn uniform(shape: &[usize], device: &Device) -> Result<Tensor> {
    match thread_state() {
        Some(mut s) => {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| (splitmix64(&mut s) >> 40) as f32 * (1.0 / (1u64 << 24) as f32))
                .collect();
            set_thread_state(Some(s));
            Ok(Tensor::from_vec(v, shape, device)?)
        }
        None => Ok(Tensor::rand(0f32, 1f32, shape, device)?),
    }
}
