//! How the CLI writes files without losing the user's: output paths are checked against
//! every input (an output never replaces a file the command reads), output files must sit
//! in an existing directory (the error names the output path, not a temporary file), and a
//! group of files is written all or none — a file this run replaces is kept aside until the
//! whole group is in place and put back if any part fails, so a failed run never deletes a
//! file it did not create.

use std::path::{Path, PathBuf};

use crate::CliError;

/// `p` made absolute with its symbolic links resolved; for a path that does not exist yet,
/// its parent's canonical form joined with its name (so two spellings of one file compare
/// equal whether or not it exists).
pub fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (parent.canonicalize(), p.file_name()) {
        (Ok(d), Some(n)) => d.join(n),
        _ => std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// Refuses an output path that is one of the inputs (`(role, path)`, e.g. `("--weights",
/// ..)`): the same file under any spelling (symbolic links, `./`, hard links aside).
pub fn refuse_overwriting_inputs(output: &Path, inputs: &[(&str, &Path)]) -> Result<(), CliError> {
    let out = canonical(output);
    for (role, input) in inputs {
        if canonical(input) == out {
            return Err(CliError::WouldOverwrite {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
                role: role.to_string(),
            });
        }
    }
    Ok(())
}

/// An output file must go into an existing directory and must not be a directory itself;
/// the error names the output path and what is wrong with it.
pub fn check_output_file(output: &Path) -> Result<(), CliError> {
    let bad = |reason: String| CliError::Output {
        path: output.to_path_buf(),
        reason,
    };
    if output.is_dir() {
        return Err(bad("it is a directory; give a file name".into()));
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        return Err(bad(format!(
            "its directory {} does not exist (create it first)",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(bad(format!(
            "{} is a regular file, not a directory",
            dir.display()
        )));
    }
    Ok(())
}

/// A hidden name next to `path` for this process: `.NAME.SUFFIX-PID`.
fn hidden(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}-{}", std::process::id()))
}

/// Writes every file or none: all as temporary files first, then each renamed into place,
/// an existing file first moved aside to a backup. On any failure the temporary files are
/// removed, the files this run put in place are removed and the backups renamed back; on
/// success the backups (the replaced files) are removed. Nothing else is ever deleted. A
/// SIGINT / SIGTERM waits for the group to finish (see `main`).
pub fn write_all_or_none(files: &[(PathBuf, Vec<u8>)]) -> Result<(), String> {
    segkit::train::checkpoint::as_one_write(|| write_group(files))
}

fn write_group(files: &[(PathBuf, Vec<u8>)]) -> Result<(), String> {
    let mut temps: Vec<PathBuf> = Vec::new();
    for (path, bytes) in files {
        let tmp = hidden(path, "tmp");
        if let Err(e) = std::fs::write(&tmp, bytes) {
            let _ = std::fs::remove_file(&tmp);
            temps.iter().for_each(|t| drop(std::fs::remove_file(t)));
            return Err(format!("cannot write {}: {e}", path.display()));
        }
        temps.push(tmp);
    }
    // (target, backup of the file it replaced)
    let mut placed: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    let undo = |placed: &[(PathBuf, Option<PathBuf>)], temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
        for (path, backup) in placed.iter().rev() {
            match backup {
                Some(b) => drop(std::fs::rename(b, path)),
                None => drop(std::fs::remove_file(path)),
            }
        }
    };
    for (i, ((path, _), tmp)) in files.iter().zip(&temps).enumerate() {
        // Only a file (or link) is moved aside; a directory in the way fails the rename.
        let replaces_file = path.symlink_metadata().is_ok_and(|m| !m.is_dir());
        let backup = if replaces_file {
            let b = hidden(path, "bak");
            if let Err(e) = std::fs::rename(path, &b) {
                undo(&placed, &temps[i..]);
                return Err(format!("cannot replace {}: {e}", path.display()));
            }
            Some(b)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(tmp, path) {
            if let Some(b) = &backup {
                let _ = std::fs::rename(b, path);
            }
            undo(&placed, &temps[i..]);
            return Err(format!("cannot write {}: {e}", path.display()));
        }
        placed.push((path.clone(), backup));
    }
    for (_, backup) in placed {
        if let Some(b) = backup {
            let _ = std::fs::remove_file(b);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn all_or_none_and_a_failed_rerun_keeps_the_previous_files() {
        let dir = tempfile::tempdir().unwrap();
        let ok = [
            (dir.path().join("a"), b"1".to_vec()),
            (dir.path().join("b"), b"2".to_vec()),
        ];
        write_all_or_none(&ok).unwrap();
        let bad = [
            (dir.path().join("c"), b"1".to_vec()),
            (dir.path().join("missing").join("d"), b"2".to_vec()),
        ];
        assert!(write_all_or_none(&bad).is_err());
        assert_eq!(names(dir.path()), ["a", "b"]);
        // A re-run whose last rename fails (the target is a directory): the
        // previous run's `a` and `b` are back, with their contents.
        std::fs::create_dir(dir.path().join("z")).unwrap();
        let rerun = [
            (dir.path().join("a"), b"new a".to_vec()),
            (dir.path().join("b"), b"new b".to_vec()),
            (dir.path().join("z"), b"new z".to_vec()),
        ];
        assert!(write_all_or_none(&rerun).is_err());
        assert_eq!(names(dir.path()), ["a", "b", "z"]);
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"2");
        assert!(dir.path().join("z").is_dir());
        // A successful re-run replaces them and leaves no backup.
        write_all_or_none(&rerun[..2]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"new a");
        assert_eq!(names(dir.path()), ["a", "b", "z"]);
    }

    #[test]
    fn outputs_that_are_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("w.safetensors");
        std::fs::write(&w, b"x").unwrap();
        let spelled = dir.path().join(".").join("w.safetensors");
        let e = refuse_overwriting_inputs(&spelled, &[("--weights", &w)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--weights") && e.contains("w.safetensors"),
            "{e}"
        );
        let other = dir.path().join("out.safetensors");
        refuse_overwriting_inputs(&other, &[("--weights", &w)]).unwrap();
        let e = check_output_file(&dir.path().join("nope/out.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope/out.safetensors") && e.contains("does not exist"),
            "{e}"
        );
        let e = check_output_file(&w.join("out.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("regular file"), "{e}");
        let e = check_output_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }
}
