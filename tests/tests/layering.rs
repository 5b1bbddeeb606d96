//! The workspace's layering (docs/ARCHITECTURE.md, DESIGN.md "Invariants"), read from
//! `cargo metadata`, and what every crate needs to be published on its own.
//!
//! - segkit-core depends on no segkit crate;
//! - the component crates (backbones, necks, heads, oneformer, losses, data) depend on
//!   segkit-core only (their dev-dependencies may add segkit-core's `testing` feature);
//! - segkit-models sees the components; segkit-train sees the components and segkit-models;
//! - no library crate depends on segkit-tests, xtask or the CLI;
//! - every publishable crate has a README and the metadata crates.io asks for, its path
//!   dependencies carry versions, and no `include_bytes!` / `include_str!` / `include!` /
//!   `#[path]` in it reaches outside its package directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CORE: &str = "segkit-core";
const COMPONENTS: &[&str] = &[
    "segkit-backbones",
    "segkit-necks",
    "segkit-heads",
    "segkit-oneformer",
    "segkit-losses",
    "segkit-data",
];
const MODELS: &str = "segkit-models";
const TRAIN: &str = "segkit-train";
/// Crates no library crate may depend on.
const NOT_FOR_LIBRARIES: &[&str] = &["segkit-tests", "xtask", "segkit-cli"];

