//! The registry file: its entries ([`Entry`], [`Source`], [`HfFile`]) and the one parser that
//! reads and checks it ([`Registry::parse`]), shared by [`crate::Segmenter::load`]'s name
//! lookup and `cargo xtask list | download`.
//!
//! Three kinds of source, told apart by which keys an entry has:
//! - `url`: one file at a pinned address (the mmsegmentation model zoo). mmseg publishes only
//!   the first 8 hex digits of each file's SHA-256 (in the file name), so `sha256_prefix` (or a
//!   full `sha256`) is required; a full `sha256`, when a maintainer has recorded one, must start
//!   with the prefix.
//! - `hf_repo` + `revision` + `files`: files of a Hugging Face model repository at a pinned
//!   revision; a file's `sha256` is checked for form when present.
//! - `embedded = true`: committed with the repository; nothing to fetch.
//! - `manual_url` + `file`: a file its authors publish only behind a release page (the official
//!   PANet checkpoint on Google Drive, which has no pinned file address or published hash):
//!   placed in `weights/NAME/FILE` by hand; `cargo xtask download NAME` says where to get it and
//!   verifies it (a `sha256`, when a maintainer has recorded one, is enforced).
//!
//! Parsing checks the file as a whole (known keys only, unique names and aliases, well-formed
//! hashes, one source per entry, at most one default per preset), so a bad edit fails at once
//! with an [`Error::BadModel`] naming the file and the entry (or line) it concerns. Nothing
//! here touches the network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use serde::Deserialize;

use crate::{Error, Result};

/// One file of a Hugging Face repository.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfFile {
    /// Path of the file in the repository (`config.json`, `pytorch_model.bin`).
    pub name: String,
    /// Full SHA-256 (64 lowercase hex digits), enforced when present.
    pub sha256: Option<String>,
    /// Size in bytes, enforced when present.
    pub size: Option<u64>,
}

/// Where an entry's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One file at a pinned URL.
    Url {
        /// Download address (https for real entries; tests use http on loopback).
        url: String,
        /// File name the download is stored under (the URL's last path segment).
        file: String,
        /// Full SHA-256, enforced when present.
        sha256: Option<String>,
        /// First hex digits of the SHA-256, enforced when present.
        sha256_prefix: Option<String>,
        /// Size in bytes, when known.
        size: Option<u64>,
    },
    /// Files of a Hugging Face model repository at a revision.
    Hf {
        /// `org/name`.
        repo: String,
        /// A commit (40 hex digits) or a branch name.
        revision: String,
        /// The files to fetch.
        files: Vec<HfFile>,
    },
    /// Committed with the repository (see [`super::bundled_dir`] for segkit's demo model).
    Embedded,
    /// One file fetched by hand from a release page.
    Manual {
        /// The release page (the upstream README's download link).
        page: String,
        /// File name expected under `weights/NAME/`.
        file: String,
        /// Full SHA-256, enforced when present.
        sha256: Option<String>,
        /// Size in bytes, when known.
        size: Option<u64>,
    },
}

/// One `[[model]]` of the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Unique name: the directory `weights/NAME/` and the argument of `cargo xtask download`.
    pub name: String,
    /// Where the files come from.
    pub source: Source,
    /// segkit preset that loads it, when there is one.
    pub preset: Option<String>,
    /// The mmsegmentation config it was trained with (accepted as an alias of `name`).
    pub mmseg_config: Option<String>,
    /// File format (`mmseg-pth`, `hf-pretrained`, `segkit-safetensors`).
    pub format: Option<String>,
    /// How to turn the download into safetensors: `cargo xtask convert {file} {out}.safetensors ..`.
    pub converter: Option<String>,
    /// The checkpoint used when a preset is named without a checkpoint.
    pub default: bool,
    /// One-line description.
    pub description: Option<String>,
    /// Single-scale val mIoU reported by the model zoo, in percent.
    pub miou: Option<f64>,
}

impl Entry {
    /// Whether the entry is committed with the repository rather than downloaded.
    pub fn is_embedded(&self) -> bool {
        matches!(self.source, Source::Embedded)
    }

    /// Whether `name` names this entry: its name or its `mmseg_config` alias.
    pub fn is_called(&self, name: &str) -> bool {
        self.name == name || self.mmseg_config.as_deref() == Some(name)
    }

    /// Sum of the file sizes when every size is known.
    pub fn size(&self) -> Option<u64> {
        match &self.source {
            Source::Url { size, .. } | Source::Manual { size, .. } => *size,
            Source::Hf { files, .. } => files.iter().map(|f| f.size).sum(),
            Source::Embedded => None,
        }
    }

    /// The file names this entry places under `weights/NAME/`.
    pub fn file_names(&self) -> Vec<&str> {
        match &self.source {
            Source::Url { file, .. } | Source::Manual { file, .. } => vec![file.as_str()],
            Source::Hf { files, .. } => files.iter().map(|f| f.name.as_str()).collect(),
            Source::Embedded => Vec::new(),
        }
    }

