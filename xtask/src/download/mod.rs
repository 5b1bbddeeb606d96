//! `cargo xtask download NAME.. [--force] [--convert]`: fetches registry entries into
//! `weights/NAME/` and verifies them.
//!
//! - `url` entries (mmseg model zoo): HTTPS with a progress bar, resume from
//!   `weights/NAME/FILE.partial`, SHA-256 checked (the 8-hex prefix mmseg publishes, and the
//!   full hash once recorded), atomic rename into place ([`url`]).
//! - `hf_repo` entries (OneFormer): through the Hugging Face cache with `hf-hub`, honouring
//!   `HF_HOME` / `HF_HUB_CACHE` / `HF_HUB_OFFLINE` / `HF_ENDPOINT` / `HF_TOKEN` ([`hf`]).
//! - `embedded` entries: committed with the repository; only checked for presence.
//!
//! A verified download leaves `weights/NAME/.verified` (`sha256sum` format). When the registry
//! has no full hash for a file, the full hash is printed so a maintainer can record it.
//! `--convert` then runs the entry's `converter` (`cargo xtask convert ..`) in process.

mod error;
pub mod hf;
#[cfg(test)]
mod test_server;
pub mod url;
pub mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use error::DownloadError;

use segkit::segmenter::registry::{bundled_dir, Entry, Source};

use crate::registry::{self, REGISTRY};
use verify::{Checked, Expect};

const USAGE: &str = "usage: cargo xtask download NAME.. [--force] [--convert] \
                     (names: cargo xtask list)";

/// One verified file of a download.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// Where it is now.
    pub path: PathBuf,
    /// Its SHA-256.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// How strongly it was checked.
    pub checked: Checked,
    /// What happened: "downloaded", "resumed at N", "from the hub cache", "already present".
    pub how: String,
}

/// Fetches and verifies every file of `entry` into `weights/NAME/`.
///
/// `hub` is asked for the hub options only when the entry is an `hf_repo` one.
pub fn fetch_entry(
    entry: &Entry,
    weights: &Path,
    force: bool,
    progress: bool,
    agent: &ureq::Agent,
    hub: impl FnOnce() -> Result<hf::HubOptions, DownloadError>,
) -> Result<Vec<FileReport>, DownloadError> {
    let dir = weights.join(&entry.name);
    match &entry.source {
        Source::Url {
            url,
            file,
            sha256,
            sha256_prefix,
            size,
        } => {
            let spec = url::UrlFile {
                url,
                file,
                expect: Expect {
                    sha256: sha256.as_deref(),
                    prefix: sha256_prefix.as_deref(),
                    size: *size,
                },
            };
            let f = url::fetch_url(agent, &spec, &dir, force, progress)?;
            let mut m = BTreeMap::new();
            m.insert(file.clone(), f.sha256.clone());
            verify::write_marker(&dir, &m)?;
            let how = match (f.transferred, f.resumed_from) {
                (0, 0) => "already present".to_string(),
                (_, 0) => "downloaded".to_string(),
                (_, r) => format!("resumed at byte {r}"),
            };
            Ok(vec![FileReport {
                path: f.path,
                sha256: f.sha256,
                size: f.size,
                checked: f.checked,
                how,
            }])
        }
        Source::Hf {
            repo,
            revision,
            files,
        } => {
            let mut opts = hub()?;
            opts.progress = progress;
            let got = hf::fetch_hf(&opts, repo, revision, files, &dir, force)?;
            Ok(got
                .into_iter()
                .map(|f| FileReport {
                    path: dir.join(&f.name),
                    how: if f.downloaded {
                        "downloaded".into()
                    } else if f.cached.starts_with(&dir) {
                        "already present".into()
                    } else {
                        "from the hub cache".into()
                    },
                    sha256: f.sha256,
                    size: f.size,
                    checked: f.checked,
                })
                .collect())
        }
        Source::Manual {
            page,
            file,
            sha256,
            size,
        } => manual_file(entry, &dir, page, file, sha256.as_deref(), *size),
        Source::Embedded => {
            if registry::has_entries(&registry::embedded_dir(entry, weights)) {
                Ok(Vec::new())
            } else {
                // Where the repository commits it: the segkit package for the demo model.
                let (dir, committed) = match bundled_dir(&entry.name) {
                    Some(d) => (d.clone(), rel(&d, &crate::root()).into_owned()),
                    None => (dir, format!("weights/{}", entry.name)),
                };
                Err(DownloadError::Embedded(format!(
                    "`{}` is committed with the repository, but {} is missing or empty; \
                     restore it with `git checkout -- {committed}`",
                    entry.name,
                    dir.display(),
                )))
            }
        }
    }
}

