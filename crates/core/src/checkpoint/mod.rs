//! Checkpoint reading: safetensors and PyTorch `.pth` / `.bin` files into a [`StateDict`], a
//! tracking `VarBuilder` with typed errors ([`load_model`]), and atomic safetensors writing.
//!
//! # Formats
//! [`StateDict::load`] recognises the format from the file's first bytes, never its extension:
//! - **safetensors** (8-byte little-endian header length, then a JSON header);
//! - **PyTorch zip** (`PK\x03\x04`), written by `torch.save` since torch 1.6: torchvision
//!   `.pth` files (a plain state dict), HF `pytorch_model.bin`, training checkpoints
//!   (`{state_dict: ..}`, `{model: ..}`), mmseg model-zoo files (`{meta, state_dict,
//!   optimizer}`, whatever Python objects `meta` holds). The state dict is found inside the
//!   pickled object (see [`LoadOptions::key`]); the pickle is read by a small non-executing
//!   reader, never run. Views are honoured (storage offsets and arbitrary strides; tied weights
//!   stay one tensor);
//! - the **legacy** PyTorch format (`torch.save` before torch 1.6, or with
//!   `_use_new_zipfile_serialization=False`: PyTorch 0.4 / 1.0 checkpoints such as PANet's
//!   `{step, model, optimizer}` and Gated-SCNN's `{state_dict, optimizer, epoch, mean_iu}`),
//!   read transparently by the same reader, with the same state-dict search, views, storage
//!   views (`view_metadata`) and tied weights.
//!
//! Byte orders: a zip file whose `byteorder` entry says `big` is byte-swapped on load; legacy
//! files are little-endian whatever machine wrote them (PyTorch converts on write; a
//! big-endian machine's element counts are recognised too). Pickle protocols 2 to 5 are read
//! (`torch.save(.., pickle_protocol=5)` writes no out-of-band buffers; a pickle that uses them
//! is refused with a typed error).
//!
//! # Picking the state dict of a training checkpoint
//! By default the state dict is found (see [`LoadOptions::key`]): PANet's `model`, Gated-SCNN's
//! `state_dict` (its DataParallel `module.` prefix removed) are found without options. Name it
//! to be explicit, or when a file holds several:
//! `StateDict::load_with(path, &LoadOptions { key: Some("model"), ..Default::default() })`;
//! a nested one is a `/`-separated path (`"model/ema"`). Training state (`optimizer`, ..) is
//! never searched, and its storages are skipped without being read.
//!
//! # Hostile files
//! The pickle is never executed, and no input can crash or exhaust the process: nesting of any
//! depth is freed without recursion and tensor wrappers are unwrapped at most 8 deep; every
//! size, offset and stride is checked with overflow-checked arithmetic against the storage
//! before anything is allocated; storage sizes are checked against the file's remaining size
//! (legacy) or the zip entry's declared size, and entries are decompressed with a bounded
//! reader. What the reader may allocate for storages and for tensors is each bounded by twice
//! the file's size plus 32 MiB (a decompression bomb, a stride-0 view of a huge size or
//! thousands of overlapping views are refused before the allocation).
//!
//! Anything else (a truncated or corrupt file, an empty file, a text file, a Git LFS pointer, a
//! pickled `nn.Module`) is an [`Error::BadCheckpoint`] naming the file and what is wrong.
//!
//! Tensors are loaded onto the CPU in their stored dtype (bool as `u8`); each is copied once
//! from the file. Keys are then normalised: DataParallel's `module.` prefix is removed, and
//! optionally only the keys under a prefix are kept ([`StateDict::with_prefix`]) and renamed
//! by a table kept as data ([`StateDict::rename`]).
//!
//! # Building a model
//! [`load_model`] runs a constructor on a `VarBuilder` over the state dict and reports, as
//! typed errors, a missing key (with similar keys as hints), a shape mismatch (with both
//! shapes) and, strictly, checkpoint keys the model never used. [`load_model_lenient`] returns
//! the unused keys instead. [`WeightTracker`] does the same for a model built in several parts.
//!
//! ```
//! # fn main() -> segkit_core::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::checkpoint::{self, LoadOptions, StateDict};
//!
//! let dev = Device::Cpu;
//! let dir = std::env::temp_dir().join(format!("segkit-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| segkit_core::Error::Io { path: dir.clone(), source: e })?;
//! let path = dir.join("model.safetensors");
//!
//! // An mmseg-style checkpoint with `backbone.` and `decode_head.` keys.
//! let mut sd = StateDict::new();
//! sd.insert("backbone.stem.weight", Tensor::ones((4, 3), DType::F32, &dev)?);
//! sd.insert("backbone.stem.bias", Tensor::zeros(4, DType::F32, &dev)?);
//! sd.insert("decode_head.conv_seg.weight", Tensor::ones((2, 4), DType::F32, &dev)?);
//! sd.save_safetensors(&path)?; // atomic: a temporary file, then a rename
//!
//! // Take the backbone only, renaming `stem.` to `fc.` (a rename table is plain data).
//! const RENAMES: &[(&str, &str)] = &[("stem.", "fc.")];
//! let opts = LoadOptions { prefix: Some("backbone."), renames: RENAMES, ..Default::default() };
//! let sd = StateDict::load_with(&path, &opts)?;
//! assert_eq!(sd.keys().collect::<Vec<_>>(), ["fc.bias", "fc.weight"]);
//!
//! let fc = checkpoint::load_model(&sd, DType::F32, &dev, |vb| {
//!     Ok::<_, segkit_core::Error>(candle_nn::linear(3, 4, vb.pp("fc"))?)
//! })?;
//!
//! // A model that expects other names fails with a typed error naming the key.
//! let err = checkpoint::load_model(&sd, DType::F32, &dev, |vb| {
//!     Ok::<_, segkit_core::Error>(candle_nn::linear(3, 4, vb.pp("head"))?)
//! })
//! .unwrap_err();
//! assert!(matches!(&err, segkit_core::Error::MissingWeight { key, .. } if key == "head.weight"));
//! # let _ = (fc, std::fs::remove_dir_all(&dir));
//! # Ok(())
//! # }
//! ```

