//! `cargo xtask build-ebpf`: builds lb-ebpf (its own workspace) for the BPF target.

use std::fs::File;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{ensure, Context, Result};

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
    // Cargo leaves a fresh object untouched, but lb-userspace's build script compares its time
    // with every file under lb-ebpf/src, host-only tests included: mark it as checked now.
    File::options()
        .write(true)
        .open(&object)
        .and_then(|file| file.set_modified(SystemTime::now()))
        .with_context(|| format!("marking {} as up to date", object.display()))?;
    Ok(object)
}
