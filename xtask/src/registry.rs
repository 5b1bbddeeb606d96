//! `weights/registry.toml`: every checkpoint `cargo xtask download` knows, by NAME.
//!
//! Three kinds of source, told apart by which keys an entry has:
//! - `url`: one file at a pinned address (the mmsegmentation model zoo). mmseg publishes only
//!   the first 8 hex digits of each file's SHA-256 (in the file name), so `sha256_prefix` is
//!   required and always enforced; a full `sha256`, when a maintainer has recorded one, is
//!   enforced as well.
//! - `hf_repo` + `revision` + `files`: files of a Hugging Face model repository at a pinned
//!   revision; a file's `sha256` is enforced when present.
//! - `embedded = true`: committed with the repository under `weights/NAME/`; nothing to fetch.
//!
//! Parsing checks the file as a whole (unique names, well-formed hashes, one source per entry,
//! at most one default per preset) so a bad edit fails at once with the entry it concerns.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::download::DownloadError;

/// Where the registry lives, relative to the repository root.
pub const REGISTRY: &str = "weights/registry.toml";

/// One file of a Hugging Face repository.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq)]
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
    /// Committed under `weights/NAME/`.
    Embedded,
}

/// One `[[model]]` of the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Unique name: the directory under `weights/` and the argument of `download`.
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
    /// One-line description for `list`.
    pub description: Option<String>,
}

impl Entry {
    /// Sum of the file sizes when every size is known.
    pub fn size(&self) -> Option<u64> {
        match &self.source {
            Source::Url { size, .. } => *size,
            Source::Hf { files, .. } => files.iter().map(|f| f.size).sum(),
            Source::Embedded => None,
        }
    }

    /// The file names this entry places under `weights/NAME/`.
    pub fn file_names(&self) -> Vec<&str> {
        match &self.source {
            Source::Url { file, .. } => vec![file.as_str()],
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
            _ => None,
        }
    }
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
    format: Option<String>,
    converter: Option<String>,
    miou: Option<f64>,
    #[serde(default)]
    default: bool,
}

/// The parsed registry.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Entries in file order.
    pub entries: Vec<Entry>,
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a full SHA-256: 64 lowercase hex digits.
fn check_sha256(s: &str) -> Result<(), String> {
    if s.len() == 64 && is_hex(s) {
        Ok(())
    } else {
        Err(format!("sha256 `{s}` is not 64 lowercase hex digits"))
    }
}

