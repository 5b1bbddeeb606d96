//! `cargo xtask list`: the registry as a table: name, source, size, how the hash is pinned,
//! whether the files are in `weights/NAME/` (and verified), and the default flag.

use std::path::Path;

use segkit::segmenter::registry::{Entry, Registry, Source};

use crate::download::verify::{self, MARKER};
use crate::registry::{self, REGISTRY};

/// Whether an entry is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Nothing in `weights/NAME/`.
    Absent,
    /// An interrupted download of this many bytes waits for a resume.
    Partial(u64),
    /// Some of the files are there.
    Incomplete {
        /// Files present.
        have: usize,
        /// Files the entry has.
        of: usize,
    },
    /// Every file is there but no verified download recorded them.
    Unverified,
    /// Every file is there and `.verified` lists them.
    Verified,
    /// `.verified` records another hash than the registry now pins (the pin moved).
    Stale,
    /// Embedded and present.
    Embedded,
    /// Embedded but missing from the checkout.
    EmbeddedMissing,
}

impl Status {
    fn text(&self) -> String {
        match self {
            Status::Absent => "-".into(),
            Status::Partial(n) => format!("partial ({})", human(*n)),
            Status::Incomplete { have, of } => format!("incomplete ({have}/{of} files)"),
            Status::Unverified => "present, unverified".into(),
            Status::Verified => "verified".into(),
            Status::Stale => "stale (registry hash changed)".into(),
            Status::Embedded => "present".into(),
            Status::EmbeddedMissing => "missing".into(),
        }
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// What is in `weights/NAME/` for `entry`.
pub fn status(entry: &Entry, weights: &Path) -> Status {
    if let Source::Embedded = entry.source {
        return if registry::has_entries(&registry::embedded_dir(entry, weights)) {
            Status::Embedded
        } else {
            Status::EmbeddedMissing
        };
    }
    let dir = weights.join(&entry.name);
    let files = entry.file_names();
    let have = files.iter().filter(|f| dir.join(f).is_file()).count();
    if have == 0 {
        let partial: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(format!("{f}.partial"))).ok())
            .map(|m| m.len())
            .sum();
        return if partial > 0 {
            Status::Partial(partial)
        } else {
            Status::Absent
        };
    }
    if have < files.len() {
        return Status::Incomplete {
            have,
            of: files.len(),
        };
    }
    let marker = verify::read_marker(&dir);
    if !files.iter().all(|f| marker.contains_key(*f)) {
        return Status::Unverified;
    }
    let moved = files.iter().any(|f| {
        entry
            .pinned_sha256(f)
            .is_some_and(|pin| marker.get(*f).map(String::as_str) != Some(pin))
    });
    if moved {
        Status::Stale
    } else {
        Status::Verified
    }
}

fn source(entry: &Entry) -> String {
    match &entry.source {
        Source::Url { url, .. } if url.contains("download.openmmlab.com") => "mmseg zoo".into(),
        Source::Url { url, .. } => {
            let host = url.split("://").nth(1).and_then(|r| r.split('/').next());
            format!("url {}", host.unwrap_or("?"))
        }
        Source::Hf { repo, revision, .. } => {
            format!("hf {repo}@{}", &revision[..revision.len().min(7)])
        }
        Source::Embedded => "embedded".into(),
        Source::Manual { page, .. } => {
            let host = page.split("://").nth(1).and_then(|r| r.split('/').next());
            format!("by hand {}", host.unwrap_or("?"))
        }
    }
}

fn hash(entry: &Entry) -> String {
    match &entry.source {
        Source::Url {
            sha256: Some(_), ..
        } => "sha256".into(),
        Source::Url { .. } => "prefix".into(),
        Source::Hf { files, .. } => {
            let pinned = files.iter().filter(|f| f.sha256.is_some()).count();
            if pinned == files.len() {
                "sha256".into()
            } else {
                format!("sha256 {pinned}/{}", files.len())
            }
        }
        Source::Embedded => "-".into(),
        Source::Manual {
            sha256: Some(_), ..
        } => "sha256".into(),
        Source::Manual { .. } => "none".into(),
    }
}

fn size(entry: &Entry, weights: &Path) -> String {
    if let Some(s) = entry.size() {
        return human(s);
    }
    // Unknown to the registry: what is on disk, when it is all there.
    let dir = weights.join(&entry.name);
    let on_disk: Option<u64> = match entry.source {
        Source::Embedded => std::fs::read_dir(registry::embedded_dir(entry, weights))
            .ok()
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            }),
        _ => entry
            .file_names()
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).ok().map(|m| m.len()))
            .sum(),
    };
    on_disk.map_or_else(|| "?".into(), human)
}

