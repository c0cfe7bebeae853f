//! Records the git revision the tool was built from (`STREAMDIT_GIT_REVISION`), for the
//! configuration section of `streamdit bench`. Outside a git checkout it is left unset.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Asks cargo to rerun this script when the git file `path` changes (only if it exists:
/// a missing file would rerun it on every build).
fn watch(path: &str) {
    if let Some(p) = git(&["rev-parse", "--git-path", path]) {
        if Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Rebuild when HEAD moves: HEAD itself, the branch it points to, and packed refs.
    watch("HEAD");
    watch("packed-refs");
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(&branch);
    }
    if let Some(rev) = git(&["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=STREAMDIT_GIT_REVISION={rev}");
    }
}
