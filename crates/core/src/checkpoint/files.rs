//! Recognising a checkpoint file's format from its first bytes, and reading a file or an HF
//! `save_pretrained` directory into tensors by key.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use candle_core::Tensor;

use super::{legacy, pth, st};
use crate::{Error, Result};

/// The serialisation format of a checkpoint file, as recognised from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// safetensors: an 8-byte little-endian header length, then a JSON header.
    Safetensors,
    /// PyTorch's zip format (`torch.save`, torch >= 1.6): `.pth`, `.pt`, `.bin`, `.ckpt`.
    PyTorchZip,
    /// PyTorch's legacy pickle format (torch < 1.6, or `_use_new_zipfile_serialization=False`).
    PyTorchLegacy,
}

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c), as pickle `LONG1` bytes.
const LEGACY_MAGIC: [u8; 12] = [
    0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// Whether `b` starts with the legacy format's magic-number pickle (protocol 2 or later; from
/// protocol 4 on, a FRAME opcode comes first).
pub(crate) fn has_legacy_magic(b: &[u8]) -> bool {
    let at = if b.get(2) == Some(&0x95) { 11 } else { 2 };
    b.first() == Some(&0x80) && b.get(at..at + 12) == Some(&LEGACY_MAGIC[..])
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl CheckpointFormat {
    /// Recognises the format of the file at `path` from its first bytes.
    ///
    /// Fails with [`Error::Io`] if the file cannot be read, and with
    /// [`Error::BadCheckpoint`] (saying what the file looks like instead) if it is none of the
    /// formats above.
    pub fn detect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut head = Vec::with_capacity(64);
        std::fs::File::open(path)
            .map_err(io)?
            .take(64)
            .read_to_end(&mut head)
            .map_err(io)?;
        Self::from_head(path, &head)
    }

    fn from_head(path: &Path, b: &[u8]) -> Result<Self> {
        if b.is_empty() {
            return Err(bad(path, "an empty file (0 bytes), not a checkpoint"));
        }
        if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") {
            return Ok(Self::PyTorchZip);
        }
        if b[0] == 0x80 && has_legacy_magic(b) {
            return Ok(Self::PyTorchLegacy);
        }
        // Safetensors before the pickle test: its first 8 bytes are the little-endian header
        // length, so a header of 0x80 mod 256 bytes starts with 0x80 like a pickle does.
        if b.len() >= 9 && b[8] == b'{' {
            return Ok(Self::Safetensors);
        }
        if b[0] == 0x80 {
            return Err(bad(
                path,
                "a Python pickle but not a PyTorch checkpoint (neither a zip archive nor the \
                 legacy magic number)",
            ));
        }
        let text = String::from_utf8_lossy(&b[..b.len().min(40)]);
        let reason = if b.starts_with(b"version https://git-lfs") {
            "a Git LFS pointer file, not the weights themselves (run `git lfs pull`)".to_string()
        } else if text.trim_start().starts_with('<') {
            "an HTML/XML document, not a checkpoint (a failed download?)".to_string()
        } else if b.starts_with(b"\x93NUMPY") {
            "a NumPy .npy file, not a checkpoint".to_string()
        } else if b.starts_with(b"\x89HDF") {
            "an HDF5 file (Keras?), not a checkpoint".to_string()
        } else if b.starts_with(&[0x1f, 0x8b]) {
            "a gzip-compressed file: decompress it first".to_string()
        } else if b.len() < 9 {
            format!("a {}-byte file, too short to be a checkpoint", b.len())
        } else if b
            .iter()
            .all(|&c| c.is_ascii_graphic() || c.is_ascii_whitespace() || c >= 0x80)
        {
            format!("a text file, not a checkpoint (it starts with {:?})", text)
        } else {
            let hex: Vec<String> = b.iter().take(8).map(|x| format!("{x:02x}")).collect();
            format!(
                "not a checkpoint: unrecognised content (first bytes {}); expected safetensors \
                 or a PyTorch zip file",
                hex.join(" ")
            )
        };
        Err(bad(path, reason))
    }
}

/// The tensors of one checkpoint file, as stored.
pub(super) fn read_file(path: &Path, key: Option<&str>) -> Result<BTreeMap<String, Tensor>> {
    match CheckpointFormat::detect(path)? {
        CheckpointFormat::Safetensors => st::load(path),
        CheckpointFormat::PyTorchZip => pth::load(path, key),
        CheckpointFormat::PyTorchLegacy => legacy::load(path, key),
    }
}

/// `(index, count)` of an HF shard name such as `model-00001-of-00003.safetensors`.
fn shard_of(name: &str, stem: &str, ext: &str) -> Option<(usize, usize)> {
    let rest = name
        .strip_prefix(stem)?
        .strip_prefix('-')?
        .strip_suffix(ext)?;
    let (i, n) = rest.split_once("-of-")?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

/// An HF `save_pretrained` directory: `model.safetensors`, else `pytorch_model.bin`, else
/// their shards (`model-00001-of-0000N.safetensors`, `pytorch_model-00001-of-0000N.bin`),
/// which must all be present and are merged.
pub(super) fn read_dir_checkpoint(
    dir: &Path,
    key: Option<&str>,
) -> Result<BTreeMap<String, Tensor>> {
    for single in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(single);
        if p.is_file() {
            return read_file(&p, key);
        }
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    for (stem, ext) in [("model", ".safetensors"), ("pytorch_model", ".bin")] {
        let mut shards: Vec<(usize, usize, &String)> = names
            .iter()
            .filter_map(|n| shard_of(n, stem, ext).map(|(i, c)| (i, c, n)))
            .collect();
        if shards.is_empty() {
            continue;
        }
        shards.sort();
        let count = shards[0].1;
        let indices: Vec<usize> = shards.iter().map(|s| s.0).collect();
        if shards.iter().any(|s| s.1 != count) || indices != (1..=count).collect::<Vec<_>>() {
            return Err(bad(
                dir,
                format!(
                    "an incomplete sharded checkpoint: found {stem}{ext} shards {indices:?} of {count}"
                ),
            ));
        }
        let mut out = BTreeMap::new();
        for (_, _, name) in shards {
            let p = dir.join(name);
            for (k, t) in read_file(&p, key)? {
                if out.insert(k.clone(), t).is_some() {
                    return Err(bad(&p, format!("tensor `{k}` is also in another shard")));
                }
            }
        }
        return Ok(out);
    }
    let mut some = names;
    some.sort();
    some.truncate(10);
    Err(bad(
        dir,
        format!(
            "a directory without model.safetensors, pytorch_model.bin or their shards (it holds: {})",
            some.join(", ")
        ),
    ))
}
