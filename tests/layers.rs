//! The architecture's layers, checked on the source: every top-level module of `src/` imports only
//! modules below it, so there is no import circle and no upward import between them. A module's
//! imports are every `crate::` (or, in the binary, `ptrag_engine::`) path in its files, `use` groups
//! included.

use std::collections::BTreeSet;
use std::path::Path;

/// The top-level modules from the bottom up; a module may import only those on lower floors.
const FLOORS: &[&[&str]] = &[
    &["error"],
    &["scalar", "progress", "machine"],
    &["cpu"],
    &["cuda"],
    &["tape"],
    &["data"],
    &["model"],
    &["score"],
    &["train"],
    &["eval"],
    &["profile"],
    &["bench"],
    &["lib", "cli", "main"],
];

fn floor(module: &str) -> usize {
    FLOORS.iter().position(|f| f.contains(&module)).unwrap_or_else(|| panic!("`{module}` is on no floor of FLOORS: add it"))
}

/// Source text without comments (line comments, doc comments and block comments).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['/', '"', '\'']) {
        out += &rest[..i];
        let tail = &rest[i..];
        if let Some(literal) = ["'\"'", "'\\\"'"].iter().find(|l| tail.starts_with(**l)) {
            rest = &tail[literal.len()..]; // a quote as a char literal, not a string's start
        } else if tail.starts_with('\'') {
            out.push('\''); // a lifetime or another char literal
            rest = &tail[1..];
        } else if tail.starts_with("//") {
            rest = tail.find('\n').map_or("", |n| &tail[n..]);
        } else if tail.starts_with("/*") {
            rest = tail.find("*/").map_or("", |n| &tail[n + 2..]);
        } else if tail.starts_with('"') {
            // skip a string literal (escapes included), so a path in a message is not an import
            let mut end = 1;
            let bytes = tail.as_bytes();
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            rest = &tail[(end + 1).min(tail.len())..];
        } else {
            out.push('/');
            rest = &tail[1..];
        }
    }
    out + rest
}

/// The top-level modules a file's code names through `root::` paths, `use root::{a::.., b}` groups included.
fn imports(code: &str, root: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let prefix = format!("{root}::");
    let mut rest = code;
    while let Some(i) = rest.find(&prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // part of a longer name
        }
        if let Some(group) = rest.strip_prefix('{') {
            // the first segment of each item at the group's top level
            let (mut depth, mut item_start) = (0, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        let name: String = group[j..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        found.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The violations in `src/`: (file, its module, the module it imports that is not below it).
fn upward_imports(src: &Path) -> Vec<(String, String, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_string();
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let root = if module == "main" || module == "cli" { "ptrag_engine" } else { "crate" };
        for imported in imports(&code, root) {
            // `crate::Error` and the like: the crate root's re-exports of `error`
            let imported = if imported == "Error" || imported == "Result" { "error".to_string() } else { imported };
            if imported != module && floor(&imported) >= floor(&module) {
                bad.push((relative.display().to_string(), module.clone(), imported));
            }
        }
    }
    bad
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let bad = upward_imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let lines: Vec<String> = bad.iter().map(|(file, m, i)| format!("src/{file}: `{m}` imports `{i}`, which is not below it")).collect();
    assert!(lines.is_empty(), "imports that do not point down (FLOORS in tests/layers.rs):\n{}", lines.join("\n"));
}

/// The reader itself: a group, a nested group, a path in a comment or a string, a longer name.
#[test]
fn imports_are_read_from_paths_and_groups_only() {
    let code = code_of(
        "use crate::{data::store::Store, model::{a, b}, Error};\n// crate::eval in a comment\nlet s = \"crate::train\";\nx = mycrate::cli::y; crate::tape::f();\nmatch c { '\"' => crate::cpu::g(), _ => {} }",
    );
    let found: Vec<String> = imports(&code, "crate").into_iter().collect();
    assert_eq!(found, ["Error", "cpu", "data", "model", "tape"]);
}