/// The table `list` prints.
pub fn table(reg: &Registry, weights: &Path) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "SOURCE".into(),
        "SIZE".into(),
        "HASH".into(),
        "STATUS".into(),
        "DEFAULT".into(),
    ]];
    for e in &reg.entries {
        rows.push([
            e.name.clone(),
            source(e),
            size(e, weights),
            hash(e),
            status(e, weights).text(),
            if e.default {
                "yes".into()
            } else {
                String::new()
            },
        ]);
    }
    let mut w = [0usize; 6];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Runs `cargo xtask list`.
pub fn run(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("unknown argument {a}; usage: cargo xtask list"));
    }
    let root = crate::root();
    let reg = registry::load(&root.join(REGISTRY)).map_err(|e| e.to_string())?;
    print!("{}", table(&reg, &root.join("weights")));
    println!(
        "\nHASH: sha256 = full hash pinned; prefix = only the 8 hex digits mmseg publishes \
         (enforced; the full hash is printed on download). STATUS: verified = weights/NAME/{MARKER} \
         lists every file. Fetch with `cargo xtask download NAME [--convert]`."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = r#"
[[model]]
name = "zoo"
preset = "p"
default = true
url = "https://download.openmmlab.com/x/zoo-12345678.pth"
sha256_prefix = "12345678"

[[model]]
name = "hub"
hf_repo = "org/model"
revision = "0123456789abcdef0123456789abcdef01234567"
files = [
  { name = "config.json", size = 1048576, sha256 = "1111111111111111111111111111111111111111111111111111111111111111" },
  { name = "pytorch_model.bin", size = 2097152 },
]

[[model]]
name = "demo"
embedded = true
"#;

    #[test]
    fn statuses_and_table() {
        let reg = Registry::parse(REG, Path::new("t")).unwrap();
        let d = tempfile::tempdir().unwrap();
        let w = d.path();
        let zoo = reg.get("zoo").unwrap();
        let hub = reg.get("hub").unwrap();
        let demo = reg.get("demo").unwrap();
        assert_eq!(status(zoo, w), Status::Absent);
        assert_eq!(status(demo, w), Status::EmbeddedMissing);

        std::fs::create_dir_all(w.join("zoo")).unwrap();
        std::fs::write(w.join("zoo/zoo-12345678.pth.partial"), [0u8; 10]).unwrap();
        assert_eq!(status(zoo, w), Status::Partial(10));
        std::fs::rename(
            w.join("zoo/zoo-12345678.pth.partial"),
            w.join("zoo/zoo-12345678.pth"),
        )
        .unwrap();
        assert_eq!(status(zoo, w), Status::Unverified);
        let mut m = std::collections::BTreeMap::new();
        m.insert("zoo-12345678.pth".to_string(), "1".repeat(64));
        verify::write_marker(&w.join("zoo"), &m).unwrap();
        assert_eq!(status(zoo, w), Status::Verified);

        std::fs::create_dir_all(w.join("hub")).unwrap();
        std::fs::write(w.join("hub/config.json"), "{}").unwrap();
        assert_eq!(status(hub, w), Status::Incomplete { have: 1, of: 2 });
        std::fs::write(w.join("hub/pytorch_model.bin"), "x").unwrap();
        let mut m = std::collections::BTreeMap::new();
        m.insert("config.json".to_string(), "2".repeat(64));
        m.insert("pytorch_model.bin".to_string(), "3".repeat(64));
        verify::write_marker(&w.join("hub"), &m).unwrap();
        assert_eq!(
            status(hub, w),
            Status::Stale,
            "config.json is pinned to 111.."
        );

        std::fs::create_dir_all(w.join("demo")).unwrap();
        std::fs::write(w.join("demo/model.safetensors"), [0u8; 2048]).unwrap();
        assert_eq!(status(demo, w), Status::Embedded);

        let t = table(&reg, w);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{t}");
        assert!(
            lines[1].contains("mmseg zoo") && lines[1].contains("prefix"),
            "{t}"
        );
        assert!(
            lines[1].contains("verified") && lines[1].trim_end().ends_with("yes"),
            "{t}"
        );
        assert!(
            lines[2].contains("hf org/model@0123456") && lines[2].contains("3.0 MiB"),
            "{t}"
        );
        assert!(lines[2].contains("sha256 1/2"), "{t}");
        assert!(
            lines[3].contains("embedded") && lines[3].contains("present"),
            "{t}"
        );
    }

    #[test]
    fn the_real_registry_lists() {
        let reg = Registry::load(&crate::root().join(REGISTRY)).unwrap();
        let d = tempfile::tempdir().unwrap();
        let t = table(&reg, d.path());
        assert_eq!(t.lines().count(), reg.entries.len() + 1);
        assert!(t.contains("oneformer_ade20k_swin_tiny"));
    }
}
