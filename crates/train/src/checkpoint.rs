//! Training checkpoints: one safetensors file holding the model (`model.{key}`, mmseg keys,
//! BatchNorm running statistics included), the optimizer state (`optim.{key}.{buffer}`) and,
//! in the header's metadata, the iteration, the data order's position, the dropout stream's
//! state, the AdamW step counts and both configs as JSON.
//!
//! Files are written atomically: the bytes go to a temporary file `.NAME.tmp-PID` in the same
//! directory, which is flushed to disk and renamed over the target, so a failed or
//! interrupted write leaves the previous checkpoint intact. What an interruption can leave:
//! - a failed write removes its temporary file;
//! - SIGINT / SIGTERM: `segkit` waits for a write in progress to finish ([`block_writes`])
//!   before it exits, so no temporary file is left;
//! - SIGKILL (or a crash) leaves `.NAME.tmp-PID`; the next run in that directory removes
//!   such files of processes that are no longer alive ([`remove_stale_temps`]) — only names
//!   of this pattern, only for dead PIDs.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockWriteGuard};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;

use serde::{Deserialize, Serialize};

use crate::record::IntervalState;
use crate::{TrainError, TrainResult};

/// Format tag stored in the metadata.
pub const FORMAT: &str = "segkit-train-checkpoint/1";

/// A checkpoint's contents.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Tensors by name (f32).
    pub tensors: BTreeMap<String, Tensor>,
    /// Header metadata.
    pub metadata: BTreeMap<String, String>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn ck_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Serialises f32 tensors and metadata to safetensors bytes.
pub fn to_bytes(
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> TrainResult<Vec<u8>> {
    let mut bufs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v = t
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        bufs.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = bufs
        .iter()
        .map(|(n, shape, b)| {
            TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ck_err(Path::new(n), e.to_string()))
        })
        .collect::<TrainResult<Vec<_>>>()?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let meta = (!meta.is_empty()).then_some(meta);
    safetensors::serialize(views, meta)
        .map_err(|e| ck_err(Path::new("<checkpoint>"), e.to_string()))
}

/// Creates the directory `dir` (and its parents) unless it exists; a path component that is
/// a regular file is reported as such (not as "File exists").
pub fn ensure_dir(dir: &Path) -> TrainResult<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(file) = dir.ancestors().find(|a| a.exists() && !a.is_dir()) {
        let what = if file == dir {
            "it is a regular file, not a directory".to_string()
        } else {
            format!("{} is a regular file, not a directory", file.display())
        };
        return Err(io_err(
            dir,
            format!("cannot use as output directory: {what}"),
        ));
    }
    fs::create_dir_all(dir).map_err(|e| io_err(dir, format!("cannot create the directory: {e}")))
}

/// `p` absolute with links resolved; a path that does not exist yet as its parent's
/// canonical form joined with its name.
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent().map(|d| d.canonicalize()), p.file_name()) {
        (Some(Ok(d)), Some(n)) => d.join(n),
        _ => p.to_path_buf(),
    }
}

/// Refuses a run whose output files (`names` in `cfg.output_dir`) include one of its inputs:
/// the config file itself, `load_from`, a `pretrained` file or the model file — a training run never replaces a
/// file it reads.
pub fn refuse_overwriting_inputs(cfg: &crate::TrainConfig, names: &[&str]) -> TrainResult<()> {
    let mut inputs: Vec<(&str, &Path)> = Vec::new();
    if let Some(s) = &cfg.source {
        inputs.push(("the training config", s));
    }
    if let Some(l) = &cfg.load_from {
        inputs.push(("`load_from`", l));
    }
    for p in &cfg.pretrained {
        inputs.push(("`pretrained`", &p.path));
    }
    if let crate::ModelSpec::File { path } = &cfg.model {
        inputs.push(("`model.path`", path));
    }
    for name in names {
        let out = cfg.output_dir.join(name);
        let c = canonical(&out);
        if let Some((role, p)) = inputs.iter().find(|(_, p)| canonical(p) == c) {
            return Err(cfg.error(format!(
                "`output_dir`: the run would write {} over {role} {}; choose another \
                 output_dir",
                out.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// Held (shared) by every write in progress; [`block_writes`] takes it exclusively.
static WRITES: RwLock<()> = RwLock::new(());

/// Waits until no atomic write is in progress and keeps new ones from starting while the
/// guard lives: a signal handler takes it before exiting, so an interrupted process leaves
/// either the finished file or the previous one, and no temporary file.
pub fn block_writes() -> RwLockWriteGuard<'static, ()> {
    WRITES.write().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` as one write that [`block_writes`] waits for (the CLI's own grouped writes use
/// it too).
pub fn as_one_write<T>(f: impl FnOnce() -> T) -> T {
    let _guard = WRITES.read().unwrap_or_else(|e| e.into_inner());
    f()
}

/// The PID of a temporary file this module writes, `.NAME.tmp-PID`.
fn temp_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (stem, pid) = rest.rsplit_once(".tmp-")?;
    if stem.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` is alive (`/proc/PID` exists); `None` where that cannot be known
/// (no `/proc`).
fn pid_alive(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    Some(Path::new("/proc").join(pid.to_string()).exists())
}

/// Removes the temporary files `.NAME.tmp-PID` (NAME one of `names`) that processes which
/// are no longer alive left in `dir` (a SIGKILL during a write); returns the removed paths.
/// Nothing else is touched: other names, live PIDs (another run writing there), and
/// everything on systems without `/proc`.
pub fn remove_stale_temps(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_pid(&name) else {
            continue;
        };
        let ours = names.iter().any(|n| {
            name.strip_prefix('.').and_then(|r| r.strip_prefix(n)) == Some(&format!(".tmp-{pid}"))
        });
        if !ours || pid == std::process::id() || pid_alive(pid) != Some(false) {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// Writes `bytes` to `path` atomically (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> TrainResult<()> {
    write_atomic_with(path, bytes, |f, b| f.write_all(b))
}

/// [`write_atomic`] with the write itself supplied (tests use it to make a write fail
/// half-way).
#[doc(hidden)]
pub fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    write: impl FnOnce(&mut File, &[u8]) -> io::Result<()>,
) -> TrainResult<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _guard = WRITES.read().unwrap_or_else(|e| e.into_inner());
    let result = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        write(&mut f, bytes)?;
        f.flush()?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable (best effort: not every platform can sync a folder).
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(
            path,
            format!("writing failed ({e}); the previous file is kept"),
        ));
    }
    Ok(())
}

/// Writes a checkpoint atomically.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> TrainResult<()> {
    let bytes = to_bytes(tensors, metadata)?;
    write_atomic(path, &bytes)
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> TrainResult<Checkpoint> {
    let buf = fs::read(path).map_err(|e| io_err(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&buf)
        .map_err(|e| ck_err(path, format!("not a readable safetensors file ({e})")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&buf)
        .map_err(|e| ck_err(path, format!("unreadable header ({e})")))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(ck_err(
            path,
            format!("not a segkit training checkpoint (format tag `{FORMAT}` missing)"),
        ));
    }
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(ck_err(path, format!("tensor `{name}` is not f32")));
        }
        let t = Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), &Device::Cpu)
            .map_err(|e| ck_err(path, format!("tensor `{name}`: {e}")))?;
        tensors.insert(name, t);
    }
    Ok(Checkpoint { tensors, metadata })
}

