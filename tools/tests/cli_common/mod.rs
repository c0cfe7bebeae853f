//! Helpers of the CLI tests (`cli_wan.rs`, `cli_wan_decoders.rs`): run the `streamdit`
//! binary, expect success or a named error, and a per-test-binary temporary folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn streamdit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamdit"))
        .args(args)
        .output()
        .expect("the streamdit binary runs")
}

pub fn ok(args: &[&str]) -> Output {
    let out = streamdit(args);
    assert!(
        out.status.success(),
        "streamdit {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The error message of a failing run (a message and a non-zero exit, never a panic).
pub fn fails(args: &[&str]) -> String {
    let out = streamdit(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "streamdit {args:?} succeeded");
    assert!(stderr.contains("streamdit: error:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// `name` in a folder of this test binary and process.
pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "streamdit-{}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
