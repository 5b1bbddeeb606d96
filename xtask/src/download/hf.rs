//! Files of a Hugging Face repository, through `hf-hub`'s blocking API and its cache.
//!
//! The cache is the one `huggingface_hub` (Python) and `hf-hub` share:
//! `CACHE/models--ORG--NAME/{refs/REV, snapshots/COMMIT/FILE -> ../../blobs/HASH, blobs/HASH}`,
//! found at `HF_HUB_CACHE`, else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`. A file already in the cache is used from there: through
//! `hf_hub::CacheRepo::get` (which follows `refs/REV`), or, for a pinned commit, straight from
//! `snapshots/COMMIT/` (the Python client writes no `refs/COMMIT` for a commit revision).
//! Otherwise it is downloaded with `hf_hub::api::sync` (resumable, into the cache), unless
//! `HF_HUB_OFFLINE` is set, which is then an error naming the file. `HF_ENDPOINT` and
//! `HF_TOKEN` (or the cache's `token` file) are honoured.
//!
//! Every file is hashed and checked against the registry before any is placed; then each is
//! hard-linked (or copied, across file systems) to `DIR/.FILE.tmp` and renamed to `DIR/FILE`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};

use super::verify::{self, Checked, Expect};
use super::DownloadError;
use segkit::segmenter::registry::HfFile;

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache directory (`.../huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Use the cache only.
    pub offline: bool,
    /// `HF_ENDPOINT`, when set.
    pub endpoint: Option<String>,
    /// `HF_TOKEN`, when set (else hf-hub reads the cache's `token` file).
    pub token: Option<String>,
    /// Draw hf-hub's progress bars.
    pub progress: bool,
}

/// The hub cache directory from the environment (`get` reads a variable).
pub fn cache_dir_from(get: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
    if let Some(c) = nonempty("HF_HUB_CACHE") {
        return Some(PathBuf::from(c));
    }
    if let Some(h) = nonempty("HF_HOME") {
        return Some(PathBuf::from(h).join("hub"));
    }
    let base = nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .or_else(|| nonempty("USERPROFILE").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("huggingface").join("hub"))
}

/// `HF_HUB_OFFLINE` as `huggingface_hub` reads it: 1 / ON / YES / TRUE, any case.
pub fn is_truthy(v: Option<&str>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

impl HubOptions {
    /// Reads `HF_HUB_CACHE` / `HF_HOME`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`.
    pub fn from_env() -> Result<Self, DownloadError> {
        let get = |k: &str| std::env::var(k).ok();
        Ok(Self {
            cache_dir: cache_dir_from(get).ok_or(DownloadError::NoCache)?,
            offline: is_truthy(get("HF_HUB_OFFLINE").as_deref()),
            endpoint: get("HF_ENDPOINT").filter(|v| !v.is_empty()),
            token: get("HF_TOKEN").filter(|v| !v.is_empty()),
            progress: true,
        })
    }
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cached copy of `file`, if there is one.
pub fn cached(cache_dir: &Path, repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
    let r = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    if let Some(p) = Cache::new(cache_dir.to_path_buf())
        .repo(r.clone())
        .get(file)
    {
        return Some(p);
    }
    if is_commit(revision) {
        let p = cache_dir
            .join(r.folder_name())
            .join("snapshots")
            .join(revision)
            .join(file);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// A verified file: where it came from and what it hashed to.
#[derive(Debug, Clone)]
pub struct HubFile {
    /// The name in the repository (and under the target directory).
    pub name: String,
    /// The cache path it was taken from.
    pub cached: PathBuf,
    /// Its SHA-256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// How strongly it was checked.
    pub checked: Checked,
    /// Whether it was downloaded in this run (not found in the cache).
    pub downloaded: bool,
}

/// `repo@revision` on the hub: names it in errors and requests.
#[derive(Clone, Copy)]
struct HubRepo<'a> {
    repo: &'a str,
    revision: &'a str,
}

impl HubRepo<'_> {
    fn error(&self, file: &str, msg: String) -> DownloadError {
        DownloadError::Hub {
            repo: self.repo.to_string(),
            revision: self.revision.to_string(),
            file: file.to_string(),
            msg,
        }
    }

    fn offline_error(&self, file: &str, cache: &Path) -> DownloadError {
        DownloadError::Offline {
            repo: self.repo.to_string(),
            revision: self.revision.to_string(),
            file: file.to_string(),
            cache: cache.to_path_buf(),
        }
    }

    fn hf_hub_repo(&self) -> Repo {
        Repo::with_revision(
            self.repo.to_string(),
            RepoType::Model,
            self.revision.to_string(),
        )
    }
}

/// Gets every file of `repo@revision` (cache first), verifies all of them, then places them in
/// `dir`. Files already in `dir` that match the registry's hash (or, unpinned, the hash in
/// `dir/.verified`) are kept. `force` re-downloads into the cache, bypassing it.
pub fn fetch_hf(
    opts: &HubOptions,
    repo: &str,
    revision: &str,
    files: &[HfFile],
    dir: &Path,
    force: bool,
) -> Result<Vec<HubFile>, DownloadError> {
    let hub = HubRepo { repo, revision };
    let marker = verify::read_marker(dir);
    let mut api = None;
    let mut got = Vec::new();
    for f in files {
        if !force {
            if let Some(kept) = already_placed(dir, f, &marker)? {
                got.push(kept);
                continue;
            }
        }
        let (path, downloaded) = locate(opts, hub, &f.name, force, &mut api)?;
        got.push(verified(f, path, downloaded)?);
    }
    place_all(dir, &got, marker)?;
    Ok(got)
}

/// `dir/FILE` when it is there and matches the registry's hash (or, unpinned, the hash the
/// `marker` recorded).
fn already_placed(
    dir: &Path,
    f: &HfFile,
    marker: &BTreeMap<String, String>,
) -> Result<Option<HubFile>, DownloadError> {
    let placed = dir.join(&f.name);
    if !placed.is_file() {
        return Ok(None);
    }
    let (sha, size) = verify::sha256_file(&placed)?;
    let known = f
        .sha256
        .as_deref()
        .or(marker.get(&f.name).map(String::as_str));
    let still_matching = known == Some(sha.as_str()) && f.size.is_none_or(|s| s == size);
    if !still_matching {
        return Ok(None);
    }
    Ok(Some(HubFile {
        name: f.name.clone(),
        cached: placed,
        sha256: sha,
        size,
        checked: if f.sha256.is_some() {
            Checked::Full
        } else {
            Checked::Unpinned
        },
        downloaded: false,
    }))
}

/// The cache path of `file` and whether it was downloaded now: from the cache unless `force`
/// (and online), else through `api` (built on first use), unless offline.
fn locate(
    opts: &HubOptions,
    hub: HubRepo<'_>,
    file: &str,
    force: bool,
    api: &mut Option<Api>,
) -> Result<(PathBuf, bool), DownloadError> {
    let hit = if force && !opts.offline {
        None
    } else {
        cached(&opts.cache_dir, hub.repo, hub.revision, file)
    };
    match hit {
        Some(p) => Ok((p, false)),
        None if opts.offline => Err(hub.offline_error(file, &opts.cache_dir)),
        None => Ok((download(opts, hub, file, api)?, true)),
    }
}

/// hf-hub's client for `opts` (endpoint, token, progress bars, 3 retries).
fn build_api(opts: &HubOptions) -> Result<Api, hf_hub::api::sync::ApiError> {
    let mut b = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_progress(opts.progress)
        .with_retries(3);
    if let Some(e) = &opts.endpoint {
        b = b.with_endpoint(e.clone());
    }
    if let Some(t) = &opts.token {
        b = b.with_token(Some(t.clone()));
    }
    b.build()
}

/// Downloads `file` into the cache with `api` (built on first use) and returns its path.
fn download(
    opts: &HubOptions,
    hub: HubRepo<'_>,
    file: &str,
    api: &mut Option<Api>,
) -> Result<PathBuf, DownloadError> {
    let client = match api.take() {
        Some(a) => a,
        None => build_api(opts).map_err(|e| hub.error(file, e.to_string()))?,
    };
    let r = client.repo(hub.hf_hub_repo());
    // hf-hub 0.4 asserts and unwraps on some malformed server answers (a redirect without
    // Location, ...): turn such a panic into an error too.
    let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.download(file)))
        .map_err(|_| hub.error(file, "hf-hub panicked (see above)".into()))?
        .map_err(|e| hub.error(file, e.to_string()))?;
    *api = Some(client);
    Ok(p)
}

