//! PyTorch zip checkpoints (`torch.save`, torch >= 1.6): `.pth`, `.pt`, `.bin`, `.ckpt`.
//!
//! Layout: a zip archive with `<name>/data.pkl` (the pickled object) and one entry
//! `<name>/data/<key>` per storage. A tensor in the pickle is a call to
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ..)` whose storage is a
//! persistent id `('storage', torch.FloatStorage, key, location, numel)`. Views keep their
//! storage offset and strides, so several tensors may share one storage.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::pickle::{self, Value};
use crate::{Error, Result};

/// Keys whose value, when a dict holding tensors, is taken as the state dict, in this order.
const WRAPPER_KEYS: &[&str] = &[
    "state_dict",
    "model",
    "model_state_dict",
    "model_state",
    "module",
    "net",
    "network",
    "params",
    "weights",
];

/// Keys never searched for a state dict (training state that also holds tensors).
const SKIPPED_KEYS: &[&str] = &[
    "optimizer",
    "optimizer_state_dict",
    "optim",
    "optimizer_states",
    "scheduler",
    "lr_scheduler",
    "lr_schedulers",
    "scaler",
    "amp",
    "meta",
    "message_hub",
];

/// How deep wrappers are searched (`{a: {b: {state dict}}}` is depth 2).
const MAX_DEPTH: usize = 3;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Where a tensor's elements are: a storage, an element offset into it, sizes and strides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TensorRef {
    storage: String,
    dtype: DType,
    /// Elements in the storage, as the pickle declares.
    storage_numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Reads the state dict of a PyTorch zip checkpoint. `key` is an explicit `/`-separated path to
/// the state dict inside the pickled object; `None` finds it (see [`find_state_dict`]).
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
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
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
    if let Ok(bo) = read_entry(&mut zip, &format!("{prefix}byteorder"), file_len) {
        if bo.trim_ascii() == b"big" {
            return Err(bad(path, "a big-endian checkpoint, which is not supported"));
        }
    }
    let data = read_entry(&mut zip, &pkl, file_len)
        .map_err(|e| bad(path, format!("cannot read {pkl}: {e}")))?;
    let root = pickle::load(&data).map_err(|e| bad(path, format!("cannot parse {pkl}: {e}")))?;
    let items = find_state_dict(&root, key).map_err(|e| bad(path, e))?;

    // Tensor references, in file order; non-tensor entries (e.g. `_extra_state`) are skipped.
    let mut refs: Vec<(String, TensorRef)> = Vec::with_capacity(items.len());
    for (k, v) in &items {
        let Some(k) = k.as_str() else { continue };
        match tensor_ref(v) {
            Ok(Some(r)) => refs.push((k.to_string(), r)),
            Ok(None) => {}
            Err(e) => return Err(bad(path, format!("tensor `{k}`: {e}"))),
        }
    }

    // Each storage is read once; tensors with the same storage, offset, size and strides (tied
    // weights) share one candle tensor.
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut made: HashMap<TensorRef, Tensor> = HashMap::new();
    let mut out = BTreeMap::new();
    for (k, r) in refs {
        if let Some(t) = made.get(&r) {
            out.insert(k, t.clone());
            continue;
        }
        if !storages.contains_key(&r.storage) {
            let name = format!("{prefix}data/{}", r.storage);
            let bytes = read_entry(&mut zip, &name, file_len).map_err(|e| {
                bad(
                    path,
                    format!("cannot read storage {name} of tensor `{k}`: {e}"),
                )
            })?;
            storages.insert(r.storage.clone(), bytes);
        }
        let bytes = storages.get(&r.storage).map(Vec::as_slice).unwrap_or(&[]);
        let t = materialize(bytes, &r).map_err(|e| bad(path, format!("tensor `{k}`: {e}")))?;
        made.insert(r, t.clone());
        out.insert(k, t);
    }
    Ok(out)
}

fn read_entry(
    zip: &mut zip::ZipArchive<BufReader<File>>,
    name: &str,
    file_len: u64,
) -> std::result::Result<Vec<u8>, String> {
    let mut f = zip.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => "missing from the archive".to_string(),
        e => e.to_string(),
    })?;
    let cap = f.size().min(file_len).min(1 << 32) as usize;
    let mut buf = Vec::with_capacity(cap);
    // The zip reader checks the CRC-32 at the end of the entry.
    f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

fn is_tensor(v: &Value) -> bool {
    match v {
        Value::Object(o) => matches!(
            o.borrow().callable.global(),
            Some(("torch._utils" | "torch._tensor", n)) if n.starts_with("_rebuild")
        ),
        _ => false,
    }
}

fn lookup<'v>(items: &'v [(Value, Value)], key: &str) -> Option<&'v Value> {
    items
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn key_list(items: &[(Value, Value)]) -> String {
    let keys: Vec<String> = items
        .iter()
        .take(12)
        .map(|(k, v)| match k.as_str() {
            Some(k) => format!(
                "{k} ({})",
                if is_tensor(v) {
                    "tensor".into()
                } else {
                    v.describe()
                }
            ),
            None => k.describe(),
        })
        .collect();
    let more = items.len().saturating_sub(12);
    if more > 0 {
        format!("{}, and {more} more", keys.join(", "))
    } else {
        keys.join(", ")
    }
}

/// Candidate state dicts under `v`: known wrapper keys first, then `v` itself if it holds
/// tensors, then any other child dict (training state such as `optimizer` excluded).
fn search(v: &Value, path: &str, depth: usize) -> Vec<(String, Vec<(Value, Value)>)> {
    let Some(items) = v.dict_items() else {
        return Vec::new();
    };
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}/{k}")
        }
    };
    if depth < MAX_DEPTH {
        for w in WRAPPER_KEYS {
            if let Some(child) = lookup(&items, w) {
                let found = search(child, &join(w), depth + 1);
                if !found.is_empty() {
                    return found;
                }
            }
        }
    }
    if items
        .iter()
        .any(|(k, v)| k.as_str().is_some() && is_tensor(v))
    {
        return vec![(path.to_string(), items)];
    }
    if depth >= MAX_DEPTH {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (k, child) in &items {
        if let Some(k) = k.as_str() {
            if !SKIPPED_KEYS.contains(&k) && !WRAPPER_KEYS.contains(&k) {
                out.extend(search(child, &join(k), depth + 1));
            }
        }
    }
    out
}

/// Finds the state dict in the pickled object: the top-level dict when it holds tensors, or
/// a wrapper (`state_dict`, `model`, ...), or the one nested dict that holds tensors.
fn find_state_dict(
    root: &Value,
    key: Option<&str>,
) -> std::result::Result<Vec<(Value, Value)>, String> {
    if let Some(key) = key {
        let mut v = root.clone();
        let mut at = String::new();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            let items = v.dict_items().ok_or_else(|| {
                format!(
                    "`{at}` is a {}, not a dict, so it has no key `{part}`",
                    v.describe()
                )
            })?;
            let child = lookup(&items, part).cloned().ok_or_else(|| {
                format!(
                    "no key `{part}`{} (there: {})",
                    if at.is_empty() {
                        String::new()
                    } else {
                        format!(" under `{at}`")
                    },
                    key_list(&items)
                )
            })?;
            at = if at.is_empty() {
                part.to_string()
            } else {
                format!("{at}/{part}")
            };
            v = child;
        }
        let items = v
            .dict_items()
            .ok_or_else(|| format!("`{key}` is a {}, not a state dict", v.describe()))?;
        if !items.iter().any(|(_, v)| is_tensor(v)) {
            return Err(format!(
                "`{key}` holds no tensors (keys: {})",
                key_list(&items)
            ));
        }
        return Ok(items);
    }
    let mut found = search(root, "", 0);
    match found.len() {
        1 => Ok(found.remove(0).1),
        0 => Err(match root.dict_items() {
            Some(items) => format!(
                "no tensors found in the checkpoint's dict (keys: {})",
                key_list(&items)
            ),
            None => match root {
                Value::Object(o)
                    if o.borrow()
                        .state
                        .as_ref()
                        .and_then(Value::dict_items)
                        .is_some_and(|s| {
                            lookup(&s, "_parameters").is_some() || lookup(&s, "_modules").is_some()
                        }) =>
                {
                    format!(
                        "a whole pickled module ({}) rather than a state dict; in Python, re-save it \
                         with `torch.save(model.state_dict(), path)`",
                        root.describe()
                    )
                }
                _ => format!(
                    "the pickled object is a {}, not a state dict",
                    root.describe()
                ),
            },
        }),
        _ => Err(format!(
            "several state dicts found ({}); choose one with LoadOptions::key",
            found
                .iter()
                .map(|(p, _)| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn tuple_of(v: &Value) -> std::result::Result<Vec<Value>, String> {
    match v {
        Value::Tuple(t) => Ok(t.to_vec()),
        other => Err(format!("expected a tuple, found a {}", other.describe())),
    }
}

fn usizes(v: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    tuple_of(v)?
        .iter()
        .map(|x| {
            x.as_usize()
                .ok_or_else(|| format!("{what} holds a {}, not a size", x.describe()))
        })
        .collect()
}

/// The tensor a pickled value rebuilds; `Ok(None)` when the value is not a tensor.
fn tensor_ref(v: &Value) -> std::result::Result<Option<TensorRef>, String> {
    let Value::Object(o) = v else { return Ok(None) };
    let o = o.borrow();
    let Some((module, name)) = o.callable.global() else {
        return Ok(None);
    };
    rebuild(module, name, &o.args)
}

fn rebuild(
    module: &str,
    name: &str,
    args: &Value,
) -> std::result::Result<Option<TensorRef>, String> {
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            rebuild_tensor(&tuple_of(args)?).map(Some)
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            let a = tuple_of(args)?;
            let inner = a.first().ok_or("a parameter without data")?;
            tensor_ref(inner)?
                .map(Some)
                .ok_or_else(|| "a parameter whose data is not a tensor".into())
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            // (func, new_type, args, state): a tensor subclass rebuilt by `func(*args)`.
            let a = tuple_of(args)?;
            match (a.first().and_then(Value::global), a.get(2)) {
                (Some((m, n)), Some(inner)) => rebuild(m, n, inner)?
                    .map(Some)
                    .ok_or_else(|| format!("a tensor subclass rebuilt by {m}.{n}")),
                _ => Err("a malformed tensor subclass".into()),
            }
        }
        (m, n) if n.starts_with("_rebuild") && m.starts_with("torch") => Err(format!(
            "a tensor of a kind candle cannot hold ({m}.{n}: quantized, sparse, nested or \
             wrapper-subclass tensors are not supported)"
        )),
        _ => Ok(None),
    }
}

fn storage_dtype(class: &str) -> std::result::Result<DType, String> {
    Ok(match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        // bool is one byte, 0 or 1: candle's masks are u8.
        "ByteStorage" | "BoolStorage" | "UntypedStorage" => DType::U8,
        "Float8_e4m3fnStorage" => DType::F8E4M3,
        other => {
            return Err(format!(
                "storage type {other} has no candle dtype (supported: f64, f32, f16, bf16, \
                 f8e4m3, i64, i32, i16, u8, bool)"
            ))
        }
    })
}

fn rebuild_tensor(a: &[Value]) -> std::result::Result<TensorRef, String> {
    if a.len() < 4 {
        return Err(format!("_rebuild_tensor with {} arguments", a.len()));
    }
    let Value::PersId(pid) = &a[0] else {
        return Err(format!(
            "storage is a {}, not a persistent id",
            a[0].describe()
        ));
    };
    let pid = tuple_of(pid)?;
    if pid.len() < 5 || pid[0].as_str() != Some("storage") {
        return Err("malformed storage reference".into());
    }
    let (_, class) = pid[1]
        .global()
        .ok_or("storage reference without a storage type")?;
    let dtype = storage_dtype(class)?;
    let storage = match &pid[2] {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("storage key is a {}", other.describe())),
    };
    let storage_numel = pid[4].as_usize().ok_or("storage without a size")?;
    let offset = a[1].as_usize().ok_or("storage offset is not a size")?;
    let size = usizes(&a[2], "size")?;
    let stride = usizes(&a[3], "stride")?;
    if size.len() != stride.len() {
        return Err(format!("{} sizes but {} strides", size.len(), stride.len()));
    }
    Ok(TensorRef {
        storage,
        dtype,
        storage_numel,
        offset,
        size,
        stride,
    })
}

/// Copies the elements of `r` out of its storage bytes into a contiguous candle tensor.
fn materialize(bytes: &[u8], r: &TensorRef) -> std::result::Result<Tensor, String> {
    let es = r.dtype.size_in_bytes();
    let expected = r
        .storage_numel
        .checked_mul(es)
        .ok_or("storage size overflows")?;
    if bytes.len() != expected {
        return Err(format!(
            "storage data/{} has {} bytes, but the pickle declares {} elements of {:?} ({expected} bytes): truncated or corrupt",
            r.storage,
            bytes.len(),
            r.storage_numel,
            r.dtype
        ));
    }
    let numel = r
        .size
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or("element count overflows")?;
    if numel == 0 {
        return Tensor::zeros(r.size.as_slice(), r.dtype, &Device::Cpu).map_err(|e| e.to_string());
    }
    // Last element read: offset + sum((size - 1) * stride), must lie inside the storage.
    let last = r
        .size
        .iter()
        .zip(&r.stride)
        .try_fold(r.offset, |a, (&s, &st)| {
            (s - 1).checked_mul(st).and_then(|x| x.checked_add(a))
        })
        .ok_or("strides overflow")?;
    if last >= r.storage_numel {
        return Err(format!(
            "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {}",
            r.offset, r.size, r.stride, r.storage_numel
        ));
    }
    let oob = || "view outside its storage".to_string();
    let t = if is_c_contiguous(&r.size, &r.stride) {
        let data = bytes
            .get(r.offset * es..(r.offset + numel) * es)
            .ok_or_else(oob)?;
        Tensor::from_raw_buffer(data, r.dtype, &r.size, &Device::Cpu)
    } else {
        let data = gather(bytes, es, r, numel).ok_or_else(oob)?;
        Tensor::from_raw_buffer(&data, r.dtype, &r.size, &Device::Cpu)
    };
    t.map_err(|e| e.to_string())
}

fn is_c_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            return false;
        }
        expected *= s;
    }
    true
}

/// Strided copy of `numel > 0` elements, row-major; innermost runs with stride 1 are copied
/// as one slice. `None` if an index falls outside `bytes` (bounds are checked before).
fn gather(bytes: &[u8], es: usize, r: &TensorRef, numel: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(numel * es);
    let rank = r.size.len();
    if rank == 0 {
        out.extend_from_slice(bytes.get(r.offset * es..(r.offset + 1) * es)?);
        return Some(out);
    }
    let (inner, inner_stride) = (r.size[rank - 1], r.stride[rank - 1]);
    let mut idx = vec![0usize; rank - 1];
    for _ in 0..numel / inner {
        let base = r.offset
            + idx
                .iter()
                .zip(&r.stride)
                .map(|(&i, &st)| i * st)
                .sum::<usize>();
        if inner_stride == 1 {
            out.extend_from_slice(bytes.get(base * es..(base + inner) * es)?);
        } else {
            for j in 0..inner {
                let p = (base + j * inner_stride) * es;
                out.extend_from_slice(bytes.get(p..p + es)?);
            }
        }
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < r.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Some(out)
}
