//! PyTorch zip checkpoints (`torch.save`, torch >= 1.6): `.pth`, `.pt`, `.bin`, `.ckpt`.
//!
//! Layout: a zip archive with `<name>/data.pkl` (the pickled object), `<name>/byteorder`
//! (`little` or `big`, torch >= 1.11) and one entry `<name>/data/<key>` per storage, holding
//! the storage's elements in that byte order. What the pickle holds is read by
//! [`super::torch`].
//!
//! Every entry is read with a bounded reader: a storage entry must declare exactly the size the
//! pickle gives its storage, and no entry is ever decompressed past its declared size; the
//! decompressed total and the tensors copied out of the storages are each bounded by twice
//! the file's size plus 32 MiB ([`Budget`]), checked before anything is allocated.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::Tensor;

use super::pickle;
use super::torch::{self, TensorRef};
use super::view::{self, Budget};
use crate::{Error, Result};

type Zip = zip::ZipArchive<BufReader<File>>;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads the state dict of a PyTorch zip checkpoint. `key` is an explicit `/`-separated path to
/// the state dict inside the pickled object; `None` finds it (see [`torch::find_state_dict`]).
pub(crate) fn load(path: &Path, key: Option<&str>) -> Result<BTreeMap<String, Tensor>> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        bad(
            path,
            format!("a PyTorch zip checkpoint that is truncated or corrupt (cannot read the zip directory: {e})"),
        )
    })?;
    let (pkl, prefix) = data_pkl(path, &zip)?;
    let mut unpacked = Budget::for_file(file_len, "decompressing the archive");
    let big_endian = match zip.by_name(&format!("{prefix}byteorder")) {
        Ok(f) if f.size() <= 16 => {
            let mut s = Vec::new();
            f.take(16)
                .read_to_end(&mut s)
                .map_err(|e| bad(path, format!("cannot read {prefix}byteorder: {e}")))?;
            match s.trim_ascii() {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(bad(
                        path,
                        format!(
                            "{prefix}byteorder says {:?}, neither `little` nor `big`",
                            String::from_utf8_lossy(other)
                        ),
                    ))
                }
            }
        }
        Ok(f) => {
            return Err(bad(
                path,
                format!("{prefix}byteorder declares {} bytes", f.size()),
            ))
        }
        // Before torch 1.11 there was no byteorder entry: little-endian.
        Err(_) => false,
    };
    let refs = {
        let data = read_entry(&mut zip, &pkl, None, &mut unpacked)
            .map_err(|e| bad(path, format!("cannot read {pkl}: {e}")))?;
        let root =
            pickle::load(&data).map_err(|e| bad(path, format!("cannot parse {pkl}: {e}")))?;
        let items = torch::find_state_dict(&root, key).map_err(|e| bad(path, e))?;
        torch::tensor_refs(&items).map_err(|e| bad(path, e))?
    };
    let groups = by_storage(refs).map_err(|e| bad(path, e))?;

    // One storage at a time: read it, copy its tensors out, free it. Tensors with the same
    // storage, offset, size and strides (tied weights) share one candle tensor.
    let mut copies = Budget::for_file(file_len, "copying tensors out of their storages");
    let mut out = BTreeMap::new();
    for (storage, group) in groups {
        let r0 = &group[0].1;
        let es = r0.dtype.size_in_bytes();
        let name = format!("{prefix}data/{storage}");
        let expected = r0.storage_numel.checked_mul(es).ok_or_else(|| {
            bad(
                path,
                format!("storage {name} declares {} elements", r0.storage_numel),
            )
        })?;
        let mut bytes =
            read_entry(&mut zip, &name, Some(expected as u64), &mut unpacked).map_err(|e| {
                bad(
                    path,
                    format!("cannot read storage {name} of tensor `{}`: {e}", group[0].0),
                )
            })?;
        if big_endian {
            view::swap_bytes(&mut bytes, es);
        }
        let mut made: HashMap<TensorRef, Tensor> = HashMap::new();
        for (k, r) in group {
            if let Some(t) = made.get(&r) {
                out.insert(k, t.clone());
                continue;
            }
            let t = view::materialize(&bytes, &r, &mut copies)
                .map_err(|e| bad(path, format!("tensor `{k}`: {e}")))?;
            made.insert(r, t.clone());
            out.insert(k, t);
        }
    }
    Ok(out)
}

/// The references grouped by storage (storages in key order, tensors in file order); every
/// reference to one storage must agree on its type and size.
pub(super) fn by_storage(
    refs: Vec<(String, TensorRef)>,
) -> std::result::Result<BTreeMap<String, Vec<(String, TensorRef)>>, String> {
    let mut groups: BTreeMap<String, Vec<(String, TensorRef)>> = BTreeMap::new();
    for (k, r) in refs {
        let g = groups.entry(r.storage.clone()).or_default();
        if let Some((k0, r0)) = g.first() {
            if (r0.dtype, r0.storage_numel) != (r.dtype, r.storage_numel) {
                return Err(format!(
                    "tensors `{k0}` and `{k}` declare storage {} as {} {:?} and {} {:?} elements",
                    r.storage, r0.storage_numel, r0.dtype, r.storage_numel, r.dtype
                ));
            }
        }
        g.push((k, r));
    }
    Ok(groups)
}

/// The archive's `data.pkl` entry and the folder it is in (`archive/`), refusing archives
/// that are not state dicts.
fn data_pkl(path: &Path, zip: &Zip) -> Result<(String, String)> {
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let mut pkls: Vec<&String> = names
        .iter()
        .filter(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .collect();
    pkls.sort_by_key(|n| n.len());
    let Some(pkl) = pkls.first().map(|s| s.to_string()) else {
        let some: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
        return Err(bad(
            path,
            format!(
                "a zip archive without data.pkl, so not a PyTorch checkpoint (it holds {} entries, e.g. {})",
                names.len(),
                some.join(", ")
            ),
        ));
    };
    let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
    if names
        .iter()
        .any(|n| *n == format!("{prefix}constants.pkl") || n.starts_with(&format!("{prefix}code/")))
    {
        return Err(bad(
            path,
            "a TorchScript archive (torch.jit.save), not a state dict; in Python, save \
             `torch.jit.load(p).state_dict()` with torch.save or safetensors",
        ));
    }
    Ok((pkl, prefix))
}

/// Reads entry `name`: exactly `expected` bytes when given (a storage), charged to `budget`
/// before anything is allocated, and never more than the entry declares, whatever its
/// compressed data expands to.
fn read_entry(
    zip: &mut Zip,
    name: &str,
    expected: Option<u64>,
    budget: &mut Budget,
) -> std::result::Result<Vec<u8>, String> {
    let f = zip.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => "missing from the archive".to_string(),
        e => e.to_string(),
    })?;
    let declared = f.size();
    if let Some(want) = expected {
        if declared != want {
            return Err(format!(
                "the entry holds {declared} bytes, but the pickle declares {want}: truncated or \
                 corrupt"
            ));
        }
    }
    budget.charge(declared)?;
    let cap = usize::try_from(declared).map_err(|_| "entry too large".to_string())?;
    let mut buf = Vec::with_capacity(cap);
    // Reading to the end of the entry checks its CRC-32; one byte more than declared is
    // enough to see that it lies about its size.
    f.take(declared.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() != cap {
        return Err(format!(
            "the entry declares {declared} bytes but holds {}{}: corrupt",
            if buf.len() > cap { "more" } else { "" },
            if buf.len() > cap {
                String::new()
            } else {
                format!("{}", buf.len())
            }
        ));
    }
    Ok(buf)
}