/// A `manual_url` entry: the file must have been placed in `dir` by hand; it is hashed,
/// checked against the registry's `sha256` / `size` when present, and marked verified.
fn manual_file(
    entry: &Entry,
    dir: &Path,
    page: &str,
    file: &str,
    sha256: Option<&str>,
    size: Option<u64>,
) -> Result<Vec<FileReport>, DownloadError> {
    let path = dir.join(file);
    if !path.is_file() {
        return Err(DownloadError::Manual(format!(
            "`{}` is published only behind a release page: download {file} from {page} by \
             hand into {}, then run `cargo xtask download {}` again to verify it",
            entry.name,
            dir.display(),
            entry.name
        )));
    }
    let (got, n) = verify::sha256_file(&path)?;
    if sha256.is_some_and(|want| want != got) || size.is_some_and(|want| want != n) {
        return Err(DownloadError::Manual(format!(
            "{}: SHA-256 {got} ({n} bytes) is not the registry's ({} , {} bytes); it is not \
             the published file",
            path.display(),
            sha256.unwrap_or("-"),
            size.map_or_else(|| "?".to_string(), |s| s.to_string())
        )));
    }
    let mut m = BTreeMap::new();
    m.insert(file.to_string(), got.clone());
    verify::write_marker(dir, &m)?;
    Ok(vec![FileReport {
        path,
        sha256: got,
        size: n,
        checked: if sha256.is_some() {
            Checked::Full
        } else {
            Checked::Unpinned
        },
        how: "placed by hand".into(),
    }])
}

/// The argument list of an entry's `converter` (`cargo xtask convert {file} {out}.safetensors
/// ..`): `{file}` is the downloaded file, `{out}` the same path without its extension.
pub fn converter_args(entry: &Entry, weights: &Path) -> Result<Option<Vec<String>>, DownloadError> {
    let Some(tpl) = entry.converter.as_deref() else {
        return Ok(None);
    };
    let err = |msg: String| DownloadError::Convert {
        name: entry.name.clone(),
        msg,
    };
    let rest = tpl.strip_prefix("cargo xtask convert ").ok_or_else(|| {
        err(format!(
            "the registry's converter `{tpl}` is not a `cargo xtask convert ..` command"
        ))
    })?;
    let Source::Url { file, .. } = &entry.source else {
        return Err(err("only single-file (url) entries have a converter".into()));
    };
    let path = weights.join(&entry.name).join(file);
    let out = path.with_extension("");
    Ok(Some(
        rest.split_whitespace()
            .map(|t| {
                t.replace("{file}", &path.to_string_lossy())
                    .replace("{out}", &out.to_string_lossy())
            })
            .collect(),
    ))
}

fn human(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn rel<'a>(p: &'a Path, root: &Path) -> std::borrow::Cow<'a, str> {
    match p.strip_prefix(root) {
        Ok(r) => r.to_string_lossy(),
        Err(_) => p.to_string_lossy(),
    }
}