/// Hashes the cached copy of `f` at `path` and checks it against the registry.
fn verified(f: &HfFile, path: PathBuf, downloaded: bool) -> Result<HubFile, DownloadError> {
    let expect = Expect {
        sha256: f.sha256.as_deref(),
        prefix: None,
        size: f.size,
    };
    let (sha, size) = verify::sha256_file(&path)?;
    let checked = expect.check(
        &path.display().to_string(),
        &sha,
        size,
        "nothing was placed; the cached copy is stale or corrupt: run again with --force \
         to fetch it anew",
    )?;
    Ok(HubFile {
        name: f.name.clone(),
        cached: path,
        sha256: sha,
        size,
        checked,
        downloaded,
    })
}

/// Places every verified file in `dir` (those not already there) and records their hashes in
/// `dir/.verified`, over the `marker` read before.
fn place_all(
    dir: &Path,
    got: &[HubFile],
    marker: BTreeMap<String, String>,
) -> Result<(), DownloadError> {
    std::fs::create_dir_all(dir).map_err(DownloadError::io(dir))?;
    for f in got {
        let dst = dir.join(&f.name);
        if f.cached == dst {
            continue;
        }
        place(&f.cached, &dst)?;
    }
    let mut m = marker;
    for f in got {
        m.insert(f.name.clone(), f.sha256.clone());
    }
    verify::write_marker(dir, &m)
}

