//! Fixture loading and comparison helpers for the parity tests.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

pub type Fixture = HashMap<String, Tensor>;

/// Loads `tests/fixtures/losses/<name>` (written by `tests/parity/gen_losses.py`).
pub fn load(name: &str) -> Fixture {
    let path = format!(
        "{}/../../tests/fixtures/losses/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {path}: {e} (run `cargo xtask fixtures losses`)"))
}

/// The tensor `key` of `f`.
pub fn get(f: &Fixture, key: &str) -> Tensor {
    f.get(key)
        .unwrap_or_else(|| panic!("fixture has no `{key}`"))
        .clone()
}

/// Whether `f` has `key`.
pub fn has(f: &Fixture, key: &str) -> bool {
    f.contains_key(key)
}

/// A one-element f32 fixture value.
pub fn scalar(f: &Fixture, key: &str) -> f32 {
    get(f, key).flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

/// A one-element i64 fixture value.
pub fn int(f: &Fixture, key: &str) -> i64 {
    get(f, key).flatten_all().unwrap().to_vec1::<i64>().unwrap()[0]
}

/// The i64 values of `key`.
pub fn ints(f: &Fixture, key: &str) -> Vec<i64> {
    get(f, key).flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// A trainable copy of the fixture tensor `key`.
pub fn var(f: &Fixture, key: &str) -> Var {
    Var::from_tensor(&get(f, key)).unwrap()
}

/// The gradient of `v` in `g` (zeros when `v` did not take part).
pub fn grad(g: &GradStore, v: &Var) -> Tensor {
    g.get(v.as_tensor())
        .cloned()
        .unwrap_or_else(|| v.as_tensor().zeros_like().unwrap())
}

/// Asserts `max |got - want| <= 1e-5 * max(1, max |want|)` (same shape), printing the measured
/// difference as `DIFF <what> <max abs diff> <max |ref|>` (run with `--nocapture` to collect).
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    let got = got.to_dtype(DType::F64).unwrap();
    let want = want.to_dtype(DType::F64).unwrap();
    let gd = got.dims().iter().product::<usize>();
    let wd = want.dims().iter().product::<usize>();
    assert_eq!(
        gd,
        wd,
        "{what}: element counts differ ({:?} vs {:?})",
        got.dims(),
        want.dims()
    );
    let g = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mut diff = 0f64;
    let mut refmax = 0f64;
    for (a, b) in g.iter().zip(&w) {
        assert!(a.is_finite(), "{what}: non-finite value {a}");
        diff = diff.max((a - b).abs());
        refmax = refmax.max(b.abs());
    }
    println!("DIFF {what} {diff:.3e} {refmax:.3e}");
    let tol = 1e-5 * refmax.max(1.0);
    assert!(
        diff <= tol,
        "{what}: max |diff| {diff:e} > {tol:e} (max |ref| {refmax:e})"
    );
}
