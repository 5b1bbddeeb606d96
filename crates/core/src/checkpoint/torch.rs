//! What `torch.save` pickles, whatever the container (zip or legacy): finding the state dict in
//! the pickled object, and the tensors it rebuilds (`torch._utils._rebuild_tensor_v2(storage,
//! offset, size, stride, ..)`, parameters and tensor subclasses around it) as [`TensorRef`]s.
//!
//! A storage is a persistent id `('storage', torch.FloatStorage, key, location, numel)`; the
//! legacy format adds a sixth item, `view_metadata`: `None`, or `(view_key, offset, size)` when
//! the tensor's storage is a slice of the root storage `key` (PyTorch <= 1.x storage views).

use std::collections::HashSet;

use candle_core::DType;

use super::pickle::Value;

type R<T> = std::result::Result<T, String>;

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

/// How many parameters or tensor subclasses may wrap one tensor (torch writes at most two).
const MAX_WRAPPING: usize = 8;

/// Where a tensor's elements are: a storage, an element offset into it, sizes and strides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TensorRef {
    /// The root storage's key (the zip entry `data/<key>`, or the legacy storage key).
    pub storage: String,
    pub dtype: DType,
    /// Elements in the root storage, as the pickle declares.
    pub storage_numel: usize,
    /// The elements the tensor may read, `lo..hi` of the root storage: all of it, or the
    /// storage view it was saved from.
    pub lo: usize,
    pub hi: usize,
    /// The first element, counted from the start of the root storage.
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

pub(super) fn is_tensor(v: &Value) -> bool {
    match v {
        Value::Object(o) => {
            matches!(
                o.borrow().callable.global(),
                Some(("torch._utils" | "torch._tensor", n)) if n.starts_with("_rebuild")
            ) || matches!(
                o.borrow().callable.global(),
                Some(("torch.nn.parameter", "Parameter"))
            )
        }
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

type Found = Vec<(String, Vec<(Value, Value)>)>;

/// Candidate state dicts under `v`: known wrapper keys first, then `v` itself if it holds
/// tensors, then any other child dict (training state such as `optimizer` excluded). Each
/// dict is visited once (`seen`), however often the pickle refers to it.
fn search(v: &Value, path: &str, depth: usize, seen: &mut HashSet<usize>) -> Found {
    if let Some(id) = v.identity() {
        if !seen.insert(id) {
            return Vec::new();
        }
    }
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
                let found = search(child, &join(w), depth + 1, seen);
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
                out.extend(search(child, &join(k), depth + 1, seen));
            }
        }
    }
    out
}

/// The dict at an explicit `/`-separated `key` path.
fn at_key(root: &Value, key: &str) -> R<Vec<(Value, Value)>> {
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
    Ok(items)
}