    /// The pinned full SHA-256 of `file`, if the registry has one.
    pub fn pinned_sha256(&self, file: &str) -> Option<&str> {
        match &self.source {
            Source::Url {
                file: f, sha256, ..
            } if f == file => sha256.as_deref(),
            Source::Hf { files, .. } => files
                .iter()
                .find(|f| f.name == file)
                .and_then(|f| f.sha256.as_deref()),
            Source::Manual {
                file: f, sha256, ..
            } if f == file => sha256.as_deref(),
            _ => None,
        }
    }
}

/// The parsed and checked registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    /// Entries in file order.
    pub entries: Vec<Entry>,
}

impl Registry {
    /// Reads and checks the registry file at `path`.
    ///
    /// Errors: a file that cannot be read ([`Error::Core`] with the path), or what
    /// [`Registry::parse`] rejects.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            Error::Core(segkit_core::Error::Io {
                path: path.to_path_buf(),
                source,
            })
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks registry text; `path` is only used in messages.
    ///
    /// Errors: [`Error::BadModel`] with `path` and a one-line reason that names the entry
    /// (`model `NAME`: ..`, or `model #N` when the name is missing) or, for TOML syntax and
    /// unknown keys, the line.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let err = |reason: String| Error::BadModel {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawRegistry = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines (a source excerpt); keep the first, and say
            // where.
            let msg = e.message().lines().next().unwrap_or("").to_string();
            err(match e.span() {
                Some(s) => format!("line {}: {msg}", line_of(text, s.start)),
                None => msg,
            })
        })?;
        let entries = raw
            .model
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.into_entry(i))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(err)?;
        check_unique(&entries).map_err(err)?;
        Ok(Self { entries })
    }

    /// Every entry name, in file order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// The entry called `name` or whose `mmseg_config` is `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        // Parsing made names and aliases unique, so at most one entry answers to `name`.
        self.entries.iter().find(|e| e.is_called(name))
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Names and aliases name one entry each; a preset has at most one default.
fn check_unique(entries: &[Entry]) -> std::result::Result<(), String> {
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for e in entries {
        let alias = e.mmseg_config.as_deref().filter(|a| *a != e.name);
        for a in std::iter::once(e.name.as_str()).chain(alias) {
            if let Some(other) = names.insert(a, e.name.as_str()) {
                return Err(format!("`{a}` names both `{other}` and `{}`", e.name));
            }
        }
    }
    let mut defaults: BTreeMap<&str, &str> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.default) {
        if let Some(p) = e.preset.as_deref() {
            if let Some(other) = defaults.insert(p, e.name.as_str()) {
                return Err(format!(
                    "preset `{p}` has two defaults: `{other}` and `{}`",
                    e.name
                ));
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    model: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Option<String>,
    preset: Option<String>,
    mmseg_config: Option<String>,
    description: Option<String>,
    url: Option<String>,
    sha256: Option<String>,
    sha256_prefix: Option<String>,
    size: Option<u64>,
    hf_repo: Option<String>,
    revision: Option<String>,
    files: Option<Vec<HfFile>>,
    #[serde(default)]
    embedded: bool,
    manual_url: Option<String>,
    file: Option<String>,
    format: Option<String>,
    converter: Option<String>,
    miou: Option<f64>,
    #[serde(default)]
    default: bool,
}

type Check<T> = std::result::Result<T, String>;

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a full SHA-256: 64 lowercase hex digits.
fn check_sha256(s: &str) -> Check<()> {
    if s.len() == 64 && is_hex(s) {
        Ok(())
    } else {
        Err(format!("sha256 `{s}` is not 64 lowercase hex digits"))
    }
}

/// A relative path without `..`: what may be joined under `weights/NAME/`.
fn check_rel(s: &str) -> Check<()> {
    let ok = !s.is_empty()
        && Path::new(s)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!("`{s}` is not a plain relative file path"))
    }
}

/// The last path segment of a URL, query and fragment removed.
fn url_file_name(url: &str) -> Option<&str> {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    let (_, rest) = no_query.split_once("://")?;
    let (_, path) = rest.split_once('/')?;
    path.rsplit('/').next().filter(|s| !s.is_empty())
}

/// Checks an entry name: ASCII letters, digits, `-`, `_` and `.`, not leading.
fn check_name(name: &str) -> Check<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err("names are ASCII letters, digits, `-`, `_` and `.` (not leading)".into())
    }
}

/// Lowercases and checks `url` entry hashes: a well-formed full hash and / or prefix (at least
/// one), the hash starting with the prefix.
fn url_hashes(
    sha256: Option<&str>,
    prefix: Option<&str>,
) -> Check<(Option<String>, Option<String>)> {
    let sha256 = sha256.map(str::to_ascii_lowercase);
    let prefix = prefix.map(str::to_ascii_lowercase);
    if let Some(s) = &sha256 {
        check_sha256(s)?;
    }
    if let Some(p) = &prefix {
        if p.is_empty() || p.len() > 64 || !is_hex(p) {
            return Err(format!("sha256_prefix `{p}` is not hex digits"));
        }
        if let Some(s) = &sha256 {
            if !s.starts_with(p.as_str()) {
                return Err(format!("sha256 {s} does not start with sha256_prefix {p}"));
            }
        }
    }
    if sha256.is_none() && prefix.is_none() {
        return Err("a url entry needs `sha256` or `sha256_prefix`".into());
    }
    Ok((sha256, prefix))
}

