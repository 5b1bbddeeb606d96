//! Process-wide CPU settings segkit applies for the library user: no environment variable is
//! needed for full speed.
//!
//! candle 0.11 runs its element-wise ops on tensors of 64k+ elements (the additions that sum
//! gradients, the optimizer's updates, broadcast ops) on its own "barrier pool": one thread per
//! core besides the caller, each spinning ~25 000 iterations after every op before it parks.
//! segkit's kernels (convolutions, BatchNorm, resize, losses) run on rayon's pool, so on a
//! small machine the spinning workers take cores from them: a training step on 2 cores spent
//! ~35% more CPU time (and up to 1.6x the wall time) with the pool than without it, and the
//! element-wise ops themselves gain little from a second thread. Inference CPU time is the
//! same either way (it runs few candle element-wise ops).
//!
//! candle sizes that pool once, from `CANDLE_NUM_THREADS`, the first time an element-wise op
//! runs. [`configure_cpu_threads`] sets `CANDLE_NUM_THREADS=1` (no worker: element-wise ops run
//! on the calling thread) unless the variable is already set — the user's value always wins —
//! and it runs by itself:
//! - before `main` on Linux (an ELF `.init_array` entry of this module, so before any thread or
//!   tensor exists), in every binary that links segkit-core's layers or ops;
//! - on the first `ConvNormAct` built and the first BatchNorm training pass, for platforms
//!   without the constructor.
//!
//! Calling it again, or after candle's pool exists, changes nothing.

use std::sync::atomic::{AtomicU8, Ordering};

/// The variable candle reads to size its element-wise pool.
pub const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// 0: not configured yet; 1: segkit set the variable; 2: the user had set it.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Who decided the size of candle's element-wise pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuThreads {
    /// segkit set `CANDLE_NUM_THREADS=1`: candle's element-wise ops run on the calling thread.
    SegkitDefault,
    /// The variable was already set (by the user or the environment); segkit left it alone.
    UserSet,
}

/// Sets `CANDLE_NUM_THREADS=1` unless it is set; see the module docs. Idempotent.
#[inline(never)]
pub fn configure_cpu_threads() -> CpuThreads {
    match STATE.load(Ordering::Acquire) {
        1 => return CpuThreads::SegkitDefault,
        2 => return CpuThreads::UserSet,
        _ => {}
    }
    let state = if std::env::var_os(CANDLE_THREADS_VAR).is_some() {
        2
    } else {
        // Edition 2021: `set_var` is safe. It runs before `main` on Linux (one thread), and
        // elsewhere on the first layer built, before candle's pool reads the variable.
        std::env::set_var(CANDLE_THREADS_VAR, "1");
        1
    };
    STATE.store(state, Ordering::Release);
    if state == 1 {
        CpuThreads::SegkitDefault
    } else {
        CpuThreads::UserSet
    }
}

/// What [`configure_cpu_threads`] decided, if it has run.
pub fn cpu_threads() -> Option<CpuThreads> {
    match STATE.load(Ordering::Acquire) {
        1 => Some(CpuThreads::SegkitDefault),
        2 => Some(CpuThreads::UserSet),
        _ => None,
    }
}

#[cfg(target_os = "linux")]
extern "C" fn configure_before_main() {
    configure_cpu_threads();
}

/// Run by the loader before `main`. It lives in this module, next to
/// [`configure_cpu_threads`] (which the layers call), so that the linker, pulling that
/// function's object file, takes this entry with it.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static CONFIGURE_BEFORE_MAIN: extern "C" fn() = configure_before_main;

#[cfg(test)]
mod tests {
    use super::*;

    /// The library default: in this test binary nobody called `configure_cpu_threads`, yet the
    /// variable is set (by the constructor) unless the environment set it first.
    #[test]
    fn candle_pool_is_single_threaded_without_any_variable() {
        #[cfg(target_os = "linux")]
        assert!(cpu_threads().is_some(), "the constructor did not run");
        let decided = configure_cpu_threads();
        let v = std::env::var(CANDLE_THREADS_VAR).ok();
        match decided {
            CpuThreads::SegkitDefault => assert_eq!(v.as_deref(), Some("1")),
            CpuThreads::UserSet => assert!(v.is_some()),
        }
        assert_eq!(configure_cpu_threads(), decided, "idempotent");
    }
}
