//! Deterministic synthetic weights for parity tests (feature `testing`).
//!
//! A weight is a pure function of its state-dict key and element index, so a parity fixture
//! stores only the input and the reference outputs, yet checks every key name and every layer of
//! a full-size model. The Python twin (`tests/parity/synth.py`) computes bit-identical values.
//!
//! Definition, for key `k` (UTF-8 bytes), element `i` (row-major) of a tensor of shape `s`:
//! - `seed = fnv1a64(k)`; `z = splitmix64(seed + i * 0x9E3779B97F4A7C15)` (wrapping);
//!   `u = (z >> 40) / 2^24`, exactly representable, in `[0, 1)`;
//! - `*running_var`: `0.5 + u`; `*running_mean`: `0.2 (u - 0.5)`; `*num_batches_tracked`: 0;
//! - 0-d tensors (scale parameters such as DANet's `gamma`): `0.5 + u` (non-zero, so attention
//!   branches matter);
//! - 1-d `*weight` (norm scales): `0.5 + u`; other 1-d tensors (biases): `0.2 (u - 0.5)`;
//! - n-d tensors, n >= 2: `(2u - 1) / sqrt(fan_in)`, `fan_in = prod(s[1..])` (PyTorch's
//!   default init range).
//!
//! All arithmetic is done in f64 and rounded once to the target dtype.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a, 64 bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One splitmix64 step applied to `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64 random bits of element `i` of the stream seeded by `seed` (`seed = fnv1a64(key)`):
/// `splitmix64(seed + i * 0x9E3779B97F4A7C15)`, the `z` of the module docs.
pub fn stream_bits(seed: u64, i: u64) -> u64 {
    splitmix64(seed.wrapping_add(i.wrapping_mul(GOLDEN)))
}

/// `n` values `u = (z >> 40) / 2^24` in `[0, 1)` of the stream `key` (Python: `synth.uniform`).
pub fn uniform(key: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(key.as_bytes());
    (0..n as u64)
        .map(|i| (stream_bits(seed, i) >> 40) as f64 / (1u64 << 24) as f64)
        .collect()
}

/// The values of the synthetic tensor `key` of shape `dims`, row-major, in f64.
pub fn synthetic_values(key: &str, dims: &[usize]) -> Vec<f64> {
    let n: usize = dims.iter().product();
    let seed = fnv1a64(key.as_bytes());
    let last = key.rsplit('.').next().unwrap_or(key);
    let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
    let bound = 1.0 / (fan_in as f64).sqrt();
    (0..n)
        .map(|i| {
            let z = splitmix64(seed.wrapping_add((i as u64).wrapping_mul(GOLDEN)));
            let u = (z >> 40) as f64 / (1u64 << 24) as f64;
            if last == "running_var" {
                0.5 + u
            } else if last == "running_mean" {
                0.2 * (u - 0.5)
            } else if last == "num_batches_tracked" {
                0.0
            } else if dims.is_empty() {
                0.5 + u
            } else if dims.len() == 1 {
                if last == "weight" {
                    0.5 + u
                } else {
                    0.2 * (u - 0.5)
                }
            } else {
                (2.0 * u - 1.0) * bound
            }
        })
        .collect()
}

/// The synthetic tensor `key` with shape `shape`.
pub fn synthetic_tensor(
    key: &str,
    shape: impl Into<Shape>,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let shape = shape.into();
    let v = synthetic_values(key, shape.dims());
    Tensor::from_vec(v, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)
}

/// An input batch with values `U(-2, 2)` from key `key` (Python: `synth.synthetic_input`).
pub fn synthetic_input(
    key: &str,
    shape: impl Into<Shape>,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    let seed = fnv1a64(key.as_bytes());
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let z = splitmix64(seed.wrapping_add((i as u64).wrapping_mul(GOLDEN)));
            let u = (z >> 40) as f64 / (1u64 << 24) as f64;
            (4.0 * u - 2.0) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, dev)
}

/// A `VarBuilder` backend that answers every request with the synthetic tensor of that key.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyntheticBackend;