/// crates.io category slugs the workspace may use (a subset of <https://crates.io/category_slugs>).
const VALID_CATEGORIES: &[&str] = &[
    "algorithms",
    "command-line-utilities",
    "computer-vision",
    "data-structures",
    "development-tools",
    "encoding",
    "mathematics",
    "multimedia",
    "multimedia::images",
    "science",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// One workspace member, as `cargo metadata` describes it.
struct Package {
    name: String,
    dir: PathBuf,
    json: Value,
}

impl Package {
    fn str_field(&self, key: &str) -> Option<&str> {
        self.json[key].as_str().filter(|s| !s.trim().is_empty())
    }

    fn list_field(&self, key: &str) -> Vec<String> {
        self.json[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `publish = false` gives `[]`; unset gives `null`.
    fn publishable(&self) -> bool {
        !matches!(self.json["publish"].as_array(), Some(a) if a.is_empty())
    }

    fn is_library(&self) -> bool {
        self.json["targets"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "lib"))
            })
        })
    }

    /// The dependencies, as JSON objects: `(name, kind, object)` where kind is `normal`,
    /// `dev` or `build`.
    fn deps(&self) -> Vec<(String, String, &Value)> {
        self.json["dependencies"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| {
                        let name = d["name"].as_str().unwrap_or_default().to_owned();
                        let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                        (name, kind, d)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The workspace members, by name, from `cargo metadata --format-version 1 --no-deps`.
fn workspace() -> BTreeMap<String, Package> {
    let root = workspace_root();
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut ws = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        if !p["id"].as_str().is_some_and(|id| members.contains(id)) {
            continue;
        }
        let name = p["name"].as_str().expect("package name").to_owned();
        let manifest = PathBuf::from(p["manifest_path"].as_str().expect("manifest_path"));
        let dir = manifest.parent().expect("manifest dir").to_path_buf();
        ws.insert(
            name.clone(),
            Package {
                name,
                dir,
                json: p.clone(),
            },
        );
    }
    for name in [CORE, MODELS, TRAIN, "segkit", "segkit-cli", "segkit-tests"]
        .iter()
        .chain(COMPONENTS)
    {
        assert!(ws.contains_key(*name), "workspace member {name} is missing");
    }
    ws
}

/// The workspace crates `p` depends on, by dependency kind (`normal` includes `build`).
fn workspace_deps(
    p: &Package,
    ws: &BTreeMap<String, Package>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut normal, mut dev) = (BTreeSet::new(), BTreeSet::new());
    for (name, kind, _) in p.deps() {
        if !ws.contains_key(&name) {
            continue;
        }
        if kind == "dev" {
            dev.insert(name);
        } else {
            normal.insert(name);
        }
    }
    (normal, dev)
}

/// Asserts that `p`'s workspace dependencies (normal and dev) are within `allowed`.
fn assert_deps_within(p: &Package, ws: &BTreeMap<String, Package>, allowed: &[&str]) {
    let (normal, dev) = workspace_deps(p, ws);
    for (kind, set) in [("dependency", normal), ("dev-dependency", dev)] {
        let bad: Vec<&String> = set
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(
            bad.is_empty(),
            "{} has the {kind} {bad:?} on segkit crates; it may only depend on {allowed:?}",
            p.name
        );
    }
}

#[test]
fn core_depends_on_no_segkit_crate() {
    let ws = workspace();
    assert_deps_within(&ws[CORE], &ws, &[]);
}

#[test]
fn components_depend_on_core_only() {
    let ws = workspace();
    for c in COMPONENTS {
        let p = &ws[*c];
        assert_deps_within(p, &ws, &[CORE]);
        let (normal, _) = workspace_deps(p, &ws);
        assert!(normal.contains(CORE), "{c} should build on {CORE}");
    }
}

#[test]
fn models_see_components_and_train_sees_models() {
    let ws = workspace();
    let mut allowed: Vec<&str> = vec![CORE];
    allowed.extend(COMPONENTS);
    assert_deps_within(&ws[MODELS], &ws, &allowed);
    allowed.push(MODELS);
    assert_deps_within(&ws[TRAIN], &ws, &allowed);
    let (normal, _) = workspace_deps(&ws[TRAIN], &ws);
    assert!(normal.contains(MODELS), "{TRAIN} trains {MODELS}' models");
}

#[test]
fn no_library_depends_on_tests_xtask_or_cli() {
    let ws = workspace();
    let libs: Vec<&Package> = ws.values().filter(|p| p.is_library()).collect();
    assert!(libs.len() >= 10, "expected the library crates");
    for p in libs {
        if p.name == "segkit-tests" {
            continue;
        }
        for (name, kind, _) in p.deps() {
            assert!(
                !NOT_FOR_LIBRARIES.contains(&name.as_str()),
                "library crate {} has a {kind} dependency on {name}",
                p.name
            );
        }
    }
}

#[test]
fn tools_and_tests_are_not_published() {
    let ws = workspace();
    for name in ["xtask", "segkit-tests"] {
        let p = ws
            .get(name)
            .unwrap_or_else(|| panic!("workspace member {name} is missing"));
        assert!(!p.publishable(), "{name} needs `publish = false`");
    }
}

fn valid_keyword(k: &str) -> bool {
    // crates.io: at most 20 characters, ASCII alphanumerics, `_`, `-` or `+`, starting with a
    // letter.
    k.len() <= 20
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
}

#[test]
fn publishable_crates_have_readme_and_metadata() {
    let ws = workspace();
    let published: Vec<&Package> = ws.values().filter(|p| p.publishable()).collect();
    assert!(
        published.len() >= 11,
        "expected every library crate and the CLI"
    );
    let mut problems = Vec::new();
    for p in published {
        let n = &p.name;
        for key in ["description", "license", "repository", "version"] {
            if p.str_field(key).is_none() {
                problems.push(format!("{n}: no `{key}`"));
            }
        }
        match p.str_field("readme") {
            None => problems.push(format!("{n}: no `readme`")),
            Some(r) => {
                let f = p.dir.join(r);
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                if !f.starts_with(&p.dir) || text.trim().is_empty() {
                    problems.push(format!("{n}: readme {} is missing or empty", f.display()));
                } else if !text.contains("```") {
                    problems.push(format!("{n}: {} has no usage example", f.display()));
                }
            }
        }
        let kw = p.list_field("keywords");
        if kw.is_empty() || kw.len() > 5 || !kw.iter().all(|k| valid_keyword(k)) {
            problems.push(format!(
                "{n}: keywords {kw:?} (1 to 5 valid crates.io keywords)"
            ));
        }
        let cats = p.list_field("categories");
        if cats.is_empty()
            || cats.len() > 5
            || !cats.iter().all(|c| VALID_CATEGORIES.contains(&c.as_str()))
        {
            problems.push(format!(
                "{n}: categories {cats:?} (1 to 5 of {VALID_CATEGORIES:?})"
            ));
        }
        for (dep, kind, d) in p.deps() {
            let Some(target) = ws.get(&dep) else {
                continue;
            };
            let versioned = d["req"].as_str().is_some_and(|r| r != "*");
            if kind != "dev" && !versioned {
                problems.push(format!("{n}: path dependency {dep} has no version"));
            }
            // A versioned dev-dependency is kept in the package and must then exist on the
            // registry; a path-only one is dropped by `cargo package`.
            if kind == "dev" && versioned && !target.publishable() {
                problems.push(format!(
                    "{n}: dev-dependency on the unpublished {dep} must not carry a version"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `path` with `.` and `..` resolved lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every file included at compile time by a `.rs` file under `dir`:
/// `(source file, line, included path)`; `include*!(concat!(env!("CARGO_MANIFEST_DIR"), ..))`
/// resolves against `crate_dir`, a plain literal against the source file's directory.
/// Arguments it cannot read are returned as `Err` so that they get a look.
fn compile_time_includes(
    dir: &Path,
    crate_dir: &Path,
    out: &mut Vec<(PathBuf, usize, Result<PathBuf, String>)>,
) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let f = e.path();
        if f.is_dir() {
            compile_time_includes(&f, crate_dir, out);
            continue;
        }
        if f.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let src = std::fs::read_to_string(&f).unwrap_or_default();
        let base = f.parent().unwrap_or(dir);
        for (i, line) in src.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for mac in ["include_bytes!(", "include_str!(", "include!(", "#[path = "] {
                let mut rest = code;
                while let Some(at) = rest.find(mac) {
                    let arg = rest[at + mac.len()..].trim_start();
                    rest = &rest[at + mac.len()..];
                    let (rel_to, lit) =
                        match arg.strip_prefix("concat!(env!(\"CARGO_MANIFEST_DIR\"),") {
                            Some(tail) => (crate_dir, tail.trim_start()),
                            None => (base, arg),
                        };
                    let path = lit
                        .strip_prefix('"')
                        .and_then(|l| l.split_once('"'))
                        .map(|(p, _)| normalize(&rel_to.join(p.trim_start_matches('/'))))
                        .ok_or_else(|| format!("cannot read the argument of {mac}..)"));
                    out.push((f.clone(), i + 1, path));
                }
            }
        }
    }
}

#[test]
fn compile_time_includes_stay_inside_the_package() {
    let ws = workspace();
    let mut checked = 0;
    let mut problems = Vec::new();
    for p in ws.values().filter(|p| p.publishable()) {
        let mut found = Vec::new();
        for sub in ["src", "build.rs"] {
            let d = p.dir.join(sub);
            if d.is_dir() {
                compile_time_includes(&d, &p.dir, &mut found);
            }
        }
        for (file, line, path) in found {
            checked += 1;
            let at = format!("{}:{line}", file.display());
            match path {
                Err(e) => problems.push(format!("{at}: {e}")),
                Ok(path) if !path.starts_with(&p.dir) => problems.push(format!(
                    "{at}: includes {}, outside {}'s package directory {}",
                    path.display(),
                    p.name,
                    p.dir.display()
                )),
                Ok(path) if !path.is_file() => problems.push(format!(
                    "{at}: includes {}, which does not exist",
                    path.display()
                )),
                Ok(_) => {}
            }
        }
    }
    // segkit-oneformer's CLIP vocabulary and segkit's demo model are included this way.
    assert!(checked >= 2, "expected the known compile-time includes");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn include_scanner_resolves_paths() {
    let dir = std::env::temp_dir().join(format!("segkit-layering-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("lib.rs"),
        "// include_bytes!(\"../../commented\")\n\
         static A: &[u8] = include_bytes!(\"../assets/a.bin\");\n\
         static B: &str = include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/../out.txt\"));\n",
    )
    .unwrap();
    let mut found = Vec::new();
    compile_time_includes(&src, &dir, &mut found);
    std::fs::remove_dir_all(&dir).unwrap();
    let got: Vec<(usize, PathBuf)> = found.into_iter().map(|(_, l, p)| (l, p.unwrap())).collect();
    assert_eq!(
        got,
        [
            (2, dir.join("assets/a.bin")),
            (3, normalize(&dir.join("../out.txt")))
        ]
    );
}
