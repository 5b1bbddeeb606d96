//! Repository hygiene checks, run as ordinary tests (as rust-analyzer's tidy tests).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn library_crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("src/lib.rs").exists())
        .collect();
    v.sort();
    v
}

#[test]
fn library_crates_deny_missing_docs() {
    let crates = library_crates();
    assert!(crates.len() >= 2, "expected library crates under crates/");
    for c in crates {
        let lib = std::fs::read_to_string(c.join("src/lib.rs")).unwrap();
        assert!(
            lib.contains("#![deny(missing_docs)]"),
            "{} lacks #![deny(missing_docs)]",
            c.display()
        );
    }
}

#[test]
fn no_large_tracked_files() {
    let out = match Command::new("git")
        .arg("ls-files")
        .current_dir(root())
        .output()
    {
        Ok(o) if o.status.success() => o,
        _ => {
            // A source tarball has no git index to list.
            segkit_core::testing::skip_unless_ci(
                "the large tracked files check",
                "not a git checkout, or git is not installed",
            );
            return;
        }
    };
    for f in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(m) = std::fs::metadata(root().join(f)) {
            assert!(
                m.len() <= 5 * 1024 * 1024,
                "{f} is over 5 MiB ({} bytes)",
                m.len()
            );
        }
    }
}