mod files;
mod legacy;
mod pickle;
mod pth;
mod st;
mod torch;
mod tracker;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;

use files::has_legacy_magic;
pub use files::CheckpointFormat;
use files::{read_dir_checkpoint, read_file};
pub use tracker::{load_model, load_model_lenient, WeightTracker};

use crate::{Error, Result};

/// Whether a checkpoint key has no effect at inference and is never reported as unused
/// (BatchNorm's `num_batches_tracked`).
pub fn is_ignored_key(key: &str) -> bool {
    key == "num_batches_tracked" || key.ends_with(".num_batches_tracked")
}

/// How to read a checkpoint with [`StateDict::load_with`]; `Default` is what
/// [`StateDict::load`] does.
///
/// ```
/// use segkit_core::checkpoint::LoadOptions;
/// // mmseg checkpoint, backbone only, one renamed block.
/// const RENAMES: &[(&str, &str)] = &[("stem.0.", "conv1.")];
/// let opts = LoadOptions { prefix: Some("backbone."), renames: RENAMES, ..Default::default() };
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// Where the state dict is inside a PyTorch checkpoint's pickled object, as a
    /// `/`-separated path of dict keys (`"state_dict"`, `"model/ema"`). `None` finds it: the
    /// top-level dict if it holds tensors, else the first of `state_dict`, `model`,
    /// `model_state_dict`, `model_state`, `module`, `net`, `network`, `params`, `weights`
    /// that holds tensors, else the only nested dict that does (training state such as
    /// `optimizer` is never searched). Ignored for safetensors files.
    pub key: Option<&'a str>,
    /// Keep only the keys under this prefix, without it (see [`StateDict::select_prefix`]);
    /// it is an error if no key has it.
    pub prefix: Option<&'a str>,
    /// Rename table applied after `prefix` (see [`StateDict::rename`]).
    pub renames: &'a [(&'a str, &'a str)],
    /// Keep DataParallel's `module.` prefix (by default it is removed when every key has it).
    pub keep_module_prefix: bool,
}

/// A checkpoint's tensors by state-dict key, sorted by key.
///
/// Cloning is cheap: the map is shared until modified, and tensors are reference-counted.
#[derive(Clone, Default)]
pub struct StateDict {
    tensors: Arc<BTreeMap<String, Tensor>>,
    /// The file or directory it was read from, for error messages.
    source: Option<Arc<Path>>,
}

impl fmt::Debug for StateDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, t) in self.iter() {
            m.entry(&k, &format_args!("{:?} {:?}", t.dtype(), t.dims()));
        }
        m.finish()
    }
}

