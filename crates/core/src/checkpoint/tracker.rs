//! A `VarBuilder` over a [`StateDict`] that records which keys a model used and turns lookup
//! failures into typed errors.

use std::collections::HashSet;
use std::fmt::Display;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::{is_ignored_key, StateDict};
use crate::Error;

/// How many similar keys a [`Error::MissingWeight`] suggests.
const HINTS: usize = 5;

struct Inner {
    sd: StateDict,
    /// Keys handed out (or found with the wrong shape).
    used: Mutex<HashSet<String>>,
    /// Typed errors of failed lookups, in order; the first is the first thing that went wrong.
    errors: Mutex<Vec<Error>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tracks the use of a [`StateDict`]'s tensors by the models built from it.
///
/// [`load_model`] and [`load_model_lenient`] cover the usual case (one model, one checkpoint).
/// Use a tracker directly to build several parts from one checkpoint and check at the end
/// that, together, they used every key:
///
/// ```
/// # fn main() -> segkit_core::Result<()> {
/// use candle_core::{DType, Device, Tensor};
/// use segkit_core::checkpoint::{StateDict, WeightTracker};
///
/// let dev = Device::Cpu;
/// let mut sd = StateDict::new();
/// sd.insert("backbone.w", Tensor::ones((2, 2), DType::F32, &dev)?);
/// sd.insert("head.w", Tensor::ones(2, DType::F32, &dev)?);
///
/// let tracker = WeightTracker::new(&sd);
/// let vb = tracker.var_builder(DType::F32, &dev);
/// let backbone = vb.pp("backbone").get((2, 2), "w")?;
/// assert_eq!(tracker.unused_keys(), ["head.w"]);
/// let head = vb.pp("head").get(2, "w")?;
/// tracker.check_all_used()?;
/// # let _ = (backbone, head);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct WeightTracker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WeightTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightTracker")
            .field("keys", &self.inner.sd.len())
            .field("used", &lock(&self.inner.used).len())
            .field("errors", &lock(&self.inner.errors).len())
            .finish()
    }
}

impl WeightTracker {
    /// A tracker over `sd` (cheap: the state dict's tensors are shared, not copied).
    pub fn new(sd: &StateDict) -> Self {
        Self {
            inner: Arc::new(Inner {
                sd: sd.clone(),
                used: Mutex::new(HashSet::new()),
                errors: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A `VarBuilder` whose default dtype is `dtype` and whose tensors are moved to `device`.
    ///
    /// A tensor is converted only when its dtype or device differs from the requested one.
    /// A missing key or a wrong shape fails the lookup and records a typed
    /// [`Error::MissingWeight`] / [`Error::ShapeMismatch`] (see [`WeightTracker::typed_error`]).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(Backend {
                inner: self.inner.clone(),
            }),
            dtype,
            device.clone(),
        )
    }

    /// The keys looked up so far, sorted.
    pub fn used_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.inner.used).iter().cloned().collect();
        v.sort();
        v
    }

    /// The checkpoint keys never looked up, sorted, leaving out keys that have no effect at
    /// inference (see [`is_ignored_key`]).
    pub fn unused_keys(&self) -> Vec<String> {
        let used = lock(&self.inner.used);
        self.inner
            .sd
            .keys()
            .filter(|k| !used.contains(*k) && !is_ignored_key(k))
            .map(str::to_string)
            .collect()
    }

    /// Fails with [`Error::UnexpectedWeights`] if [`WeightTracker::unused_keys`] is not empty.
    pub fn check_all_used(&self) -> crate::Result<()> {
        let keys = self.unused_keys();
        if keys.is_empty() {
            Ok(())
        } else {
            Err(Error::UnexpectedWeights { keys })
        }
    }

    /// Replaces a build error by the typed error recorded for it, if there is one.
    ///
    /// A failed lookup reaches the model as a `candle_core::Error` carrying only a message;
    /// the tracker kept the typed error. It is returned when `err`'s message contains it (so
    /// that a lookup failure the model recovered from, e.g. an optional weight, is not
    /// blamed for an unrelated error); otherwise `err` is returned unchanged.
    pub fn typed_error<E: From<Error> + Display>(&self, err: E) -> E {
        let text = err.to_string();
        let mut errors = lock(&self.inner.errors);
        match errors.iter().position(|e| text.contains(&e.to_string())) {
            Some(i) => E::from(errors.remove(i)),
            None => err,
        }
    }

    /// Takes the typed errors recorded so far, oldest first.
    pub fn take_errors(&self) -> Vec<Error> {
        std::mem::take(&mut *lock(&self.inner.errors))
    }
}

