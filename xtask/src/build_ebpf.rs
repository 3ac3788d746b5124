//! `cargo xtask build-ebpf`: builds lb-ebpf (its own workspace) for the BPF target.

use std::path::PathBuf;

use anyhow::{ensure, Result};

use crate::shell;

/// Target triple of the eBPF object.
pub const TARGET: &str = "bpfel-unknown-none";

/// Builds the eBPF object with nightly and returns its path.
pub fn run() -> Result<PathBuf> {
    let dir = shell::workspace_root().join("lb-ebpf");
    shell::run(shell::cargo(Some("nightly"), &dir).args([
        "build",
        "--release",
        "-Z",
        "build-std=core",
        "--target",
        TARGET,
    ]))?;
    let object = dir
        .join("target")
        .join(TARGET)
        .join("release")
        .join("lb-ebpf");
    ensure!(
        object.is_file(),
        "the build succeeded but {} is missing",
        object.display()
    );
    Ok(object)
}