impl StateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a checkpoint (safetensors, PyTorch zip or legacy; see the [module docs](self)) and removes
    /// a DataParallel `module.` prefix.
    ///
    /// `path` may also be an HF `save_pretrained` directory: `model.safetensors`, else
    /// `pytorch_model.bin`, else all the shards of either (`model-00001-of-00002.safetensors`,
    /// ...), merged.
    ///
    /// Errors: [`Error::Io`] if the file cannot be opened or read, [`Error::BadCheckpoint`]
    /// (naming the file and what is wrong) for anything that is not a readable checkpoint.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// [`StateDict::load`] with options: where the state dict is, a prefix to select and a
    /// rename table.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions<'_>) -> Result<Self> {
        let path = path.as_ref();
        let map = if path.is_dir() {
            read_dir_checkpoint(path, opts.key)?
        } else {
            read_file(path, opts.key)?
        };
        let mut sd = Self {
            tensors: Arc::new(map),
            source: Some(Arc::from(path)),
        };
        if !opts.keep_module_prefix {
            sd = sd.strip_module_prefix();
        }
        if let Some(prefix) = opts.prefix {
            sd = sd.select_prefix(prefix)?;
        }
        if !opts.renames.is_empty() {
            sd = sd.rename(opts.renames)?;
        }
        Ok(sd)
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor under `key`.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// Whether there is a tensor under `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Adds or replaces a tensor, returning the one it replaces.
    pub fn insert(&mut self, key: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        Arc::make_mut(&mut self.tensors).insert(key.into(), tensor)
    }

    /// Removes and returns the tensor under `key`.
    pub fn remove(&mut self, key: &str) -> Option<Tensor> {
        Arc::make_mut(&mut self.tensors).remove(key)
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.keys().map(String::as_str)
    }

    /// The keys and tensors, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> + '_ {
        self.tensors.iter().map(|(k, t)| (k.as_str(), t))
    }

    /// The underlying map.
    pub fn into_map(self) -> BTreeMap<String, Tensor> {
        Arc::unwrap_or_clone(self.tensors)
    }

    /// The file or directory this state dict was read from ([`StateDict::load`]), kept through
    /// prefix selection and renaming; `None` for one built in memory.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    fn map_keys(self, f: impl Fn(&str) -> Option<String>) -> Self {
        let source = self.source.clone();
        let map = self
            .into_map()
            .into_iter()
            .filter_map(|(k, t)| f(&k).map(|k| (k, t)))
            .collect();
        Self {
            tensors: Arc::new(map),
            source,
        }
    }

    /// Removes DataParallel's `module.` prefix when every key has it (otherwise `module` may
    /// be a real submodule name, and nothing changes).
    pub fn strip_module_prefix(self) -> Self {
        if self.is_empty() || !self.keys().all(|k| k.starts_with("module.")) {
            return self;
        }
        self.map_keys(|k| k.strip_prefix("module.").map(str::to_string))
    }

    fn dotted(prefix: &str) -> String {
        if prefix.is_empty() || prefix.ends_with('.') {
            prefix.to_string()
        } else {
            format!("{prefix}.")
        }
    }

    /// Keeps only the keys under `prefix`, with the prefix removed: `with_prefix("backbone")`
    /// (or `"backbone."`) turns `backbone.conv1.weight` into `conv1.weight` and drops
    /// `decode_head.*`. A prefix is matched on whole key components; an empty prefix keeps
    /// everything. The result may be empty (see [`StateDict::select_prefix`]).
    pub fn with_prefix(self, prefix: &str) -> Self {
        let p = Self::dotted(prefix);
        if p.is_empty() {
            return self;
        }
        self.map_keys(|k| k.strip_prefix(p.as_str()).map(str::to_string))
    }

    /// [`StateDict::with_prefix`], failing with [`Error::MissingWeight`] (key `prefix*`, with
    /// the checkpoint's top-level prefixes as hints) when no key is under `prefix`.
    pub fn select_prefix(self, prefix: &str) -> Result<Self> {
        let p = Self::dotted(prefix);
        if !p.is_empty() && !self.keys().any(|k| k.starts_with(p.as_str())) {
            let mut tops: Vec<String> = self
                .keys()
                .map(|k| match k.split_once('.') {
                    Some((top, _)) => format!("{top}.*"),
                    None => k.to_string(),
                })
                .collect();
            tops.dedup();
            tops.truncate(8);
            return Err(Error::MissingWeight {
                key: format!("{p}*"),
                available: tops,
            });
        }
        Ok(self.with_prefix(prefix))
    }

    /// Renames keys by a table of `(from_prefix, to_prefix)` pairs: each key is renamed by the
    /// first pair whose `from_prefix` it starts with, and kept as is if none matches. Prefixes
    /// are plain strings (include the trailing `.` to match whole components).
    ///
    /// Fails with [`Error::InvalidArgument`] if two keys end up with the same name.
    ///
    /// ```
    /// # fn main() -> segkit_core::Result<()> {
    /// use candle_core::{DType, Device, Tensor};
    /// use segkit_core::checkpoint::StateDict;
    /// let mut sd = StateDict::new();
    /// sd.insert("decode_head.conv_seg.weight", Tensor::zeros(1, DType::F32, &Device::Cpu)?);
    /// let sd = sd.rename(&[("decode_head.conv_seg.", "head.cls.")])?;
    /// assert!(sd.contains("head.cls.weight"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn rename(self, table: &[(&str, &str)]) -> Result<Self> {
        let source = self.source.clone();
        let mut out = BTreeMap::new();
        let mut from: HashMap<String, String> = HashMap::new();
        for (k, t) in self.into_map() {
            let new = table
                .iter()
                .find_map(|(a, b)| k.strip_prefix(a).map(|rest| format!("{b}{rest}")))
                .unwrap_or_else(|| k.clone());
            if let Some(prev) = from.get(&new) {
                return Err(Error::InvalidArgument(format!(
                    "rename table maps both `{prev}` and `{k}` to `{new}`"
                )));
            }
            from.insert(new.clone(), k);
            out.insert(new, t);
        }
        Ok(Self {
            tensors: Arc::new(out),
            source,
        })
    }

    /// Up to `n` keys that look like `key` (sharing its trailing components, then its
    /// beginning), to help spot a prefix or naming problem. Ignored keys are left out.
    pub fn similar_keys(&self, key: &str, n: usize) -> Vec<String> {
        let parts: Vec<&str> = key.split('.').collect();
        let mut scored: Vec<((usize, usize), &str)> = self
            .keys()
            .filter(|k| !is_ignored_key(k))
            .map(|k| {
                let suffix = k
                    .split('.')
                    .rev()
                    .zip(parts.iter().rev())
                    .take_while(|(a, b)| a == *b)
                    .count();
                let prefix = k
                    .chars()
                    .zip(key.chars())
                    .take_while(|(a, b)| a == b)
                    .count();
                ((suffix, prefix), k)
            })
            .collect();
        scored.sort_by(|(sa, ka), (sb, kb)| sb.cmp(sa).then(ka.cmp(kb)));
        let any = scored.iter().any(|(s, _)| *s != (0, 0));
        scored
            .into_iter()
            .filter(|(s, _)| !any || *s != (0, 0))
            .take(n)
            .map(|(_, k)| k.to_string())
            .collect()
    }

    /// Writes the tensors to a safetensors file atomically; see [`save_safetensors`].
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        save_safetensors(self, path)
    }
}

