//! safetensors reading and atomic writing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::{Error, Result};

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads every tensor of a safetensors file onto the CPU, in its stored dtype.
pub(crate) fn load(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let buf = fs::read(path).map_err(|e| io_err(path, e))?;
    // The safetensors crate validates everything; these checks only give clearer messages.
    if buf.len() < 8 {
        return Err(bad(
            path,
            format!(
                "a safetensors file of {} bytes, shorter than its 8-byte header length",
                buf.len()
            ),
        ));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&buf[..8]);
    let n = u64::from_le_bytes(n);
    if n > (buf.len() - 8) as u64 {
        return Err(bad(
            path,
            format!(
                "a truncated safetensors file: its header says {n} bytes of JSON, but only {} bytes follow",
                buf.len() - 8
            ),
        ));
    }
    let st = SafeTensors::deserialize(&buf).map_err(|e| {
        bad(
            path,
            match e {
                SafeTensorError::MetadataIncompleteBuffer => format!(
                    "a truncated or corrupt safetensors file: its {} bytes of tensor data do not \
                     match what its header describes",
                    buf.len() - 8 - n as usize
                ),
                e => format!("a corrupt safetensors file ({e})"),
            },
        )
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::I16 => DType::I16,
            Dtype::U32 => DType::U32,
            Dtype::U8 | Dtype::BOOL => DType::U8,
            Dtype::F8_E4M3 => DType::F8E4M3,
            other => {
                return Err(bad(
                    path,
                    format!("tensor `{name}` has dtype {other:?}, which candle cannot hold"),
                ))
            }
        };
        // An empty tensor's other dimensions still make strides: they must not overflow.
        if view
            .shape()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d.max(1)))
            .is_none()
        {
            return Err(bad(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, whose strides overflow",
                    view.shape()
                ),
            ));
        }
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

fn st_dtype(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::U32 => "U32",
        DType::U8 => "U8",
        _ => return None,
    })
}

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The little-endian bytes of a tensor, row-major.
fn le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    use candle_core::{CpuStorage, Storage};
    let t = t.to_device(&Device::Cpu)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("tensor is not contiguous")
    };
    macro_rules! le {
        ($v:expr) => {
            $v.get(a..b)
                .ok_or_else(|| candle_core::Error::msg("tensor layout outside its storage"))?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect()
        };
    }
    Ok(match &*storage {
        Storage::Cpu(cs) => match cs {
            CpuStorage::U8(v) => le!(v),
            CpuStorage::U32(v) => le!(v),
            CpuStorage::I16(v) => le!(v),
            CpuStorage::I32(v) => le!(v),
            CpuStorage::I64(v) => le!(v),
            CpuStorage::BF16(v) => le!(v),
            CpuStorage::F16(v) => le!(v),
            CpuStorage::F32(v) => le!(v),
            CpuStorage::F64(v) => le!(v),
            _ => candle_core::bail!("cannot write dtype {:?} to safetensors", t.dtype()),
        },
        _ => candle_core::bail!("tensor is not on the CPU"),
    })
}

/// See [`super::save_safetensors`].
pub(crate) fn save<'a, K: AsRef<str>>(
    tensors: impl IntoIterator<Item = (K, &'a Tensor)>,
    path: &Path,
) -> Result<()> {
    // Validate everything and lay out the header before touching the file system. Like the
    // safetensors crate: largest alignment first, then by name, so every tensor is aligned.
    let mut entries: Vec<(String, &Tensor)> = tensors
        .into_iter()
        .map(|(k, t)| (k.as_ref().to_string(), t))
        .collect();
    entries.sort_by(|(a, ta), (b, tb)| {
        (tb.dtype().size_in_bytes(), a).cmp(&(ta.dtype().size_in_bytes(), b))
    });
    for w in entries.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(Error::InvalidArgument(format!(
                "cannot save {}: tensor name `{}` appears twice",
                path.display(),
                w[0].0
            )));
        }
    }
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut offset = 0usize;
    for (name, t) in &entries {
        let dt = st_dtype(t.dtype()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cannot save {}: tensor `{name}` has dtype {:?}, which this writer does not support",
                path.display(),
                t.dtype()
            ))
        })?;
        let len = t.elem_count() * t.dtype().size_in_bytes();
        header.push(',');
        json_str(name, &mut header);
        let dims: Vec<String> = t.dims().iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            ":{{\"dtype\":\"{dt}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            dims.join(","),
            offset + len
        ));
        offset += len;
    }
    header.push('}');
    // Pad with spaces so that the data starts 8-byte aligned.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let (tmp, file) = temp_file(path)?;
    let write = || -> Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        let io = |e| io_err(&tmp, e);
        w.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(header.as_bytes()).map_err(io)?;
        for (_, t) in &entries {
            w.write_all(&le_bytes(t)?).map_err(io)?;
        }
        w.flush().map_err(io)?;
        drop(w);
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    };
    let r = write();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename durable; failure here does not undo a completed save.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    r
}

/// Creates a fresh temporary file next to `path` (same directory, so that `rename` is atomic).
fn temp_file(path: &Path) -> Result<(PathBuf, File)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last = None;
    for i in 0..16u32 {
        let tmp = dir.join(format!(".{stem}.{}.{nanos:x}{i}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(io_err(&tmp, e)),
        }
    }
    Err(io_err(
        &dir,
        last.unwrap_or_else(|| io::Error::other("cannot create a temporary file")),
    ))
}