#[test]
fn formatted() {
    let ok = Command::new("cargo")
        .args(["fmt", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        segkit_core::testing::skip_unless_ci(
            "the rustfmt check",
            "`cargo fmt` is not installed: rustup component add rustfmt",
        );
        return;
    }
    let o = Command::new("cargo")
        .args(["fmt", "--all", "--", "--check", "-l"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "run `cargo fmt --all`; unformatted files:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Longest `.rs` file, in lines.
const MAX_FILE_LINES: usize = 600;

/// Longest `fn` body, in code lines (clippy's `too_many_lines` count: lines of the body,
/// braces included, that hold something other than whitespace and comments).
const MAX_FN_LINES: usize = 100;

/// Files and functions allowed past [`MAX_FILE_LINES`] / [`MAX_FN_LINES`], each with its
/// reason. An entry is a path relative to the repository root (`crates/x/src/y.rs`) for a
/// long file, or `path::fn_name` for a long function. Keep it short and honest: a test file
/// that holds long tables or fixtures may be here; a long function that could be split may not.
const SIZE_ALLOW_LIST: &[(&str, &str)] = &[];

/// Every `.rs` file under `crates/`, `xtask/` and `tests/` (sorted, `target/` skipped).
fn rust_sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    for d in ["crates", "xtask", "tests"] {
        walk(&root().join(d), &mut v);
    }
    v.sort();
    v
}

fn is_ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// `src` with the contents of comments blanked to spaces and the contents of string, byte
/// string, raw string and char literals replaced by `x`, newlines kept: line numbers and
/// columns stay, every brace left is a real brace, and a line left blank held only
/// whitespace or comments. Lifetimes and labels (`'a`) are left alone.
fn strip_comments_and_literals(src: &str) -> String {
    let mut s = Stripper {
        c: src.chars().collect(),
        out: Vec::with_capacity(src.len()),
        i: 0,
    };
    while s.i < s.c.len() {
        let (ch, next) = (s.c[s.i], s.at(s.i + 1));
        if ch == '/' && next == Some('/') {
            while s.at(s.i).is_some_and(|c| c != '\n') {
                s.blank();
            }
        } else if ch == '/' && next == Some('*') {
            s.block_comment();
        } else if let Some(hashes) = s.raw_string_start() {
            s.raw_string(hashes);
        } else if ch == '"' {
            s.string();
        } else if ch == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{7b}'.
            s.keep();
            s.literal();
            s.literal();
            while s.at(s.i).is_some_and(|c| c != '\'') {
                s.literal();
            }
            s.keep();
        } else if ch == '\'' && next.is_some() && s.at(s.i + 2) == Some('\'') {
            // A one-char literal: '{', 'a'.
            s.keep();
            s.literal();
            s.keep();
        } else {
            s.keep();
        }
    }
    s.out.into_iter().collect()
}

/// The state of [`strip_comments_and_literals`]: input, output, position.
struct Stripper {
    c: Vec<char>,
    out: Vec<char>,
    i: usize,
}

impl Stripper {
    fn at(&self, i: usize) -> Option<char> {
        self.c.get(i).copied()
    }

    /// Copies the current char.
    fn keep(&mut self) {
        if let Some(ch) = self.at(self.i) {
            self.out.push(ch);
        }
        self.i += 1;
    }

    /// Writes the current char as comment content (a space; newlines stay).
    fn blank(&mut self) {
        let ch = self.at(self.i);
        self.out.push(if ch == Some('\n') { '\n' } else { ' ' });
        self.i += 1;
    }

    /// Writes the current char as literal content (`x`; newlines stay).
    fn literal(&mut self) {
        let ch = self.at(self.i);
        self.out.push(if ch == Some('\n') { '\n' } else { 'x' });
        self.i += 1;
    }

    /// A (nested) block comment starting at the current `/*`.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while self.i < self.c.len() {
            let two = (self.c[self.i], self.at(self.i + 1));
            if two == ('/', Some('*')) {
                depth += 1;
                self.blank();
                self.blank();
                continue;
            } else if two == ('*', Some('/')) {
                depth -= 1;
                self.blank();
                self.blank();
                if depth == 0 {
                    return;
                }
                continue;
            }
            self.blank();
        }
    }

    /// The number of `#`s when a raw (byte) string `r#.."` starts at the current `r`.
    fn raw_string_start(&self) -> Option<usize> {
        let i = self.i;
        let before = |k: usize| i.checked_sub(k).and_then(|j| self.at(j));
        let own_token = match before(1) {
            None => true,
            Some('b') => !before(2).is_some_and(is_ident_char),
            Some(p) => !is_ident_char(p),
        };
        if self.c[i] != 'r' || !own_token {
            return None;
        }
        let mut j = i + 1;
        while self.at(j) == Some('#') {
            j += 1;
        }
        (self.at(j) == Some('"')).then_some(j - i - 1)
    }

    fn raw_string(&mut self, hashes: usize) {
        for _ in 0..hashes + 2 {
            self.keep(); // r, the #s, the quote
        }
        while self.i < self.c.len() {
            let closes =
                self.c[self.i] == '"' && (1..=hashes).all(|k| self.at(self.i + k) == Some('#'));
            if closes {
                for _ in 0..hashes + 1 {
                    self.keep();
                }
                return;
            }
            self.literal();
        }
    }

    fn string(&mut self) {
        self.keep();
        while let Some(ch) = self.at(self.i) {
            match ch {
                '\\' => {
                    self.literal();
                    self.literal();
                }
                '"' => {
                    self.keep();
                    return;
                }
                _ => self.literal(),
            }
        }
    }
}

/// A function found by [`functions`]: its name, the 1-based line of its `fn` keyword and its
/// body's code-line count (see [`MAX_FN_LINES`]).
struct FnSpan {
    name: String,
    line: usize,
    code_lines: usize,
}