impl candle_nn::var_builder::SimpleBackend for SyntheticBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        synthetic_tensor(name, s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("synthetic weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `VarBuilder` over [`SyntheticBackend`].
pub fn synthetic_var_builder(dtype: DType, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(SyntheticBackend), dtype, dev.clone())
}

/// The variables of `varmap` by key, each set to its synthetic value (trainable variables
/// that hold the parity fixtures' weights: build a model over
/// `VarBuilder::from_varmap(&varmap, ..)`, then call this).
pub fn set_synthetic(
    varmap: &candle_nn::VarMap,
) -> candle_core::Result<std::collections::BTreeMap<String, candle_core::Var>> {
    let vars: std::collections::BTreeMap<String, candle_core::Var> = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned VarMap lock".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &vars {
        v.set(&synthetic_tensor(k, v.dims(), v.dtype(), v.device())?)?;
    }
    Ok(vars)
}

/// [`SyntheticBackend`]'s tensors with some keys multiplied by a factor (a generator's scaled
/// output layers, say), optionally recording every tensor handed out (to save the model as a
/// checkpoint afterwards).
///
/// ```
/// use candle_core::{DType, Device};
/// use segkit_core::testing::{synthetic_tensor, SyntheticWeights};
/// let w = SyntheticWeights::default().scaled("head.weight", 16.0).recording();
/// let vb = w.var_builder(DType::F32, &Device::Cpu);
/// let t = vb.get((2, 3), "head.weight")?;
/// let plain = synthetic_tensor("head.weight", (2, 3), DType::F32, &Device::Cpu)?;
/// assert_eq!(t.to_vec2::<f32>()?, (plain * 16.0)?.to_vec2::<f32>()?);
/// assert_eq!(w.recorded().len(), 1);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct SyntheticWeights {
    scales: Vec<(String, f64)>,
    record: Option<std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Tensor>>>>,
}

impl SyntheticWeights {
    /// Multiplies the tensor of `key` by `factor`.
    pub fn scaled(mut self, key: &str, factor: f64) -> Self {
        self.scales.push((key.to_string(), factor));
        self
    }

    /// Records every tensor handed out ([`SyntheticWeights::recorded`]); clones share the record.
    pub fn recording(mut self) -> Self {
        self.record = Some(Default::default());
        self
    }

    /// The tensors handed out so far, by key (empty unless [`SyntheticWeights::recording`]).
    pub fn recorded(&self) -> std::collections::BTreeMap<String, Tensor> {
        match &self.record {
            Some(r) => r.lock().map(|m| m.clone()).unwrap_or_default(),
            None => Default::default(),
        }
    }

    /// A `VarBuilder` over these weights (sharing the record).
    pub fn var_builder(&self, dtype: DType, dev: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, dev.clone())
    }
}

impl candle_nn::var_builder::SimpleBackend for SyntheticWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut t = synthetic_tensor(name, s, dtype, dev)?;
        if let Some((_, f)) = self.scales.iter().find(|(k, _)| k == name) {
            t = t.affine(*f, 0.0)?;
        }
        if let Some(r) = &self.record {
            if let Ok(mut m) = r.lock() {
                m.insert(name.to_string(), t.clone());
            }
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("synthetic weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// The bit patterns of every element of a float tensor (as f32), row-major: for tests that
/// check two computations agree bit for bit (`-0.0` and `0.0` differ, equal NaNs compare
/// equal).
pub fn f32_bits(t: &Tensor) -> candle_core::Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

/// Reports a test that cannot check what it is for on this machine: prints
/// `skipped: WHAT (WHY)` and appends the line to the file named by `SEGKIT_SKIP_LOG`, if set
/// (`.ci/run` lists them at the end; cargo hides a passing test's output). The caller returns
/// after it.
pub fn skip(what: &str, why: &str) {
    let line = format!("skipped: {what} ({why})");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("SEGKIT_SKIP_LOG") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        if let Err(e) = file.and_then(|mut f| writeln!(f, "{line}")) {
            eprintln!(
                "cannot append to SEGKIT_SKIP_LOG {}: {e}",
                path.to_string_lossy()
            );
        }
    }
}

/// [`skip`], except under CI (environment variable `CI` set to anything but `""`, `0` or
/// `false`), where the check must run: it panics with the reason instead.
pub fn skip_unless_ci(what: &str, why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    assert!(!ci, "CI must run {what}, but {why}");
    skip(what, why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Same numbers as tests/parity/synth.py's self-test.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let v = synthetic_values("conv1.weight", &[2, 3, 1, 1]);
        assert!(v.iter().all(|x| x.abs() <= 1.0 / 3f64.sqrt()));
        let rv = synthetic_values("bn1.running_var", &[4]);
        assert!(rv.iter().all(|x| (0.5..1.5).contains(x)));
    }
}
