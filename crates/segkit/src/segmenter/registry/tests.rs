use super::*;

fn parse(s: &str) -> Result<Registry> {
    Registry::parse(s, Path::new("test.toml"))
}

#[test]
fn names_and_paths() {
    assert!(is_name("segkit-demo"));
    assert!(is_name("pspnet_r50-d8_ade20k-512x512"));
    assert!(!is_name("./segkit-demo"));
    assert!(!is_name("crates/segkit/demo"));
    assert!(!is_name(".."));
    assert!(!is_name(""));
}

#[test]
fn the_committed_registry_lists_the_presets_and_the_demo() {
    let all = list_models().unwrap();
    let demo = all.iter().find(|e| e.name == DEFAULT_MODEL).unwrap();
    assert!(demo.embedded && demo.registered);
    let psp = all
        .iter()
        .find(|e| e.name == "pspnet_r50-d8_ade20k-512x512")
        .unwrap();
    assert_eq!(psp.preset.as_deref(), Some("pspnet_r50-d8_ade20k-512x512"));
    let e = find_model("no-such-model").unwrap_err().to_string();
    assert!(
        e.contains("no-such-model") && e.contains("pspnet_r50-d8_ade20k-512x512"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    // The mmseg config name is an alias.
    let alias = find_model("pspnet_r50-d8_4xb4-160k_ade20k-512x512").unwrap();
    assert_eq!(alias.name, "pspnet_r50-d8_ade20k-512x512");
}

/// Every url entry is an mmseg model-zoo checkpoint of a real preset, named after its preset
/// when it is the default; every hf entry a pinned OneFormer repository; the demo models are
/// embedded.
#[test]
fn the_committed_registry_is_valid() {
    let reg = Registry::load(&builtin_weights_dir().join(REGISTRY_FILE)).unwrap();
    let presets: Vec<String> = crate::Preset::all().iter().map(|p| p.name()).collect();
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
            // The demo models, committed in this package.
            Source::Embedded => assert!(
                bundled_dir(&e.name).is_some_and(|d| d.join("model.safetensors").is_file()),
                "{}",
                e.name
            ),
            Source::Manual { page, file, .. } => {
                // The official PANet checkpoint, behind its README's Google Drive link.
                assert!(page.starts_with("https://drive.google.com/"), "{page}");
                assert_eq!(file, "panet_mask_step179999.pth");
                assert_eq!(e.preset.as_deref(), Some("panet_r50_fpn_2x_coco"));
                assert!(e.default && e.converter.is_none());
            }
        }
    }
    assert_eq!(url, 28);
    assert!(hf >= 4);
    assert!(reg.get(DEFAULT_MODEL).is_some_and(Entry::is_embedded));
    // Non-default checkpoints are also reachable by their mmseg config name.
    let e = reg.get("pspnet_r50-d8_4xb4-80k_ade20k-512x512").unwrap();
    assert!(!e.default);
    let e = reg.get("pspnet_r50-d8_4xb4-160k_ade20k-512x512").unwrap();
    assert_eq!(e.name, "pspnet_r50-d8_ade20k-512x512");
    assert_eq!(e.miou, Some(42.48));
    // The embedded demo lives in this package.
    let demo = bundled_dir(DEFAULT_MODEL).unwrap();
    assert!(
        demo.join("model.safetensors").is_file(),
        "{}",
        demo.display()
    );
    assert_eq!(bundled_dir("pspnet_r50-d8_ade20k-512x512"), None);
}

#[test]
fn lookup_by_name_and_alias() {
    let reg = parse(
        r#"
        [[model]]
        name = "a"
        mmseg_config = "a_long"
        url = "https://x/y/a-12345678.pth?download=1"
        sha256_prefix = "12345678"
        size = 10
        [[model]]
        name = "b"
        embedded = true
        "#,
    )
    .unwrap();
    assert_eq!(reg.names(), ["a", "b"]);
    assert!(reg.get("c").is_none());
    let a = reg.get("a_long").unwrap();
    assert_eq!(a.name, "a");
    assert_eq!(a.size(), Some(10));
    assert_eq!(a.file_names(), ["a-12345678.pth"]);
    match &a.source {
        Source::Url { file, .. } => assert_eq!(file, "a-12345678.pth"),
        s => panic!("{s:?}"),
    }
    assert!(reg.get("b").unwrap().is_embedded());
}

#[test]
fn hashes_are_lowercased_and_pinned_per_file() {
    let upper = "AB".repeat(32);
    let reg = parse(&format!(
        "[[model]]\nname = \"h\"\nhf_repo = \"o/n\"\nrevision = \"main\"\nfiles = [\
         {{ name = \"config.json\", sha256 = \"{upper}\", size = 3 }}, \
         {{ name = \"w.bin\", size = 4 }}]\n"
    ))
    .unwrap();
    let h = reg.get("h").unwrap();
    assert_eq!(
        h.pinned_sha256("config.json"),
        Some("ab".repeat(32).as_str())
    );
    assert_eq!(h.pinned_sha256("w.bin"), None);
    assert_eq!(h.size(), Some(7));
}

#[test]
fn rejects_bad_entries_naming_the_file_and_the_entry() {
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
        // duplicate name
        "[[model]]\nname = \"a\"\nembedded = true\n[[model]]\nname = \"a\"\nembedded = true\n",
        // two defaults for one preset
        "[[model]]\nname = \"a\"\nembedded = true\npreset = \"p\"\ndefault = true\n[[model]]\nname = \"b\"\nembedded = true\npreset = \"p\"\ndefault = true\n",
    ];
    for b in bad {
        let e = parse(b).unwrap_err();
        let Error::BadModel { path, reason } = &e else {
            panic!("{e}")
        };
        assert_eq!(path, Path::new("test.toml"));
        assert!(reason.contains("`a`"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    // A missing name: the entry by position.
    let e = parse("[[model]]\nembedded = true\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("model #1: `name` is missing"), "{e}");
    // An unknown key: the line, in one line.
    let e = parse("[[model]]\nname = \"a\"\nembedded = true\ncolour = 1\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("bad model test.toml: line 4: ") && e.contains("colour"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn an_unreadable_registry_names_the_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(REGISTRY_FILE);
    let e = Registry::load(&p).unwrap_err();
    assert!(
        matches!(&e, Error::Core(segkit_core::Error::Io { path, .. }) if path == &p),
        "{e}"
    );
    std::fs::write(&p, "[[model]]\nname = \"x\"\n").unwrap();
    let e = Registry::load(&p).unwrap_err();
    assert!(
        matches!(&e, Error::BadModel { path, reason } if path == &p && reason.contains("`x`")),
        "{e}"
    );
}
