//! `segkit_core::checkpoint` against real files written by `torch.save` and `safetensors`
//! (tests/parity/gen_checkpoints.py; reference values in expected.safetensors).
//!
//! The cases are grouped by topic in `checkpoint/`: recognising and reading the formats, the
//! legacy (pre-1.6) format, files that are not (readable) checkpoints, hostile files (one test
//! per crash class of issue 14), building models with typed errors, and saving.

// A test crate's root resolves modules next to itself: point them into `checkpoint/`.
#[path = "checkpoint/bad_files.rs"]
mod bad_files;
#[path = "checkpoint/formats.rs"]
mod formats;
#[path = "checkpoint/hostile.rs"]
mod hostile;
#[path = "checkpoint/legacy.rs"]
mod legacy;
#[path = "checkpoint/model_loading.rs"]
mod model_loading;
#[path = "checkpoint/saving.rs"]
mod saving;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use segkit_core::checkpoint::StateDict;

type R = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/checkpoints")
        .join(name)
}

/// The reference tensors of one case, keyed without the `<case>.` prefix.
fn expected(case: &str) -> HashMap<String, Tensor> {
    let all = candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu)
        .expect("expected.safetensors (run tests/parity/gen_checkpoints.py)");
    let p = format!("{case}.");
    all.into_iter()
        .filter_map(|(k, t)| k.strip_prefix(&p).map(|k| (k.to_string(), t)))
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("tensor values")
}

/// Same keys, dtypes, shapes and exactly the same values (bool is stored and read as u8).
fn assert_matches(sd: &StateDict, want: &HashMap<String, Tensor>, what: &str) {
    let mut got: Vec<&str> = sd.keys().collect();
    let mut keys: Vec<&str> = want.keys().map(String::as_str).collect();
    got.sort();
    keys.sort();
    assert_eq!(got, keys, "{what}: keys");
    for (k, w) in want {
        let t = sd.get(k).expect("key checked above");
        assert_eq!(t.dtype(), w.dtype(), "{what}: dtype of {k}");
        assert_eq!(t.dims(), w.dims(), "{what}: shape of {k}");
        assert_eq!(values(t), values(w), "{what}: values of {k}");
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}
