//! How long the global allocator (mimalloc) keeps freed memory before it gives it back to the
//! OS, per command.
//!
//! mimalloc purges on a timer: the first free after a purge starts the clock, and when the
//! delay has passed it decommits *every* free range of the arena, including ranges freed a
//! moment before. The next allocations of those ranges fault their pages in again, and the
//! kernel zeroes them (2 MiB at a time with transparent huge pages). With mimalloc's default
//! of 1 s, a forward pass that runs for several seconds is purged several times while it frees
//! and re-allocates the same large activations: Gated-SCNN-R101 at 512 x 1024 spent ~1 s of
//! CPU per run in the kernel's page zeroing, and its 32 MiB `layer3` outputs ran their 1x1
//! convolutions at ~120 instead of ~160 GFLOP/s (docs/PERFORMANCE.md).
//!
//! Inference commands therefore purge every [`INFERENCE_PURGE_DELAY_MS`] (jemalloc's default
//! decay of dirty pages is also 10 s). Training keeps mimalloc's default: a PSPNet step
//! frees gigabytes per phase, and the longer delay raised its peak resident memory by 14%
//! without a measurable gain. `MIMALLOC_PURGE_DELAY`, when set, always wins.

use std::ffi::{c_int, c_long};

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same index in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// The purge delay of the inference commands, in milliseconds.
pub const INFERENCE_PURGE_DELAY_MS: i64 = 10_000;

extern "C" {
    // mimalloc's option API, linked from libmimalloc-sys (the global allocator's library).
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// The purge delay mimalloc uses now, in milliseconds (-1: never purges).
#[allow(clippy::useless_conversion)] // `c_long` is 32 bits on Windows
pub fn purge_delay_ms() -> i64 {
    // SAFETY: a read of a mimalloc option; any index below `_mi_option_last` is valid.
    i64::from(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) })
}

/// Sets the purge delay for an inference command, unless the user set
/// `MIMALLOC_PURGE_DELAY`.
pub fn tune_for_inference() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let delay = c_long::try_from(INFERENCE_PURGE_DELAY_MS).unwrap_or(c_long::MAX);
    // SAFETY: mimalloc's options may be set at any time; the value is a plain integer.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, delay) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_sets_the_purge_delay_and_the_index_is_mimallocs() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the user's value wins; nothing to check
        }
        // mimalloc 3's default purge delay (1000 ms; 10 in mimalloc 2): no other option
        // defaults to these, so this also pins `MI_OPTION_PURGE_DELAY` to the right option.
        assert!(
            matches!(purge_delay_ms(), 1000 | 10),
            "{}",
            purge_delay_ms()
        );
        tune_for_inference();
        assert_eq!(purge_delay_ms(), INFERENCE_PURGE_DELAY_MS);
    }
}
