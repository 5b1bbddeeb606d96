//! `cargo xtask fixtures [NAME..]`: regenerate parity fixtures from the reference
//! implementations. With names, only `tests/parity/gen_NAME.py` run.

use std::process::Command;

use crate::{python, root, run_cmd};

fn run_all(names: &[String]) -> Result<(), String> {
    let py = python(false)?;
    let root = root();
    let dir = root.join("tests/parity");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("gen_")
                && n.ends_with(".py")
                && (names.is_empty() || names.iter().any(|w| n == format!("gen_{w}.py")))
        })
        .collect();
    scripts.sort();
    if scripts.is_empty() {
        return Err(format!(
            "no generator matches {names:?} in {}",
            dir.display()
        ));
    }
    let out = root.join("tests/fixtures");
    for s in &scripts {
        eprintln!("xtask: running {}", s.display());
        run_cmd(Command::new(&py).arg(s).arg(&out).current_dir(&root))?;
    }
    eprintln!(
        "xtask: {} generator(s) done; fixtures in {}",
        scripts.len(),
        out.display()
    );
    Ok(())
}

pub fn run(args: &[String]) -> Result<(), String> {
    run_all(args)
}