/// What a checkpoint's metadata `state` stores besides the tensors: the position of the run
/// (iteration, data order, samples seen, dropout stream, AdamW step counts), the log
/// interval's sums and the training-set size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) iteration: usize,
    pub(crate) epoch: u64,
    pub(crate) pos: usize,
    pub(crate) samples_seen: u64,
    pub(crate) dropout_state: u64,
    pub(crate) adam_steps: BTreeMap<String, u64>,
    /// The interval's loss sums (bit patterns) and count.
    #[serde(flatten)]
    pub(crate) interval: IntervalState,
    pub(crate) train_len: usize,
}

/// JSON text of a checkpoint metadata entry.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> TrainResult<String> {
    serde_json::to_string(v).map_err(|e| TrainError::Io {
        path: PathBuf::from("<checkpoint metadata>"),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_of_older_checkpoints_still_reads() {
        // The metadata `state` of a checkpoint written before losses were named.
        let old = r#"{"iteration": 4, "epoch": 0, "pos": 12, "samples_seen": 12,
            "dropout_state": 7, "adam_steps": {}, "interval_bits": [1, 2, 3],
            "interval_count": 0, "train_len": 24}"#;
        let s: State = serde_json::from_str(old).unwrap();
        assert_eq!(s.interval.interval_bits, [1, 2, 3]);
        assert_eq!(s.interval.interval_named_bits, None);
        let back: State = serde_json::from_str(&to_json(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn stale_temps_of_dead_processes_only_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A PID above the kernel's maximum (4194304) is never alive.
        let dead = ".checkpoint.safetensors.tmp-99999999";
        let alive = format!(".checkpoint.safetensors.tmp-{}", std::process::id());
        let parent = format!(
            ".model.safetensors.tmp-{}",
            std::os::unix::process::parent_id()
        );
        let keep = [
            alive.as_str(),
            parent.as_str(),
            ".notes.txt.tmp-99999999",
            "checkpoint.safetensors.tmp-99999999",
            ".checkpoint.safetensors.tmp-12ab",
            "checkpoint.safetensors",
        ];
        for n in keep.iter().chain([&dead]) {
            fs::write(dir.path().join(n), b"x").unwrap();
        }
        let names = ["checkpoint.safetensors", "model.safetensors"];
        let removed = remove_stale_temps(dir.path(), &names);
        assert_eq!(removed, vec![dir.path().join(dead)]);
        for n in keep {
            assert!(dir.path().join(n).exists(), "{n} removed");
        }
        assert_eq!(temp_pid(".a.tmp-12"), Some(12));
        assert_eq!(temp_pid("a.tmp-12"), None);
    }

    #[test]
    fn failed_write_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        save(&path, &[("a".into(), t.clone())], &meta).unwrap();
        let bytes = to_bytes(&[("a".into(), (t * 3.0).unwrap())], &meta).unwrap();
        let e = write_atomic_with(&path, &bytes, |f, b| {
            f.write_all(&b[..b.len() / 2])?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        let back = load(&path).unwrap();
        assert_eq!(back.tensors["a"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
    }
}