/// Every `fn` item with a body in `src` (nested ones included), measured by brace matching on
/// [`strip_comments_and_literals`]'s output. `fn(..)` pointer types and bodiless trait
/// declarations are skipped.
fn functions(src: &str) -> Vec<FnSpan> {
    let code: Vec<char> = strip_comments_and_literals(src).chars().collect();
    let is_ident = is_ident_char;
    // Line number (0-based) of every char, and whether each line holds code.
    let mut line_of = Vec::with_capacity(code.len());
    let mut has_code = vec![false];
    for &ch in &code {
        line_of.push(has_code.len() - 1);
        if ch == '\n' {
            has_code.push(false);
        } else if !ch.is_whitespace() {
            *has_code.last_mut().unwrap() = true;
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 < code.len() {
        let is_fn = code[i] == 'f'
            && code[i + 1] == 'n'
            && code[i + 2].is_whitespace()
            && (i == 0 || !is_ident(code[i - 1]));
        if !is_fn {
            i += 1;
            continue;
        }
        let mut j = i + 2;
        while j < code.len() && code[j].is_whitespace() {
            j += 1;
        }
        let name_start = j;
        while j < code.len() && is_ident(code[j]) {
            j += 1;
        }
        if j == name_start {
            i += 2;
            continue;
        }
        let name: String = code[name_start..j].iter().collect();
        // The signature ends at the body's `{` or, for a declaration, a `;`, outside any
        // parentheses or brackets (`[u8; 4]`).
        let mut depth = 0i32;
        let mut open = None;
        while j < code.len() {
            match code[j] {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                '{' if depth == 0 => {
                    open = Some(j);
                    break;
                }
                ';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        if let Some(open) = open {
            let mut depth = 0i32;
            let mut k = open;
            while k < code.len() {
                match code[k] {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                k += 1;
            }
            let (first, last) = (line_of[open], line_of[k.min(code.len() - 1)]);
            out.push(FnSpan {
                name,
                line: line_of[i] + 1,
                code_lines: (first..=last).filter(|&l| has_code[l]).count(),
            });
        }
        // Continue inside the signature / body: nested functions are measured too.
        i = name_start;
    }
    out
}

#[test]
fn fn_measurement_skips_strings_comments_and_char_literals() {
    let src = r####"
fn a() {
    let s = "}}} fn fake() { {";
    let r = r#"}"# ; let c = '{'; let e = '\''; let l: &'static str = "";
    // } fn commented() {
    /* } /* nested } */ fn x() { */
    /*/ } still one comment: its first slash does not close it */
    let f: fn(u8) -> u8 = |x| x;

    if true { b'}'; }
}
trait T { fn decl(&self) -> [u8; 4]; fn with_body(&self) {} }
"####;
    let f = functions(src);
    let got: Vec<(&str, usize, usize)> = f
        .iter()
        .map(|f| (f.name.as_str(), f.line, f.code_lines))
        .collect();
    assert_eq!(got, [("a", 2, 6), ("with_body", 12, 1)]);
}

/// A long-file or long-function entry is allowed when [`SIZE_ALLOW_LIST`] names it.
fn size_allowed(entry: &str) -> bool {
    SIZE_ALLOW_LIST.iter().any(|(e, _)| *e == entry)
}

#[test]
fn no_long_files_or_functions() {
    let files = rust_sources();
    assert!(files.len() > 50, "expected the workspace's sources");
    let mut offenders = Vec::new();
    let mut used = std::collections::HashSet::new();
    for f in files {
        let rel = f
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let src = std::fs::read_to_string(&f).unwrap();
        let code = strip_comments_and_literals(&src);
        let (open, close) = (code.matches('{').count(), code.matches('}').count());
        if open != close {
            offenders.push(format!(
                "{rel}: the brace matcher is lost ({open} `{{` vs {close} `}}` outside \
                 comments and literals); teach strip_comments_and_literals this file"
            ));
        }
        let lines = src.lines().count();
        if lines > MAX_FILE_LINES {
            if size_allowed(&rel) {
                used.insert(rel.clone());
            } else {
                offenders.push(format!("{rel}: {lines} lines (max {MAX_FILE_LINES})"));
            }
        }
        for func in functions(&src) {
            if func.code_lines > MAX_FN_LINES {
                let entry = format!("{rel}::{}", func.name);
                if size_allowed(&entry) {
                    used.insert(entry);
                } else {
                    offenders.push(format!(
                        "{rel}:{}: fn {} has {} code lines (max {MAX_FN_LINES})",
                        func.line, func.name, func.code_lines
                    ));
                }
            }
        }
    }
    let stale: Vec<&str> = SIZE_ALLOW_LIST
        .iter()
        .map(|(e, _)| *e)
        .filter(|e| !used.contains(*e))
        .collect();
    assert!(
        stale.is_empty(),
        "SIZE_ALLOW_LIST entries that are no longer needed (remove them): {stale:?}"
    );
    assert!(
        offenders.is_empty(),
        "split these (or add them to SIZE_ALLOW_LIST with a reason):\n{}",
        offenders.join("\n")
    );
}
