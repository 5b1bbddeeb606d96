//! Model names: `weights/registry.toml` and the `weights/NAME/` directories.
//!
//! A name resolves to the first `ROOT/NAME/` directory that holds a file, searching
//! `$SEGKIT_WEIGHTS` (when set) and then the workspace's `weights/` directory (found at compile
//! time). The registry (`registry.toml` in those roots) says what each name is — an mmseg
//! preset checkpoint, a Hugging Face OneFormer directory, or the committed demo model — and
//! which names exist but are not downloaded yet.
//!
//! The registry file has one parser, [`Registry::parse`] (in [`file`](mod@file): sources,
//! hashes, defaults, validation), used both here ([`list_models`], [`find_model`]) and by
//! `cargo xtask list | download`, which add the download side (network, files on disk).

pub mod file;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use file::{Entry, HfFile, Registry, Source};

use crate::{Error, Result};

/// The model [`crate::Segmenter::load`] users reach for first: segkit's small trained demo
/// model, committed in `crates/segkit/demo/`.
pub const DEFAULT_MODEL: &str = "segkit-demo";

/// Environment variable naming an extra weights directory, searched before the built-in one.
pub const WEIGHTS_ENV: &str = "SEGKIT_WEIGHTS";

/// The registry's file name inside a weights directory.
pub const REGISTRY_FILE: &str = "registry.toml";

/// The workspace's `weights/` directory (where `cargo xtask download` puts files), as known
/// at compile time.
pub fn builtin_weights_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("weights");
    p.canonicalize().unwrap_or(p)
}

/// The directories searched for `NAME/`, in order: `$SEGKIT_WEIGHTS` (when set and not
/// empty), then [`builtin_weights_dir`].
pub fn weights_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(e) = std::env::var_os(WEIGHTS_ENV).filter(|e| !e.is_empty()) {
        roots.push(PathBuf::from(e));
    }
    let builtin = builtin_weights_dir();
    if !roots.contains(&builtin) {
        roots.push(builtin);
    }
    roots
}

/// The demo instance model (PANet), shipped in the `segkit` package beside the default.
pub const DEMO_PANET_MODEL: &str = "segkit-demo-panet";

/// The demo universal model (OneFormer: semantic, instance and panoptic), shipped in the
/// `segkit` package beside the default.
pub const DEMO_ONEFORMER_MODEL: &str = "segkit-demo-oneformer";

/// Where segkit's sources keep an embedded model: `demo/` of the `segkit` package
/// (`crates/segkit/demo/` in the workspace) for [`DEFAULT_MODEL`], `demo/panet/` for
/// [`DEMO_PANET_MODEL`], `demo/oneformer/` for [`DEMO_ONEFORMER_MODEL`], `None` for any other
/// name. The directory is there in a checkout and
/// in the packaged crate; an installed binary does not need it for the default
/// ([`crate::Segmenter::load_embedded_default`]).
pub fn bundled_dir(name: &str) -> Option<PathBuf> {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    match name {
        DEFAULT_MODEL => Some(demo),
        DEMO_PANET_MODEL => Some(demo.join("panet")),
        DEMO_ONEFORMER_MODEL => Some(demo.join("oneformer")),
        _ => None,
    }
}

/// A model name [`crate::Segmenter::load`] knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The name (`weights/NAME/`).
    pub name: String,
    /// The segkit preset its checkpoint loads into (mmseg and OneFormer entries).
    pub preset: Option<String>,
    /// The registry's `format` (`mmseg-pth`, `hf-pretrained`, `segkit-safetensors`).
    pub format: Option<String>,
    /// The registry's one-line description.
    pub description: Option<String>,
    /// An alias (the mmseg config the checkpoint was trained with).
    pub mmseg_config: Option<String>,
    /// Committed with the repository rather than downloaded.
    pub embedded: bool,
    /// Listed in a registry (false for a directory found under a weights root only).
    pub registered: bool,
    /// Where its files are, when present.
    pub dir: Option<PathBuf>,
}

impl ModelEntry {
    /// Whether the model's files are present.
    pub fn is_present(&self) -> bool {
        self.dir.is_some()
    }