/// Prints what was fetched and, for files the registry has no full hash of, the hash to
/// record.
fn report(entry: &Entry, files: &[FileReport], root: &Path) {
    for f in files {
        let check = match (f.checked, &entry.source) {
            (Checked::Full, _) => "sha256 verified".to_string(),
            (Checked::Prefix, Source::Url { sha256_prefix, .. }) => format!(
                "sha256 prefix {} verified",
                sha256_prefix.as_deref().unwrap_or("?")
            ),
            (Checked::Prefix, _) => "sha256 prefix verified".to_string(),
            (Checked::Unpinned, _) => "no pinned sha256".to_string(),
        };
        println!(
            "{}  {}  {}  {}: {check}",
            rel(&f.path, root),
            human(f.size),
            f.how,
            f.sha256
        );
    }
    let pending: Vec<&FileReport> = files
        .iter()
        .filter(|f| f.checked != Checked::Full)
        .collect();
    if !pending.is_empty() {
        eprintln!(
            "xtask: {REGISTRY} has no full sha256 for {} of `{}`; once this download is \
             trusted, record:",
            if pending.len() == 1 {
                "a file"
            } else {
                "files"
            },
            entry.name
        );
        for f in pending {
            let name = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            match entry.source {
                Source::Url { .. } => {
                    eprintln!("xtask:   sha256 = \"{}\"   # {name}", f.sha256)
                }
                _ => eprintln!(
                    "xtask:   {{ name = \"{name}\", size = {}, sha256 = \"{}\" }}",
                    f.size, f.sha256
                ),
            }
        }
    }
}

#[derive(Debug)]
struct Args {
    names: Vec<String>,
    force: bool,
    convert: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        names: Vec::new(),
        force: false,
        convert: false,
    };
    for s in args {
        match s.as_str() {
            "--force" => a.force = true,
            "--convert" => a.convert = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}; {USAGE}")),
            s => a.names.push(s.to_string()),
        }
    }
    if a.names.is_empty() {
        return Err(USAGE.to_string());
    }
    Ok(a)
}

