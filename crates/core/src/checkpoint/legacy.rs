//! PyTorch's legacy (non-zip) serialization: what `torch.save` wrote before torch 1.6, and
//! since then with `_use_new_zipfile_serialization=False` (PANet's and Gated-SCNN's released
//! checkpoints, PyTorch 0.4 / 1.0).
//!
//! Layout (`torch/serialization.py::_legacy_save`), one file:
//! 1. a pickle of the magic number `0x1950a86a20f9469cfc6c`;
//! 2. a pickle of the protocol version, 1001;
//! 3. a pickle of the writer's `sys_info` (byte order, C type sizes), which torch ignores on
//!    load and so does this reader: the storage data is little-endian on every machine;
//! 4. the pickled object, whose storages are persistent ids `('storage', torch.FloatStorage,
//!    key, location, numel, view_metadata)` (see [`super::torch`]);
//! 5. a pickle of the list of storage keys, in the order their data follows;
//! 6. for each key: the element count (u64, little-endian; PyTorch 0.4 on a big-endian machine
//!    wrote it in native order, which is recognised) and the elements, little-endian.
//!
//! The pickles are parsed from a prefix of the file that grows until they fit; then each
//! storage is read at its offset, after checking its declared size against what the file has
//! left, its tensors are copied out, and it is freed. Storages that the state dict does not use
//! (optimizer state) are skipped without being read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Tensor};

use super::has_legacy_magic;
use super::pickle::{self, Value};
use super::pth::by_storage;
use super::torch::{self, TensorRef};
use super::view::{self, Budget};
use crate::{Error, Result};

/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i64 = 1001;

/// The first prefix of the file parsed for the pickles; it grows 4x until they fit.
const FIRST_PREFIX: u64 = 1 << 20;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The pickles at the start of the file.
struct Header {
    root: Value,
    /// Each storage's dtype and element count, from every persistent id of the object.
    storages: HashMap<String, (DType, usize)>,
    /// The storage keys in the order their data follows.
    keys: Vec<String>,
    /// Where the first storage's data starts.
    data_start: u64,
}

/// Reads the state dict of a legacy PyTorch checkpoint; `key` as in [`super::pth::load`].
pub(crate) fn load(path: &Path, key: Option<&str>) -> Result<BTreeMap<String, Tensor>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let header = read_header(path, &mut file, file_len)?;
    let groups = {
        let items = torch::find_state_dict(&header.root, key).map_err(|e| bad(path, e))?;
        let refs = torch::tensor_refs(&items).map_err(|e| bad(path, e))?;
        by_storage(refs).map_err(|e| bad(path, e))?
    };
    let Header {
        root,
        storages,
        keys,
        data_start,
    } = header;
    drop(root);
    let listed: HashSet<&String> = keys.iter().collect();
    for (storage, group) in &groups {
        if !listed.contains(storage) {
            return Err(bad(
                path,
                format!(
                    "tensor `{}`: storage {storage} is not in the file's list of storages",
                    group[0].0
                ),
            ));
        }
    }

    let mut copies = Budget::for_file(file_len, "copying tensors out of their storages");
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(data_start)).map_err(io)?;
    let mut pos = data_start;
    let mut out = BTreeMap::new();
    for k in &keys {
        let (dtype, numel) = *storages.get(k).ok_or_else(|| {
            bad(
                path,
                format!("storage {k} is listed but no tensor of the pickle refers to it"),
            )
        })?;
        let at = pos;
        let what = |e: String| bad(path, format!("storage {k} at byte {at}: {e}"));
        let nbytes =
            storage_len(&mut reader, numel, dtype, file_len - pos.min(file_len)).map_err(what)?;
        pos += 8;
        let Some(group) = groups.get(k) else {
            reader.seek_relative(nbytes as i64).map_err(io)?;
            pos += nbytes;
            continue;
        };
        // Bounded by what the file has left (checked above).
        let mut bytes = vec![0u8; nbytes as usize];
        reader
            .read_exact(&mut bytes)
            .map_err(|e| what(format!("truncated ({e})")))?;
        pos += nbytes;
        let mut made: HashMap<&TensorRef, Tensor> = HashMap::new();
        for (name, r) in group {
            let t = match made.get(r) {
                Some(t) => t.clone(),
                None => view::materialize(&bytes, r, &mut copies)
                    .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?,
            };
            made.insert(r, t.clone());
            out.insert(name.clone(), t);
        }
    }
    Ok(out)
}