impl<'a> IntoIterator for &'a StateDict {
    type Item = (&'a String, &'a Tensor);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Tensor>;
    fn into_iter(self) -> Self::IntoIter {
        self.tensors.iter()
    }
}

impl FromIterator<(String, Tensor)> for StateDict {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        Self {
            tensors: Arc::new(iter.into_iter().collect()),
            source: None,
        }
    }
}

impl From<HashMap<String, Tensor>> for StateDict {
    fn from(m: HashMap<String, Tensor>) -> Self {
        m.into_iter().collect()
    }
}

impl From<BTreeMap<String, Tensor>> for StateDict {
    fn from(m: BTreeMap<String, Tensor>) -> Self {
        Self {
            tensors: Arc::new(m),
            source: None,
        }
    }
}

/// Writes tensors to a safetensors file, atomically.
///
/// The data goes to a new temporary file in the same directory, which is flushed to disk and
/// then renamed over `path`: a failed write (full disk, unwritable directory, a tensor that
/// cannot be written) leaves an existing file at `path` untouched and no temporary file
/// behind. The header carries `{"format": "pt"}` metadata, as HF transformers expects.
/// Tensors may live on any device; supported dtypes: f64, f32, f16, bf16, i64, i32, i16, u32,
/// u8.
///
/// Accepts `&StateDict`, `&HashMap<String, Tensor>`, `&BTreeMap<String, Tensor>` or any
/// iterator of `(name, &Tensor)`. Fails with [`Error::InvalidArgument`] for a repeated name
/// or an unsupported dtype (before touching the file system) and [`Error::Io`] otherwise.
pub fn save_safetensors<'a, K: AsRef<str>>(
    tensors: impl IntoIterator<Item = (K, &'a Tensor)>,
    path: impl AsRef<Path>,
) -> Result<()> {
    st::save(tensors, path.as_ref())
}