/// Finds the state dict in the pickled object: at `key` when given, else the top-level dict
/// when it holds tensors, or a wrapper (`state_dict`, `model`, ...), or the one nested dict
/// that holds tensors.
pub(super) fn find_state_dict(root: &Value, key: Option<&str>) -> R<Vec<(Value, Value)>> {
    if let Some(key) = key {
        return at_key(root, key);
    }
    let mut found = search(root, "", 0, &mut HashSet::new());
    match found.len() {
        1 => Ok(found.remove(0).1),
        0 => Err(nothing_found(root)),
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

fn nothing_found(root: &Value) -> String {
    if let Some(items) = root.dict_items() {
        return format!(
            "no tensors found in the checkpoint's dict (keys: {})",
            key_list(&items)
        );
    }
    let module = match root {
        Value::Object(o) => o
            .borrow()
            .state
            .as_ref()
            .and_then(Value::dict_items)
            .is_some_and(|s| {
                lookup(&s, "_parameters").is_some() || lookup(&s, "_modules").is_some()
            }),
        _ => false,
    };
    if module {
        format!(
            "a whole pickled module ({}) rather than a state dict; in Python, re-save it with \
             `torch.save(model.state_dict(), path)`",
            root.describe()
        )
    } else {
        format!(
            "the pickled object is a {}, not a state dict",
            root.describe()
        )
    }
}

/// The tensor references of a state dict's items, in file order; non-tensor entries (e.g.
/// `_extra_state`) and non-string keys are skipped.
pub(super) fn tensor_refs(items: &[(Value, Value)]) -> R<Vec<(String, TensorRef)>> {
    let mut refs = Vec::with_capacity(items.len());
    for (k, v) in items {
        let Some(k) = k.as_str() else { continue };
        match tensor_ref(v) {
            Ok(Some(r)) => refs.push((k.to_string(), r)),
            Ok(None) => {}
            Err(e) => return Err(format!("tensor `{k}`: {e}")),
        }
    }
    Ok(refs)
}

fn tuple_of(v: &Value) -> R<Vec<Value>> {
    match v {
        Value::Tuple(t) => Ok(t.to_vec()),
        other => Err(format!("expected a tuple, found a {}", other.describe())),
    }
}

fn usizes(v: &Value, what: &str) -> R<Vec<usize>> {
    tuple_of(v)?
        .iter()
        .map(|x| {
            x.as_usize()
                .ok_or_else(|| format!("{what} holds a {}, not a size", x.describe()))
        })
        .collect()
}

/// The callable's `module.name` and the arguments of an object value.
fn call_of(v: &Value) -> Option<(String, String, Value)> {
    let Value::Object(o) = v else { return None };
    let o = o.borrow();
    let (m, n) = o.callable.global()?;
    Some((m.to_string(), n.to_string(), o.args.clone()))
}

/// The tensor a pickled value rebuilds; `Ok(None)` when the value is not a tensor. Wrappers
/// (parameters, tensor subclasses) are unwrapped in a loop, at most [`MAX_WRAPPING`] deep.
fn tensor_ref(v: &Value) -> R<Option<TensorRef>> {
    let Some((mut module, mut name, mut args)) = call_of(v) else {
        return Ok(None);
    };
    for level in 0..=MAX_WRAPPING {
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                return rebuild_tensor(&tuple_of(&args)?).map(Some)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => {
                let a = tuple_of(&args)?;
                let inner = a.first().ok_or("a parameter without data")?;
                (module, name, args) =
                    call_of(inner).ok_or("a parameter whose data is not a tensor")?;
            }
            ("torch._tensor", "_rebuild_from_type_v2") => {
                // (func, new_type, args, state): a tensor subclass rebuilt by `func(*args)`.
                let a = tuple_of(&args)?;
                match (a.first().and_then(Value::global), a.get(2)) {
                    (Some((m, n)), Some(inner)) => {
                        (module, name, args) = (m.to_string(), n.to_string(), inner.clone())
                    }
                    _ => return Err("a malformed tensor subclass".into()),
                }
            }
            (m, n) if n.starts_with("_rebuild") && m.starts_with("torch") => {
                return Err(format!(
                    "a tensor of a kind candle cannot hold ({m}.{n}: quantized, sparse, nested \
                     or wrapper-subclass tensors are not supported)"
                ))
            }
            (m, n) if level > 0 => return Err(format!("a tensor wrapper around {m}.{n}")),
            _ => return Ok(None),
        }
    }
    Err(format!(
        "a tensor wrapped in more than {MAX_WRAPPING} parameters or subclasses"
    ))
}

fn storage_dtype(class: &str) -> R<DType> {
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

/// The storage key of a persistent id item (a string, or an int in some writers).
fn storage_key(v: &Value) -> R<String> {
    match v {
        Value::Str(s) => Ok(s.to_string()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(format!("storage key is a {}", other.describe())),
    }
}

fn rebuild_tensor(a: &[Value]) -> R<TensorRef> {
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
    let storage = storage_key(&pid[2])?;
    let storage_numel = pid[4].as_usize().ok_or("storage without a size")?;
    // Legacy storage views: (view_key, offset, size) inside the root storage.
    let (lo, hi) = match pid.get(5) {
        None | Some(Value::None) => (0, storage_numel),
        Some(view) => {
            let v = tuple_of(view)?;
            let (off, len) = match v.as_slice() {
                [_, off, len] => (off.as_usize(), len.as_usize()),
                _ => (None, None),
            };
            let (Some(off), Some(len)) = (off, len) else {
                return Err("malformed storage view".into());
            };
            match off.checked_add(len) {
                Some(end) if end <= storage_numel => (off, end),
                _ => {
                    return Err(format!(
                        "storage view {off}..{off}+{len} outside its storage of {storage_numel} \
                         elements"
                    ))
                }
            }
        }
    };
    let offset = a[1]
        .as_usize()
        .and_then(|o| o.checked_add(lo))
        .ok_or("storage offset is not a size")?;
    let size = usizes(&a[2], "size")?;
    let stride = usizes(&a[3], "stride")?;
    if size.len() != stride.len() {
        return Err(format!("{} sizes but {} strides", size.len(), stride.len()));
    }
    Ok(TensorRef {
        storage,
        dtype,
        storage_numel,
        lo,
        hi,
        offset,
        size,
        stride,
    })
}

/// The root storage a persistent id names, `(key, dtype, elements)`; `None` for persistent
/// ids that are not storages (e.g. the legacy format's `('module', ..)` source records).
pub(super) fn storage_of(pid: &Value) -> R<Option<(String, DType, usize)>> {
    let Value::Tuple(t) = pid else {
        return Ok(None);
    };
    if t.first().and_then(Value::as_str) != Some("storage") {
        return Ok(None);
    }
    if t.len() < 5 {
        return Err("malformed storage reference".into());
    }
    let (_, class) = t[1]
        .global()
        .ok_or("storage reference without a storage type")?;
    let numel = t[4].as_usize().ok_or("storage without a size")?;
    Ok(Some((storage_key(&t[2])?, storage_dtype(class)?, numel)))
}