/// Checks the `files` of an `hf_repo` entry (plain relative names, listed once, well-formed
/// hashes, which are lowercased).
fn hf_files(files: Option<Vec<HfFile>>) -> Check<Vec<HfFile>> {
    let mut files = files.unwrap_or_default();
    if files.is_empty() {
        return Err("an `hf_repo` entry needs `files`".into());
    }
    for f in &mut files {
        check_rel(&f.name)?;
        if let Some(s) = &mut f.sha256 {
            *s = s.to_ascii_lowercase();
            check_sha256(s).map_err(|m| format!("{}: {m}", f.name))?;
        }
    }
    let mut seen = BTreeSet::new();
    if let Some(f) = files.iter().find(|f| !seen.insert(f.name.as_str())) {
        return Err(format!("file `{}` is listed twice", f.name));
    }
    Ok(files)
}

impl RawEntry {
    fn into_entry(mut self, index: usize) -> Check<Entry> {
        let name = self
            .name
            .take()
            .ok_or_else(|| format!("model #{}: `name` is missing", index + 1))?;
        let ctx = |m: String| format!("model `{name}`: {m}");
        check_name(&name).map_err(ctx)?;
        let kinds = [
            self.url.is_some(),
            self.hf_repo.is_some(),
            self.embedded,
            self.manual_url.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(ctx(
                "give exactly one source: `url`, `hf_repo`, `embedded = true` or `manual_url`"
                    .into(),
            ));
        }
        if self.file.is_some() && self.manual_url.is_none() {
            return Err(ctx("`file` belongs to `manual_url` entries".into()));
        }
        if let Some(m) = self.miou {
            if !(0.0..=100.0).contains(&m) {
                return Err(ctx(format!("miou {m} is not a percentage")));
            }
        }
        let source = if let Some(url) = self.url.take() {
            self.url_source(url)
        } else if let Some(repo) = self.hf_repo.take() {
            self.hf_source(repo)
        } else if let Some(page) = self.manual_url.take() {
            self.manual_source(page)
        } else {
            self.embedded_source()
        }
        .map_err(ctx)?;
        Ok(Entry {
            name,
            source,
            preset: self.preset,
            mmseg_config: self.mmseg_config,
            format: self.format,
            converter: self.converter,
            default: self.default,
            description: self.description,
            miou: self.miou,
        })
    }

    /// A `url` entry: the file named by the URL, its hashes and size.
    fn url_source(&self, url: String) -> Check<Source> {
        if self.revision.is_some() || self.files.is_some() {
            return Err("`revision` and `files` belong to `hf_repo` entries".into());
        }
        let file = url_file_name(&url)
            .ok_or_else(|| format!("cannot take a file name from the url `{url}`"))?
            .to_string();
        check_rel(&file)?;
        let (sha256, sha256_prefix) =
            url_hashes(self.sha256.as_deref(), self.sha256_prefix.as_deref())?;
        Ok(Source::Url {
            url,
            file,
            sha256,
            sha256_prefix,
            size: self.size,
        })
    }

    /// An `hf_repo` entry: `org/name`, a revision and its files (taken out of `self`).
    fn hf_source(&mut self, repo: String) -> Check<Source> {
        if self.sha256.is_some() || self.sha256_prefix.is_some() || self.size.is_some() {
            return Err("hashes and sizes of an `hf_repo` entry go in its `files`".into());
        }
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("hf_repo `{repo}` is not `org/name`"));
        }
        let revision = self
            .revision
            .take()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| "an `hf_repo` entry needs a `revision`".to_string())?;
        Ok(Source::Hf {
            repo,
            revision,
            files: hf_files(self.files.take())?,
        })
    }

    /// A `manual_url` entry: the release page, the file's name, an optional full hash.
    fn manual_source(&mut self, page: String) -> Check<Source> {
        if self.revision.is_some() || self.files.is_some() || self.sha256_prefix.is_some() {
            return Err(
                "a `manual_url` entry has a `file` and at most a full `sha256` and a `size`".into(),
            );
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| "a `manual_url` entry needs `file`".to_string())?;
        check_rel(&file)?;
        let sha256 = self.sha256.take().map(|s| s.to_ascii_lowercase());
        if let Some(s) = &sha256 {
            check_sha256(s)?;
        }
        Ok(Source::Manual {
            page,
            file,
            sha256,
            size: self.size,
        })
    }

    /// An `embedded = true` entry, which has nothing to fetch.
    fn embedded_source(&self) -> Check<Source> {
        if self.sha256.is_some()
            || self.sha256_prefix.is_some()
            || self.revision.is_some()
            || self.files.is_some()
        {
            return Err("an embedded entry has no hashes, revision or files".into());
        }
        Ok(Source::Embedded)
    }
}
