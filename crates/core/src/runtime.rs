//! Process-wide CPU settings segkit applies for the library user: no environment variable is
//! needed for full speed.
//!
//! candle 0.11 runs its element-wise ops on tensors of 64k+ elements (the additions that sum
//! gradients, the optimizer's updates, broadcast ops) on its own "barrier pool": one thread per
//! core besides the caller (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the core
//! count). By default each worker spins ~25 000 iterations after every op before it parks.
//! segkit's kernels (convolutions, BatchNorm, resize, losses) run on rayon's pool, so on a
//! small machine those spinning workers take cores from them: a training step on 2 cores spent
//! ~35% more CPU time (and up to 1.6x the wall time) with the spinning pool than without it.
//!
//! What costs the time is the spinning, not the pool. [`configure_cpu_threads`] sets
//! `CANDLE_BARRIER_POOL_SPIN_LIMIT=0` unless the variable is already set: a worker parks as
//! soon as its share of an op is done and is woken (one `unpark`) by the next op. candle's
//! element-wise ops then run on every core and leave them to rayon in between. Measured on 2
//! cores against the single-threaded pool segkit used before (`CANDLE_NUM_THREADS=1`), old and
//! new settings alternating: PSPNet-R50-D8 training steps 5-10% faster at 512x512 and at
//! 512x1024 (the `zeros_like + add` that sums each gradient in candle's backward pass runs on
//! both cores), the demo model and inference level (docs/PERFORMANCE.md, "sixth").
//!
//! candle reads both variables once, the first time an element-wise op runs. Values the user
//! sets always win (`CANDLE_NUM_THREADS=1` still gives the single-threaded pool). The function
//! runs by itself:
//! - before `main` on Linux (an ELF `.init_array` entry of this module, so before any thread or
//!   tensor exists), in every binary that links segkit-core's layers or ops;
//! - on the first `ConvNormAct` built and the first BatchNorm training pass, for platforms
//!   without the constructor.
//!
//! Calling it again, or after candle's pool exists, changes nothing.

use std::sync::atomic::{AtomicU8, Ordering};

/// The variable candle reads to size its element-wise pool (segkit leaves it alone).
pub const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// The variable candle reads for how long a pool worker spins before it parks.
pub const CANDLE_SPIN_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// 0: not configured yet; 1: segkit set the variable; 2: the user had set it.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Who decided how candle's element-wise pool waits for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuThreads {
    /// segkit set `CANDLE_BARRIER_POOL_SPIN_LIMIT=0`: candle's workers park after every op.
    SegkitDefault,
    /// The variable was already set (by the user or the environment); segkit left it alone.
    UserSet,
}

/// Sets `CANDLE_BARRIER_POOL_SPIN_LIMIT=0` unless it is set; see the module docs. Idempotent.
#[inline(never)]
pub fn configure_cpu_threads() -> CpuThreads {
    match STATE.load(Ordering::Acquire) {
        1 => return CpuThreads::SegkitDefault,
        2 => return CpuThreads::UserSet,
        _ => {}
    }
    let state = if std::env::var_os(CANDLE_SPIN_VAR).is_some() {
        2
    } else {
        // Edition 2021: `set_var` is safe. It runs before `main` on Linux (one thread), and
        // elsewhere on the first layer built, before candle's pool reads the variable.
        std::env::set_var(CANDLE_SPIN_VAR, "0");
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

/// Runs `f` on a worker thread of rayon's pool and returns its result: inline when the
/// calling thread already is one, else on the global pool while the caller waits.
///
/// segkit's kernels split their work with rayon. Called from a thread outside the pool (a
/// program's main thread), every such op hands its job to the pool and puts the caller to
/// sleep until the job is done: two thread switches per op. A training step's backward pass
/// runs thousands of ops, many on small tensors (pooled PSP branches, BatchNorm statistics,
/// 1x1 maps), where those switches cost as much as the work. Run from a worker, an op pushes
/// its tasks on the worker's own queue, and the other workers steal them. Measured on 2 cores
/// (docs/PERFORMANCE.md, "twelfth"): the demo model's training step ~11% faster; inference
/// passes, whose ops are large, level.
///
/// [`segkit_train`'s `Trainer::step`](https://docs.rs/segkit-train) runs each step this way.
/// A library user with their own loop gets the same by wrapping a step (forward, loss,
/// backward, optimizer) in it. Results are the same either way: no kernel's result depends on
/// the thread it starts on.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // `scope` runs its closure on a worker of the global pool and blocks until it returns (a
    // panic there resumes here).
    rayon::scope(|_| f())
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
    fn candle_pool_parks_without_any_variable() {
        #[cfg(target_os = "linux")]
        assert!(cpu_threads().is_some(), "the constructor did not run");
        let decided = configure_cpu_threads();
        let v = std::env::var(CANDLE_SPIN_VAR).ok();
        match decided {
            CpuThreads::SegkitDefault => assert_eq!(v.as_deref(), Some("0")),
            CpuThreads::UserSet => assert!(v.is_some()),
        }
        assert_eq!(configure_cpu_threads(), decided, "idempotent");
    }

    #[test]
    fn on_pool_runs_on_a_worker_and_returns_the_result() {
        let outside = rayon::current_thread_index();
        let (inside, v) = on_pool(|| (rayon::current_thread_index(), 41 + 1));
        assert_eq!(v, 42);
        assert!(inside.is_some(), "not run on a rayon worker");
        // Nested: already on a worker, so it runs inline on the same thread.
        let nested = on_pool(|| {
            let me = std::thread::current().id();
            on_pool(move || std::thread::current().id() == me)
        });
        assert!(nested);
        assert_eq!(rayon::current_thread_index(), outside);
    }
}