/// Hard-links (or copies) `src` to a temporary name next to `dst`, then renames it.
fn place(src: &Path, dst: &Path) -> Result<(), DownloadError> {
    let parent = dst.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(DownloadError::io(parent))?;
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp"));
    verify::remove_file_if_exists(&tmp)?;
    // The snapshot entry is a symlink into blobs/: link the blob itself.
    let real = std::fs::canonicalize(src).map_err(DownloadError::io(src))?;
    if std::fs::hard_link(&real, &tmp).is_err() {
        std::fs::copy(&real, &tmp).map_err(DownloadError::io(&tmp))?;
    }
    std::fs::rename(&tmp, dst).map_err(DownloadError::io(dst))
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{Route, Server};
    use super::*;
    use sha2::{Digest, Sha256};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn sha(b: &[u8]) -> String {
        verify::hex(&Sha256::digest(b))
    }

    /// A hub cache laid out the way `huggingface_hub` writes it.
    fn fake_cache(root: &Path, repo: &str, files: &[(&str, &[u8])], write_ref: bool) {
        let base = root.join(format!("models--{}", repo.replace('/', "--")));
        std::fs::create_dir_all(base.join("blobs")).unwrap();
        let snap = base.join("snapshots").join(COMMIT);
        std::fs::create_dir_all(&snap).unwrap();
        if write_ref {
            std::fs::create_dir_all(base.join("refs")).unwrap();
            std::fs::write(base.join("refs").join("main"), COMMIT).unwrap();
        }
        for (name, body) in files {
            let h = sha(body);
            std::fs::write(base.join("blobs").join(&h), body).unwrap();
            let link = snap.join(name);
            #[cfg(unix)]
            std::os::unix::fs::symlink(format!("../../blobs/{h}"), &link).unwrap();
            #[cfg(not(unix))]
            std::fs::write(&link, body).unwrap();
        }
    }

    fn opts(cache: &Path, offline: bool) -> HubOptions {
        HubOptions {
            cache_dir: cache.to_path_buf(),
            offline,
            endpoint: None,
            token: None,
            progress: false,
        }
    }

    #[test]
    fn env_resolution() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            cache_dir_from(env(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")])),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            cache_dir_from(env(&[("HF_HOME", "/h"), ("HOME", "/u")])),
            Some(PathBuf::from("/h/hub"))
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/u")])),
            Some(PathBuf::from("/u/.cache/huggingface/hub"))
        );
        assert_eq!(cache_dir_from(env(&[])), None);
        assert!(is_truthy(Some("1")) && is_truthy(Some("true")) && is_truthy(Some("YES")));
        assert!(!is_truthy(Some("0")) && !is_truthy(None) && !is_truthy(Some("")));
    }

    #[test]
    fn offline_cache_files_are_verified_and_placed() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("hub");
        let cfg: &[u8] = b"{\"model_type\": \"oneformer\"}";
        let weights: &[u8] = &[7u8; 4096];
        for write_ref in [true, false] {
            let cache = cache.join(if write_ref { "refs" } else { "no-refs" });
            fake_cache(
                &cache,
                "org/model",
                &[("config.json", cfg), ("pytorch_model.bin", weights)],
                write_ref,
            );
            // With refs/main the branch resolves; without, the pinned commit is found directly.
            let rev = if write_ref { "main" } else { COMMIT };
            let files = vec![
                HfFile {
                    name: "config.json".into(),
                    sha256: Some(sha(cfg)),
                    size: Some(cfg.len() as u64),
                },
                HfFile {
                    name: "pytorch_model.bin".into(),
                    sha256: None,
                    size: None,
                },
            ];
            let dir = d.path().join(format!("out-{write_ref}"));
            let got = fetch_hf(&opts(&cache, true), "org/model", rev, &files, &dir, false).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].checked, Checked::Full);
            assert_eq!(got[1].checked, Checked::Unpinned);
            assert_eq!(got[1].sha256, sha(weights));
            assert!(got.iter().all(|f| !f.downloaded));
            assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), cfg);
            assert_eq!(
                std::fs::read(dir.join("pytorch_model.bin")).unwrap(),
                weights
            );
            let m = verify::read_marker(&dir);
            assert_eq!(m.get("pytorch_model.bin"), Some(&sha(weights)));
            assert!(!dir.join(".config.json.tmp").exists());
            // Again: the placed files are kept (no cache needed).
            let got = fetch_hf(
                &opts(&d.path().join("empty"), true),
                "org/model",
                rev,
                &files,
                &dir,
                false,
            )
            .unwrap();
            assert!(got.iter().all(|f| f.cached.starts_with(&dir)));
        }
    }

    #[test]
    fn offline_mismatch_and_missing_files_place_nothing() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("hub");
        fake_cache(&cache, "org/model", &[("config.json", b"{}")], true);
        let dir = d.path().join("out");
        let files = vec![HfFile {
            name: "config.json".into(),
            sha256: Some("a".repeat(64)),
            size: None,
        }];
        let e = fetch_hf(
            &opts(&cache, true),
            "org/model",
            "main",
            &files,
            &dir,
            false,
        )
        .unwrap_err();
        assert!(matches!(e, DownloadError::HashMismatch { .. }), "{e}");
        assert!(e.to_string().contains(&"a".repeat(64)), "{e}");
        assert!(!dir.exists());

        let files = vec![HfFile {
            name: "model.safetensors".into(),
            sha256: None,
            size: None,
        }];
        let e = fetch_hf(
            &opts(&cache, true),
            "org/model",
            "main",
            &files,
            &dir,
            false,
        )
        .unwrap_err();
        assert!(matches!(e, DownloadError::Offline { .. }), "{e}");
        assert!(e.to_string().contains("model.safetensors"), "{e}");
        assert!(!dir.exists());
    }

    /// The online path end to end against a loopback "hub" (HF_ENDPOINT): hf-hub asks for
    /// the metadata (`Range: bytes=0-0`, `ETag`, `X-Repo-Commit`), downloads into the cache,
    /// and the file is verified and placed.
    #[test]
    fn online_download_through_hf_hub() {
        if ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .any(|k| std::env::var_os(k).is_some())
        {
            segkit_core::testing::skip(
                "the hf-hub download against a loopback hub",
                "a proxy is configured (HTTP_PROXY / ALL_PROXY) and ureq would route loopback \
                 through it",
            );
            return;
        }
        let body: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
        let h = sha(&body);
        let route = Route::new(body.clone())
            .header("ETag", &format!("\"{h}\""))
            .header("X-Repo-Commit", COMMIT);
        let s = Server::start(vec![(
            &format!("/org/model/resolve/{COMMIT}/pytorch_model.bin"),
            route,
        )]);
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("hub");
        let mut o = opts(&cache, false);
        o.endpoint = Some(s.base());
        let files = vec![HfFile {
            name: "pytorch_model.bin".into(),
            sha256: Some(h.clone()),
            size: Some(body.len() as u64),
        }];
        let dir = d.path().join("out");
        let got = fetch_hf(&o, "org/model", COMMIT, &files, &dir, false).unwrap();
        assert!(got[0].downloaded);
        assert_eq!(got[0].checked, Checked::Full);
        assert_eq!(std::fs::read(dir.join("pytorch_model.bin")).unwrap(), body);
        // The hub cache layout was written: the blob under its hash, the snapshot entry.
        let base = cache.join("models--org--model");
        assert!(base.join("blobs").join(&h).is_file());
        assert!(base
            .join("snapshots")
            .join(COMMIT)
            .join("pytorch_model.bin")
            .exists());
        // Offline now works from that cache.
        let dir2 = d.path().join("out2");
        fetch_hf(
            &opts(&cache, true),
            "org/model",
            COMMIT,
            &files,
            &dir2,
            false,
        )
        .unwrap();
        assert_eq!(std::fs::read(dir2.join("pytorch_model.bin")).unwrap(), body);
        assert!(s
            .log()
            .iter()
            .all(|l| l.path.ends_with("pytorch_model.bin")));
    }
}