/// Why the integer tensor `t` may not become a `dtype` weight, if it may not.
///
/// Integer tensors (`u8`, `u32`, `i16`, `i32`, `i64`, bool masks) asked for as floating-point
/// weights are converted by value (3 becomes 3.0; never by reinterpreting their bytes) when
/// every value is an integer that `dtype` holds exactly: magnitude at most 2^53 (f64), 2^24
/// (f32), 2^11 (f16), 2^8 (bf16), 2^4 (f8e4m3). That admits index buffers and masks (mmseg
/// Swin's `relative_position_index`); a float tensor whose bytes were stored under an integer
/// dtype (values such as 1065353216 for 1.0) is refused, naming the key.
fn integer_as_float(name: &str, t: &Tensor, dtype: DType) -> candle_core::Result<Option<String>> {
    let exact: f64 = match dtype {
        DType::F64 => (1u64 << 53) as f64,
        DType::F32 => (1u64 << 24) as f64,
        DType::F16 => 2048.0,
        DType::BF16 => 256.0,
        _ => 16.0,
    };
    if t.elem_count() == 0 {
        return Ok(None);
    }
    let max = t
        .to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    Ok((max > exact).then(|| {
        format!(
            "tensor `{name}` has the integer dtype {:?} and a value of magnitude {max}, which \
             {dtype:?} cannot hold exactly: integer tensors become floating-point weights only \
             when every value is an integer of magnitude <= {exact} (float data stored under \
             an integer dtype?)",
            t.dtype()
        )
    }))
}

struct Backend {
    inner: Arc<Inner>,
}

impl Backend {
    fn fail(&self, e: Error) -> candle_core::Error {
        let msg = e.to_string();
        lock(&self.inner.errors).push(e);
        candle_core::Error::Msg(msg).bt()
    }

    fn lookup(&self, name: &str) -> candle_core::Result<&Tensor> {
        match self.inner.sd.get(name) {
            Some(t) => {
                lock(&self.inner.used).insert(name.to_string());
                Ok(t)
            }
            None => Err(self.fail(Error::MissingWeight {
                key: name.to_string(),
                available: self.inner.sd.similar_keys(name, HINTS),
            })),
        }
    }

    fn convert(
        &self,
        name: &str,
        t: &Tensor,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if dtype.is_float() && !t.dtype().is_float() {
            if let Some(reason) = integer_as_float(name, t, dtype)? {
                let path = self.inner.sd.source().unwrap_or(Path::new("<state dict>"));
                return Err(self.fail(Error::BadCheckpoint {
                    path: path.to_path_buf(),
                    reason,
                }));
            }
        }
        // Both are no-ops (a shared handle, no copy) when nothing changes. Moving first
        // means a half-precision checkpoint is uploaded at half the size.
        t.to_device(dev)?.to_dtype(dtype)
    }
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.lookup(name)?;
        if t.dims() != s.dims() {
            return Err(self.fail(Error::shape(name, s.dims(), t.dims())));
        }
        self.convert(name, t, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.lookup(name)?;
        self.convert(name, t, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.sd.contains(name)
    }
}

/// Builds a model from a checkpoint, strictly: every checkpoint key must be used.
///
/// `build` receives a `VarBuilder` over `sd` (default dtype `dtype`, tensors on `device`).
/// If it fails because a weight is missing or has the wrong shape, the typed
/// [`Error::MissingWeight`] (with similar keys as hints) or [`Error::ShapeMismatch`] (with both
/// shapes) is returned instead of candle's message. If it succeeds but some checkpoint keys
/// were never used, the result is [`Error::UnexpectedWeights`] listing them
/// (`*.num_batches_tracked` is ignored). Use [`load_model_lenient`] to allow unused keys.
///
/// The error type is the builder's, so component crates' errors (which wrap
/// [`crate::Error`] with `#[from]`) work directly.
///
/// ```
/// # fn main() -> segkit_core::Result<()> {
/// use candle_core::{DType, Device, Tensor};
/// use segkit_core::checkpoint::{load_model, StateDict};
/// use segkit_core::Error;
///
/// let dev = Device::Cpu;
/// let mut sd = StateDict::new();
/// sd.insert("fc.weight", Tensor::zeros((2, 4), DType::F32, &dev)?);
/// sd.insert("fc.bias", Tensor::zeros(2, DType::F32, &dev)?);
///
/// let fc = load_model(&sd, DType::F32, &dev, |vb| {
///     Ok::<_, Error>(candle_nn::linear(4, 2, vb.pp("fc"))?)
/// })?;
///
/// let err = load_model(&sd, DType::F32, &dev, |vb| {
///     Ok::<_, Error>(candle_nn::linear(3, 2, vb.pp("fc"))?)
/// })
/// .unwrap_err();
/// assert!(matches!(err, Error::ShapeMismatch { .. }));
/// # let _ = fc;
/// # Ok(())
/// # }
/// ```
pub fn load_model<T, E>(
    sd: &StateDict,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E>
where
    E: From<Error> + Display,
{
    let (model, unused) = load_model_lenient(sd, dtype, device, build)?;
    if unused.is_empty() {
        Ok(model)
    } else {
        Err(E::from(Error::UnexpectedWeights { keys: unused }))
    }
}

/// Like [`load_model`], but checkpoint keys the model did not use are returned (sorted)
/// instead of being an error: for checkpoints that carry more than the model, e.g. a
/// classifier `fc.*` on an ImageNet backbone.
pub fn load_model_lenient<T, E>(
    sd: &StateDict,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> std::result::Result<T, E>,
) -> std::result::Result<(T, Vec<String>), E>
where
    E: From<Error> + Display,
{
    let tracker = WeightTracker::new(sd);
    match build(tracker.var_builder(dtype, device)) {
        Ok(model) => Ok((model, tracker.unused_keys())),
        Err(e) => Err(tracker.typed_error(e)),
    }
}
