//! `weights/registry.toml`: every checkpoint `cargo xtask download` knows, by NAME.
//!
//! The file's types and its one parser (sources, hashes, one default per preset, errors
//! naming the entry) are segkit's: [`segkit::segmenter::registry`], shared with
//! `Segmenter::load`'s name lookup. What is xtask's: where the file sits in the repository,
//! where an embedded entry's files are on disk, and turning lookups and parse errors into a
//! [`DownloadError`].

use std::path::{Path, PathBuf};

use segkit::segmenter::registry::{self as shared, Entry, Registry};

use crate::download::DownloadError;

/// Where the registry lives, relative to the repository root.
pub const REGISTRY: &str = "weights/registry.toml";

/// Reads and checks the registry file.
pub fn load(path: &Path) -> Result<Registry, DownloadError> {
    Registry::load(path).map_err(|e| download_error(path, e))
}

/// Parses and checks registry text; `path` is only used in messages.
#[cfg(test)]
pub fn parse(text: &str, path: &Path) -> Result<Registry, DownloadError> {
    Registry::parse(text, path).map_err(|e| download_error(path, e))
}

/// segkit's registry error as xtask's: a malformed file is [`DownloadError::Registry`]
/// (`PATH: model `NAME`: ..`), an unreadable one [`DownloadError::Io`].
fn download_error(path: &Path, e: segkit::Error) -> DownloadError {
    match e {
        segkit::Error::BadModel { path, reason } => DownloadError::Registry { path, msg: reason },
        segkit::Error::Core(segkit::core::Error::Io { path, source }) => {
            DownloadError::Io { path, source }
        }
        other => DownloadError::Registry {
            path: path.to_path_buf(),
            msg: other.to_string(),
        },
    }
}

/// The entry called `name` (or whose `mmseg_config` is `name`); the error lists the valid
/// names.
pub fn get<'a>(reg: &'a Registry, name: &str) -> Result<&'a Entry, DownloadError> {
    reg.get(name).ok_or_else(|| DownloadError::UnknownName {
        name: name.to_string(),
        valid: reg.names(),
    })
}

/// Where an embedded entry's files are: `weights/NAME/` when that holds something, else the
/// directory of the segkit package that compiles it in (`crates/segkit/demo/` for the demo
/// model), else `weights/NAME/` (missing).
pub fn embedded_dir(entry: &Entry, weights: &Path) -> PathBuf {
    let dir = weights.join(&entry.name);
    if has_entries(&dir) {
        return dir;
    }
    shared::bundled_dir(&entry.name)
        .filter(|d| has_entries(d))
        .unwrap_or(dir)
}

/// Whether `dir` is a directory with at least one entry.
pub fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use segkit::segmenter::registry::Source;

    #[test]
    fn the_committed_registry_loads() {
        let reg = load(&crate::root().join(REGISTRY)).unwrap();
        assert!(get(&reg, "segkit-demo").is_ok());
        // Non-default checkpoints are also reachable by their mmseg config name.
        let e = get(&reg, "pspnet_r50-d8_4xb4-160k_ade20k-512x512").unwrap();
        assert_eq!(e.name, "pspnet_r50-d8_ade20k-512x512");
        // The demo model is committed in the segkit package, not under weights/.
        let demo = get(&reg, "segkit-demo").unwrap();
        let d = tempfile::tempdir().unwrap();
        assert!(embedded_dir(demo, d.path())
            .join("model.safetensors")
            .is_file());
    }

    /// The official PANet checkpoint has no pinned file address: `download` says where to
    /// get it and, once it is placed by hand, hashes it and marks it verified.
    #[test]
    fn the_panet_checkpoint_is_placed_by_hand_then_verified() {
        use crate::download::{fetch_entry, url::agent, verify};
        let reg = load(&crate::root().join(REGISTRY)).unwrap();
        let e = get(&reg, "panet_r50_fpn_2x_coco").unwrap();
        let Source::Manual { page, file, .. } = &e.source else {
            panic!("{:?}", e.source)
        };
        assert!(page.starts_with("https://drive.google.com/"), "{page}");
        assert_eq!(e.preset.as_deref(), Some("panet_r50_fpn_2x_coco"));
        let d = tempfile::tempdir().unwrap();
        let no_hub = || unreachable!("a manual entry asks no hub");
        let err = fetch_entry(e, d.path(), false, false, &agent(), no_hub).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(page.as_str()) && msg.contains("by hand"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        let dir = d.path().join(&e.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), b"not really a checkpoint").unwrap();
        let got = fetch_entry(e, d.path(), false, false, &agent(), no_hub).unwrap();
        assert_eq!((got.len(), got[0].how.as_str()), (1, "placed by hand"));
        let (sha, _) = verify::sha256_file(&dir.join(file)).unwrap();
        assert_eq!(got[0].sha256, sha);
        assert_eq!(verify::read_marker(&dir).get(file.as_str()), Some(&sha));
        // A recorded hash is enforced.
        let pinned = parse(
            &format!(
                "[[model]]\nname = \"p\"\nmanual_url = \"{page}\"\nfile = \"{file}\"\n\
                 sha256 = \"{}\"\n",
                "0".repeat(64)
            ),
            Path::new("test.toml"),
        )
        .unwrap();
        let p = get(&pinned, "p").unwrap();
        std::fs::create_dir_all(d.path().join("p")).unwrap();
        std::fs::write(d.path().join("p").join(file), b"x").unwrap();
        let err = fetch_entry(p, d.path(), false, false, &agent(), no_hub).unwrap_err();
        assert!(err.to_string().contains("not the published file"), "{err}");
        // `file` without `manual_url`, and `manual_url` without `file`, are refused.
        for bad in [
            "[[model]]\nname = \"a\"\nembedded = true\nfile = \"x.pth\"\n",
            "[[model]]\nname = \"a\"\nmanual_url = \"https://x/\"\n",
        ] {
            assert!(parse(bad, Path::new("test.toml")).is_err(), "{bad}");
        }
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
            Path::new("test.toml"),
        )
        .unwrap();
        let e = get(&reg, "c").unwrap_err().to_string();
        assert!(e.contains("unknown model `c`") && e.contains("a, b"), "{e}");
        assert!(!e.contains('\n'));
        match &get(&reg, "a").unwrap().source {
            Source::Url { file, .. } => assert_eq!(file, "a-12345678.pth"),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn bad_registries_are_one_line_naming_the_file() {
        let bad = [
            "[[model]]\nname = \"a\"\n",
            "[[model]]\nname = \"a\"\nembedded = true\ncolour = 1\n",
            "[[model]]\nname = \"a\"\nembedded = true\n[[model]]\nname = \"a\"\nembedded = true\n",
        ];
        for b in bad {
            let e = parse(b, Path::new("test.toml")).unwrap_err();
            assert!(matches!(e, DownloadError::Registry { .. }), "{e}");
            let e = e.to_string();
            assert!(e.starts_with("test.toml: "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let d = tempfile::tempdir().unwrap();
        let e = load(&d.path().join("none.toml")).unwrap_err();
        assert!(matches!(e, DownloadError::Io { .. }), "{e}");
    }
}