    /// What to do to get the files of a registered model that is not present.
    pub fn fetch_hint(&self) -> String {
        if self.embedded {
            let home = bundled_dir(&self.name).map_or_else(
                || format!("weights/{}/", self.name),
                |d| d.display().to_string(),
            );
            format!(
                "it is committed with the repository in {home} (check out the whole \
                 repository, or point ${WEIGHTS_ENV} at a directory containing {}/)",
                self.name
            )
        } else {
            format!("run `cargo xtask download {}`", self.name)
        }
    }
}

/// `ROOT/NAME` when it is a directory holding at least one visible file.
fn present_in(root: &Path, name: &str) -> Option<PathBuf> {
    let dir = root.join(name);
    let has_file = std::fs::read_dir(&dir).ok()?.flatten().any(|e| {
        !e.file_name().to_string_lossy().starts_with('.')
            && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink())
    });
    has_file.then_some(dir)
}

/// The first root holding `NAME/` with files.
fn present(roots: &[PathBuf], name: &str) -> Option<PathBuf> {
    roots.iter().find_map(|r| present_in(r, name))
}

/// Every model name known: the registries' entries (first registry wins on a name), then
/// the directories under the weights roots that no registry lists, each with whether (and
/// where) its files are present.
///
/// Errors: a registry file that exists but cannot be read, or that [`Registry::parse`]
/// rejects ([`Error::BadModel`] naming the file and the entry).
pub fn list_models() -> Result<Vec<ModelEntry>> {
    let roots = weights_roots();
    let mut out: Vec<ModelEntry> = Vec::new();
    for root in &roots {
        let reg = root.join(REGISTRY_FILE);
        if !reg.is_file() {
            continue;
        }
        for e in Registry::load(&reg)?.entries {
            if out.iter().any(|o| o.name == e.name) {
                continue;
            }
            // An embedded model other than the default (which is compiled in) is read from
            // its bundled directory when no weights root holds it.
            let bundled = (e.is_embedded() && e.name != DEFAULT_MODEL)
                .then(|| bundled_dir(&e.name))
                .flatten()
                .filter(|d| d.join("config.json").is_file());
            out.push(ModelEntry {
                dir: present(&roots, &e.name).or(bundled),
                embedded: e.is_embedded(),
                name: e.name,
                preset: e.preset,
                format: e.format,
                description: e.description,
                mmseg_config: e.mmseg_config,
                registered: true,
            });
        }
    }
    for root in &roots {
        let Ok(rd) = std::fs::read_dir(root) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            if out.iter().any(|o| o.name == name) {
                continue;
            }
            if let Some(dir) = present_in(root, &name) {
                out.push(ModelEntry {
                    name,
                    preset: None,
                    format: None,
                    description: None,
                    mmseg_config: None,
                    embedded: false,
                    registered: false,
                    dir: Some(dir),
                });
            }
        }
    }
    Ok(out)
}

/// Whether `s` can be a model name rather than a path: one plain path component.
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.contains(std::path::MAIN_SEPARATOR)
}

/// The entry called `name` (or whose mmseg config is `name`).
///
/// Errors: [`Error::UnknownModel`] listing the names that are present and the registered
/// ones that are not.
pub fn find_model(name: &str) -> Result<ModelEntry> {
    let all = list_models()?;
    if let Some(e) = all
        .iter()
        .find(|e| e.name == name)
        .or_else(|| all.iter().find(|e| e.mmseg_config.as_deref() == Some(name)))
    {
        return Ok(e.clone());
    }
    Err(Error::UnknownModel {
        name: name.to_string(),
        present: all
            .iter()
            .filter(|e| e.is_present())
            .map(|e| e.name.clone())
            .collect(),
        not_downloaded: all
            .iter()
            .filter(|e| !e.is_present())
            .map(|e| e.name.clone())
            .collect(),
    })
}

/// The known model called `name` (or aliased so), if any; a registry that does not parse
/// counts as none.
pub(crate) fn entry_for_dir_name(name: &str) -> Option<ModelEntry> {
    list_models()
        .ok()?
        .into_iter()
        .find(|e| e.name == name || e.mmseg_config.as_deref() == Some(name))
}