/// A relative path without `..`: what may be joined under `weights/NAME/`.
fn check_rel(s: &str) -> Result<(), String> {
    let p = Path::new(s);
    let ok = !s.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
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
fn check_name(name: &str) -> Result<(), String> {
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
) -> Result<(Option<String>, Option<String>), String> {
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
fn hf_files(files: Option<Vec<HfFile>>) -> Result<Vec<HfFile>, String> {
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
    let mut seen = std::collections::BTreeSet::new();
    if let Some(f) = files.iter().find(|f| !seen.insert(f.name.clone())) {
        return Err(format!("file `{}` is listed twice", f.name));
    }
    Ok(files)
}

impl RawEntry {
    fn into_entry(mut self, index: usize) -> Result<Entry, String> {
        let name = self
            .name
            .take()
            .ok_or_else(|| format!("model #{}: `name` is missing", index + 1))?;
        let ctx = |m: String| format!("model `{name}`: {m}");
        check_name(&name).map_err(ctx)?;
        let kinds = [self.url.is_some(), self.hf_repo.is_some(), self.embedded];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(ctx(
                "give exactly one source: `url`, `hf_repo` or `embedded = true`".into(),
            ));
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
        })
    }

    /// A `url` entry: the file named by the URL, its hashes and size.
    fn url_source(&self, url: String) -> Result<Source, String> {
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
    fn hf_source(&mut self, repo: String) -> Result<Source, String> {
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

    /// An `embedded = true` entry, which has nothing to fetch.
    fn embedded_source(&self) -> Result<Source, String> {
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

impl Registry {
    /// Reads and checks the registry file.
    pub fn load(path: &Path) -> Result<Self, DownloadError> {
        let text = std::fs::read_to_string(path).map_err(|source| DownloadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks registry text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, DownloadError> {
        let err = |msg: String| DownloadError::Registry {
            path: path.to_path_buf(),
            msg,
        };
        let raw: RawRegistry = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines (a source excerpt); keep the first.
            err(e.message().to_string())
        })?;
        let entries = raw
            .model
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.into_entry(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let mut names: BTreeMap<&str, &str> = BTreeMap::new();
        for e in &entries {
            let alias = e.mmseg_config.as_deref().filter(|a| *a != e.name);
            for a in std::iter::once(e.name.as_str()).chain(alias) {
                if let Some(other) = names.insert(a, e.name.as_str()) {
                    return Err(err(format!("`{a}` names both `{other}` and `{}`", e.name)));
                }
            }
        }
        let mut defaults: BTreeMap<&str, &str> = BTreeMap::new();
        for e in entries.iter().filter(|e| e.default) {
            if let Some(p) = e.preset.as_deref() {
                if let Some(other) = defaults.insert(p, e.name.as_str()) {
                    return Err(err(format!(
                        "preset `{p}` has two defaults: `{other}` and `{}`",
                        e.name
                    )));
                }
            }
        }
        Ok(Self { entries })
    }

    /// Every entry name, in file order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// The entry called `name` (or whose `mmseg_config` is `name`); the error lists the
    /// valid names.
    pub fn get(&self, name: &str) -> Result<&Entry, DownloadError> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|e| e.mmseg_config.as_deref() == Some(name))
            })
            .ok_or_else(|| DownloadError::UnknownName {
                name: name.to_string(),
                valid: self.names(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Registry, DownloadError> {
        Registry::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn the_committed_registry_is_valid() {
        let path = crate::root().join(REGISTRY);
        let reg = Registry::load(&path).unwrap();
        let presets: Vec<String> = segkit::Preset::all().iter().map(|p| p.name()).collect();
        let mut url = 0;
        let mut hf = 0;
        for e in &reg.entries {
            match &e.source {
                Source::Url {
                    url: u,
                    file,
                    sha256_prefix,
                    ..
                } => {
                    url += 1;
                    assert!(u.starts_with("https://"), "{u}");
                    // mmseg's publish script puts the hash prefix in the file name.
                    let p = sha256_prefix.as_deref().unwrap();
                    assert!(file.ends_with(&format!("-{p}.pth")), "{file} vs {p}");
                    let preset = e.preset.as_deref().unwrap();
                    assert!(
                        presets.iter().any(|x| x == preset),
                        "unknown preset {preset}"
                    );
                    // The default checkpoint of a preset is named after it.
                    assert_eq!(e.default, e.name == preset, "{}", e.name);
                    let conv = e.converter.as_deref().unwrap();
                    assert!(conv.starts_with("cargo xtask convert {file} {out}.safetensors"));
                }
                Source::Hf {
                    repo,
                    revision,
                    files,
                } => {
                    hf += 1;
                    assert!(repo.starts_with("shi-labs/oneformer_"), "{repo}");
                    // One checkpoint per OneFormer preset, named after it.
                    assert_eq!(e.preset.as_deref(), Some(e.name.as_str()));
                    assert!(e.default);
                    assert_eq!(revision.len(), 40, "{repo}: pin a commit");
                    assert!(files.iter().any(|f| f.name == "config.json"));
                    assert!(files.iter().any(|f| f.name == "pytorch_model.bin"));
                }
                Source::Embedded => assert_eq!(e.name, "segkit-demo"),
            }
        }
        assert_eq!(url, 28);
        assert!(hf >= 4);
        assert!(reg.get("segkit-demo").is_ok());
        // Non-default checkpoints are also reachable by their mmseg config name.
        let e = reg.get("pspnet_r50-d8_4xb4-80k_ade20k-512x512").unwrap();
        assert!(!e.default);
        let e = reg.get("pspnet_r50-d8_4xb4-160k_ade20k-512x512").unwrap();
        assert_eq!(e.name, "pspnet_r50-d8_ade20k-512x512");
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let reg = parse(
            r#"
            [[model]]
            name = "a"
            url = "https://x/y/a-12345678.pth"
            sha256_prefix = "12345678"
            [[model]]
            name = "b"
            embedded = true
            "#,
        )
        .unwrap();
        let e = reg.get("c").unwrap_err().to_string();
        assert!(e.contains("unknown model `c`") && e.contains("a, b"), "{e}");
        assert!(!e.contains('\n'));
        match &reg.get("a").unwrap().source {
            Source::Url { file, .. } => assert_eq!(file, "a-12345678.pth"),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn rejects_bad_entries() {
        let bad = [
            // no source
            "[[model]]\nname = \"a\"\n",
            // two sources
            "[[model]]\nname = \"a\"\nembedded = true\nurl = \"https://x/a.pth\"\nsha256_prefix = \"12\"\n",
            // url without any hash
            "[[model]]\nname = \"a\"\nurl = \"https://x/a.pth\"\n",
            // bad hash
            "[[model]]\nname = \"a\"\nurl = \"https://x/a.pth\"\nsha256 = \"xyz\"\n",
            // prefix and full hash disagree
            &format!(
                "[[model]]\nname = \"a\"\nurl = \"https://x/a.pth\"\nsha256_prefix = \"12\"\nsha256 = \"{}\"\n",
                "0".repeat(64)
            ),
            // hf without revision
            "[[model]]\nname = \"a\"\nhf_repo = \"o/n\"\nfiles = [{ name = \"config.json\" }]\n",
            // hf path escaping the directory
            "[[model]]\nname = \"a\"\nhf_repo = \"o/n\"\nrevision = \"main\"\nfiles = [{ name = \"../x\" }]\n",
            // unknown key
            "[[model]]\nname = \"a\"\nembedded = true\ncolour = 1\n",
            // duplicate name
            "[[model]]\nname = \"a\"\nembedded = true\n[[model]]\nname = \"a\"\nembedded = true\n",
            // two defaults for one preset
            "[[model]]\nname = \"a\"\nembedded = true\npreset = \"p\"\ndefault = true\n[[model]]\nname = \"b\"\nembedded = true\npreset = \"p\"\ndefault = true\n",
        ];
        for b in bad {
            let e = parse(b).unwrap_err().to_string();
            assert!(e.starts_with("test.toml: "), "{e}");
        }
    }
}