/// Runs `cargo xtask download`.
pub fn run(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    let root = crate::root();
    let weights = root.join("weights");
    let reg = registry::load(&root.join(REGISTRY)).map_err(|e| e.to_string())?;
    let entries = a
        .names
        .iter()
        .map(|n| registry::get(&reg, n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let agent = url::agent();
    for entry in entries {
        let files = fetch_entry(
            entry,
            &weights,
            a.force,
            true,
            &agent,
            hf::HubOptions::from_env,
        )
        .map_err(|e| e.to_string())?;
        if let Source::Embedded = entry.source {
            let dir = registry::embedded_dir(entry, &weights);
            println!(
                "{}: embedded, present in {} (nothing to download)",
                entry.name,
                rel(&dir, &root)
            );
        }
        report(entry, &files, &root);
        if a.convert {
            match converter_args(entry, &weights).map_err(|e| e.to_string())? {
                Some(cargs) => {
                    eprintln!("xtask: cargo xtask convert {}", cargs.join(" "));
                    crate::convert::run(&cargs).map_err(|msg| {
                        DownloadError::Convert {
                            name: entry.name.clone(),
                            msg,
                        }
                        .to_string()
                    })?;
                }
                None => println!(
                    "{}: nothing to convert ({} loads weights/{} as it is)",
                    entry.name,
                    match entry.source {
                        Source::Hf { .. } => "segkit::OneFormer::from_hf_dir",
                        _ => "segkit",
                    },
                    entry.name
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::test_server::{Route, Server};
    use super::*;
    use segkit::segmenter::registry::Registry;
    use sha2::{Digest, Sha256};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_arguments() {
        let a = parse(&s(&["x", "--force", "y", "--convert"])).unwrap();
        assert_eq!(a.names, ["x", "y"]);
        assert!(a.force && a.convert);
        assert!(parse(&s(&[])).unwrap_err().contains("usage"));
        assert!(parse(&s(&["x", "--frce"])).unwrap_err().contains("--frce"));
    }

    #[test]
    fn unknown_name_is_one_line_listing_the_names() {
        let e = run(&s(&["pspnet"])).unwrap_err();
        assert!(e.contains("unknown model `pspnet`"), "{e}");
        assert!(e.contains("pspnet_r50-d8_ade20k-512x512"), "{e}");
        assert!(
            e.contains("oneformer_ade20k_swin_tiny") && e.contains("segkit-demo"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn converter_template() {
        let reg = Registry::load(&crate::root().join(REGISTRY)).unwrap();
        let e = reg.get("pspnet_r50-d8_ade20k-512x512").unwrap();
        let args = converter_args(e, Path::new("/w")).unwrap().unwrap();
        let Source::Url { file, .. } = &e.source else {
            panic!()
        };
        let stem = file.trim_end_matches(".pth");
        assert_eq!(
            args,
            [
                format!("/w/pspnet_r50-d8_ade20k-512x512/{file}"),
                format!("/w/pspnet_r50-d8_ade20k-512x512/{stem}.safetensors"),
                "--preset".into(),
                "pspnet_r50-d8_ade20k-512x512".into(),
            ]
        );
        let hf = reg.get("oneformer_ade20k_swin_tiny").unwrap();
        assert_eq!(converter_args(hf, Path::new("/w")).unwrap(), None);
    }

    /// A url entry end to end: registry text -> fetch -> `.verified` marker.
    #[test]
    fn url_entry_end_to_end() {
        let data: Vec<u8> = (0..9000u32).map(|i| (i % 31) as u8).collect();
        let h = verify::hex(&Sha256::digest(&data));
        let srv = Server::start(vec![("/zoo/m_2020-abcd.pth", Route::new(data.clone()))]);
        let text = format!(
            "[[model]]\nname = \"m\"\nurl = \"{}\"\nsha256_prefix = \"{}\"\n",
            srv.url("/zoo/m_2020-abcd.pth"),
            &h[..8]
        );
        let reg = Registry::parse(&text, Path::new("t.toml")).unwrap();
        let d = tempfile::tempdir().unwrap();
        let agent = ureq::AgentBuilder::new().build();
        let no_hub = || Err(DownloadError::NoCache);
        let r = fetch_entry(
            reg.get("m").unwrap(),
            d.path(),
            false,
            false,
            &agent,
            no_hub,
        )
        .unwrap();
        assert_eq!(r[0].checked, Checked::Prefix);
        assert_eq!(r[0].how, "downloaded");
        assert_eq!(r[0].sha256, h);
        let dir = d.path().join("m");
        assert_eq!(std::fs::read(dir.join("m_2020-abcd.pth")).unwrap(), data);
        assert_eq!(verify::read_marker(&dir).get("m_2020-abcd.pth"), Some(&h));
        let r = fetch_entry(
            reg.get("m").unwrap(),
            d.path(),
            false,
            false,
            &agent,
            no_hub,
        )
        .unwrap();
        assert_eq!(r[0].how, "already present");
    }

    #[test]
    fn embedded_entry_is_present_or_says_how_to_restore_it() {
        let reg = Registry::parse(
            "[[model]]\nname = \"demo\"\nembedded = true\n",
            Path::new("t"),
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let agent = ureq::AgentBuilder::new().build();
        let e = fetch_entry(
            reg.get("demo").unwrap(),
            d.path(),
            false,
            false,
            &agent,
            || Err(DownloadError::NoCache),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("git checkout -- weights/demo"),
            "{e}"
        );
        std::fs::create_dir_all(d.path().join("demo")).unwrap();
        std::fs::write(d.path().join("demo/config.json"), "{}").unwrap();
        let r = fetch_entry(
            reg.get("demo").unwrap(),
            d.path(),
            false,
            false,
            &agent,
            || Err(DownloadError::NoCache),
        )
        .unwrap();
        assert!(r.is_empty());
    }
}
