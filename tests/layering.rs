//! The engine's rooms import one way only (docs/architecture.md): every `crate::` and
//! `super::` path in `engine/src` is resolved to the room (top-level module) it names, and a
//! room may name only rooms below it. Module files must also form no import cycle, and no
//! source file outside tests may grow past the size a newcomer can hold.
//!
//! This reads the sources as text: it sees `use` lines and paths written in code, not doc
//! links or comments, and skips `#[cfg(test)] mod tests` blocks (tests may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The rooms from the bottom up: a room may import only rooms earlier in this list.
const ROOMS: &[&str] = &[
    "error",
    "tensor",
    "rng",
    "nvtx",
    "math",
    "model",
    "checkpoint",
    "memory",
    "cost",
    "text",
    "backend",
    "decoder",
    "stream",
    "engine",
    "abi",
];

/// What the C ABI may use: the crate root's public API only (plus the foundation).
const ABI_MAY_USE: &[&str] = &["error", "tensor"];

/// Lines a source file may have outside its test module.
const MAX_LINES: usize = 650;

fn engine_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `backend/cpu/mod.rs` is `[backend, cpu]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(engine_src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a file without comments, string literals and its test module.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        // Drop string literals and a trailing comment (good enough for this code base).
        let mut in_str = false;
        let mut prev = ' ';
        for (i, ch) in line.char_indices() {
            if !in_str && ch == '/' && line[i..].starts_with("//") {
                break;
            }
            if ch == '"' && prev != '\\' && prev != '\'' {
                in_str = !in_str;
            } else if !in_str {
                out.push(ch);
            }
            prev = ch;
        }
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every absolute module path a file's code names through `crate::` or `super::`, each as
/// its first two segments (`{a, b}` groups expanded one level).
fn referenced(code: &str, here: &[String]) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = code.chars().collect();
    let text: String = bytes.iter().collect();
    for (start, _) in text
        .match_indices("crate::")
        .chain(text.match_indices("super::"))
    {
        // Part of a longer path (`a::crate`, `super::super::`, `xsuper::`).
        if start > 0 && (is_ident(bytes[start - 1]) || bytes[start - 1] == ':') {
            continue;
        }
        // Resolve the base.
        let mut base: Vec<String>;
        let mut i = start;
        if text[i..].starts_with("crate::") {
            base = Vec::new();
            i += "crate::".len();
        } else {
            base = here.to_vec();
            while text[i..].starts_with("super::") {
                base.pop();
                i += "super::".len();
            }
        }
        // Read segments `a::b::...` or a `{...}` group.
        let mut segs = base.clone();
        loop {
            if text[i..].starts_with('{') {
                let mut depth = 0;
                let mut item = String::new();
                let mut items = Vec::new();
                for ch in text[i..].chars() {
                    match ch {
                        '{' => {
                            depth += 1;
                            if depth == 1 {
                                continue;
                            }
                        }
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                items.push(std::mem::take(&mut item));
                                break;
                            }
                        }
                        ',' if depth == 1 => {
                            items.push(std::mem::take(&mut item));
                            continue;
                        }
                        _ => {}
                    }
                    if depth >= 1 {
                        item.push(ch);
                    }
                }
                for it in items {
                    let first: String = it.trim().chars().take_while(|&c| is_ident(c)).collect();
                    if !first.is_empty() && first != "self" {
                        let mut p = segs.clone();
                        p.push(first);
                        out.insert(p.into_iter().take(2).collect());
                    } else if first == "self" {
                        out.insert(segs.iter().take(2).cloned().collect());
                    }
                }
                break;
            }
            let seg: String = text[i..].chars().take_while(|&c| is_ident(c)).collect();
            if seg.is_empty() {
                break;
            }
            i += seg.len();
            segs.push(seg);
            if segs.len() >= 2 || !text[i..].starts_with("::") {
                break;
            }
            i += 2;
        }
        if !segs.is_empty() {
            out.insert(segs.into_iter().take(2).collect());
        }
    }
    out
}

fn rank(room: &str) -> Option<usize> {
    ROOMS.iter().position(|r| *r == room)
}

#[test]
fn rooms_import_downward_only() {
    let mut files = Vec::new();
    rust_files(&engine_src(), &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let here = module_path(f);
        let Some(room) = here.first() else { continue }; // lib.rs: the public API
        let Some(own) = rank(room) else {
            bad.push(format!("{}: room `{room}` is not in ROOMS", f.display()));
            continue;
        };
        let code = code_of(&fs::read_to_string(f).unwrap());
        for path in referenced(&code, &here) {
            let target = &path[0];
            if target == room {
                continue;
            }
            match rank(target) {
                Some(r) if r < own && room == "abi" && !ABI_MAY_USE.contains(&target.as_str()) => {
                    bad.push(format!(
                        "{}: the C ABI names `crate::{}` (it may use only the crate root's public API)",
                        f.display(),
                        path.join("::")
                    ))
                }
                Some(r) if r < own => {}
                Some(_) => bad.push(format!(
                    "{}: `{room}` imports `crate::{}`, a room at or above it",
                    f.display(),
                    path.join("::")
                )),
                None => {} // a crate-root item (`crate::Error`), or an extern path
            }
        }
    }
    assert!(
        bad.is_empty(),
        "upward or sideways imports:\n{}",
        bad.join("\n")
    );
}

#[test]
fn module_files_form_no_cycle() {
    let mut files = Vec::new();
    rust_files(&engine_src(), &mut files);
    // Edges between module files (by module path), ignoring a parent's links to its own
    // children (a mod.rs declares and re-exports them).
    let mut known = BTreeSet::new();
    for f in &files {
        known.insert(module_path(f));
    }
    let resolve = |p: &[String]| -> Option<Vec<String>> {
        // The longest known module that prefixes the path.
        (1..=p.len())
            .rev()
            .map(|n| p[..n].to_vec())
            .find(|m| known.contains(m))
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        let here = module_path(f);
        let code = code_of(&fs::read_to_string(f).unwrap());
        for path in referenced(&code, &here) {
            if let Some(m) = resolve(&path) {
                let parent_child = m.len() == here.len() + 1 && m.starts_with(&here);
                let child_parent = here.len() == m.len() + 1 && here.starts_with(&m);
                if m != here && !parent_child && !child_parent {
                    edges.entry(here.clone()).or_default().insert(m);
                }
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == n).unwrap();
                let mut cyc = stack[at..].to_vec();
                cyc.push(n.clone());
                return Some(cyc);
            }
            _ => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(n, &edges, &mut state, &mut stack) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            panic!("module import cycle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn no_source_file_outgrows_a_head() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["engine/src", "tools/src", "kernels/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut big = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        // Lines before the test module.
        let mut n = 0;
        let mut lines = text.lines().peekable();
        while let Some(l) = lines.next() {
            if l.trim_start() == "#[cfg(test)]"
                && lines
                    .peek()
                    .is_some_and(|l| l.trim_start().starts_with("mod "))
            {
                break;
            }
            n += 1;
        }
        if n > MAX_LINES {
            big.push(format!("{}: {n} lines", f.display()));
        }
    }
    assert!(
        big.is_empty(),
        "files over {MAX_LINES} lines outside their tests (split them by responsibility):\n{}",
        big.join("\n")
    );
}

#[test]
fn the_checker_sees_imports() {
    // The parser itself: a grouped import, `super` from a nested file, a doc comment and a
    // string that must not count.
    let code = code_of(
        "use crate::{math::{self, linear}, model::graph::Op};\n\
         use super::super::error::Error;\n\
         /// [`x`](crate::abi::Thing)\n\
         let s = \"crate::stream::Stream\";\n\
         fn f() -> crate::backend::Clock { todo() }\n",
    );
    let here = vec!["decoder".to_string(), "tae".to_string(), "cpu".to_string()];
    let got = referenced(&code, &here);
    // A group is expanded one level: `{math::{self, linear}, model::graph::Op}` names the
    // rooms `math` and `model`.
    let want: BTreeSet<Vec<String>> = [
        vec!["math".to_string()],
        vec!["model".to_string()],
        vec!["decoder".to_string(), "error".to_string()],
        vec!["backend".to_string(), "Clock".to_string()],
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
}