/// Reads a storage's element count and checks it against the pickle's (`numel`) and against
/// the `left` bytes of the file; returns the storage's byte length.
fn storage_len(
    r: &mut impl Read,
    numel: usize,
    dtype: DType,
    left: u64,
) -> std::result::Result<u64, String> {
    let mut n = [0u8; 8];
    r.read_exact(&mut n)
        .map_err(|_| "the file ends before the storage's element count: truncated".to_string())?;
    let count = u64::from_le_bytes(n);
    // PyTorch 0.4 on a big-endian machine wrote the count in native order (the data is
    // little-endian either way).
    if count != numel as u64 && count.swap_bytes() != numel as u64 {
        return Err(format!(
            "the file says {count} elements, the pickle {numel}: corrupt"
        ));
    }
    let nbytes = (numel as u64)
        .checked_mul(dtype.size_in_bytes() as u64)
        .ok_or_else(|| format!("{numel} elements of {dtype:?} overflow the byte count"))?;
    if nbytes > left.saturating_sub(8) {
        return Err(format!(
            "{numel} elements of {dtype:?} ({nbytes} bytes), but only {} bytes are left in the \
             file: truncated",
            left.saturating_sub(8)
        ));
    }
    Ok(nbytes)
}

/// Parses the five pickles from a prefix of the file, growing it until they fit.
fn read_header(path: &Path, file: &mut File, file_len: u64) -> Result<Header> {
    let mut buf = Vec::new();
    let mut want = FIRST_PREFIX.min(file_len);
    loop {
        let have = buf.len() as u64;
        (&mut *file)
            .take(want - have)
            .read_to_end(&mut buf)
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        match parse_header(&buf) {
            Ok(h) => return Ok(h),
            Err((_, true)) if (buf.len() as u64) < file_len => {
                want = want.saturating_mul(4).min(file_len)
            }
            Err((e, eof)) => {
                return Err(bad(
                    path,
                    if eof {
                        format!("a legacy PyTorch checkpoint that is truncated or corrupt ({e})")
                    } else {
                        format!("a corrupt legacy PyTorch checkpoint ({e})")
                    },
                ))
            }
        }
    }
}

type HeaderError = (String, bool);

fn parse_header(buf: &[u8]) -> std::result::Result<Header, HeaderError> {
    let mut at = 0usize;
    let mut next = |what: &str| -> std::result::Result<pickle::Loaded, HeaderError> {
        let l = pickle::load_prefix(&buf[at..])
            .map_err(|e| (format!("cannot parse the {what}: {}", e.message), e.eof))?;
        at += l.len;
        Ok(l)
    };
    next("magic number")?;
    if !has_legacy_magic(buf) {
        return Err(("wrong magic number".into(), false));
    }
    match next("protocol version")?.value {
        Value::Int(PROTOCOL_VERSION) => {}
        Value::Int(v) => {
            return Err((
                format!("legacy protocol version {v}, expected {PROTOCOL_VERSION}"),
                false,
            ))
        }
        other => {
            return Err((
                format!("the protocol version is a {}", other.describe()),
                false,
            ))
        }
    }
    next("system info")?;
    let object = next("pickled object")?;
    let list = next("list of storage keys")?.value;
    let data_start = at as u64;
    let keys = match &list {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                Value::Int(i) => Ok(i.to_string()),
                other => Err((format!("a storage key is a {}", other.describe()), false)),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        other => {
            return Err((
                format!("the list of storage keys is a {}", other.describe()),
                false,
            ))
        }
    };
    let mut storages: HashMap<String, (DType, usize)> = HashMap::new();
    for pid in &object.pids {
        let Some((k, dtype, numel)) = torch::storage_of(pid).map_err(|e| (e, false))? else {
            continue;
        };
        if let Some(&prev) = storages.get(&k) {
            if prev != (dtype, numel) {
                return Err((
                    format!(
                        "storage {k} is declared as {} {:?} and {numel} {dtype:?} elements",
                        prev.1, prev.0
                    ),
                    false,
                ));
            }
        }
        storages.insert(k, (dtype, numel));
    }
    Ok(Header {
        root: object.value,
        storages,
        keys,
        data_start,
    })
}
