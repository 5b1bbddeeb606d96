//! Shared helpers for segkit's cross-crate and parity tests (`tests/tests/*.rs`).
//!
//! Fixtures live in `tests/fixtures/<area>/<name>.safetensors`; they are written by the Python
//! generators in `tests/parity/gen_*.py` (run by `cargo xtask fixtures`) from the reference
//! implementations and hold inputs and reference outputs only; weights are synthetic
//! (`segkit_core::testing`).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

pub mod sampled;

/// The repository README's Rust snippets, compiled as doctests (`no_run`: they read files a
/// reader supplies). segkit-tests is not published, so it may include a file from outside it.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct RootReadmeDoctests;

pub use sampled::{
    assert_sampled_close, assert_sampled_close_rtol, check_sampled, check_sampled_rtol,
};

/// Path of a fixture file, relative to `tests/fixtures/`.
pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Loads every tensor of a fixture file (on CPU, dtypes as stored).
pub fn load_fixture(rel: &str) -> HashMap<String, Tensor> {
    let p = fixture_path(rel);
    candle_core::safetensors::load(&p, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", p.display()))
}

/// Gets one tensor from a loaded fixture, panicking with the key name if absent.
pub fn get<'a>(f: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    f.get(key).unwrap_or_else(|| {
        panic!(
            "fixture has no tensor `{key}`; it has {:?}",
            f.keys().collect::<Vec<_>>()
        )
    })
}

/// max |got - want| and max |want|, as f64.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> (f64, f64) {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let g = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let w = want
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let mut d = 0f64;
    let mut m = 0f64;
    for (a, b) in g.iter().zip(w.iter()) {
        assert!(a.is_finite(), "non-finite output");
        d = d.max((a - b).abs());
        m = m.max(b.abs());
    }
    (d, m)
}

/// Asserts DESIGN.md's tolerance: `max|got - want| <= rtol * max(1, max|want|)`, with the
/// default `rtol = 1e-4`; prints the measured error so test logs record it.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_close_rtol(what, got, want, 1e-4)
}

/// [`assert_close`] with an explicit relative tolerance (a test that uses anything but 1e-4
/// must say why next to the call).
pub fn assert_close_rtol(what: &str, got: &Tensor, want: &Tensor, rtol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (d, m) = max_abs_diff(got, want);
    let tol = rtol * m.max(1.0);
    eprintln!("{what}: max|diff| = {d:.3e}, max|ref| = {m:.3e}, tol = {tol:.3e}");
    assert!(
        d <= tol,
        "{what}: max|diff| {d:e} > tol {tol:e} (max|ref| {m:e})"
    );
}
