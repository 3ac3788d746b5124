//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is copied to `OUT_DIR/lb-ebpf.o` for `include_bytes!`. The build fails when the
//! object is missing, or older than any source it is built from (lb-ebpf's sources and
//! Cargo.toml, lb-common's sources), so a stale data path is never embedded.
//! `LB_EBPF_OBJECT=<path>` embeds a prebuilt object instead, without the staleness check.

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const FIX: &str = "run `cargo xtask build-ebpf`";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("lb-userspace lives in the workspace root");
    println!("cargo::rerun-if-env-changed=LB_EBPF_OBJECT");

    let object = match env::var_os("LB_EBPF_OBJECT") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo::rerun-if-changed={}", path.display());
            println!(
                "cargo::warning=embedding {} from LB_EBPF_OBJECT without checking it against the sources",
                path.display()
            );
            path
        }
        None => {
            let object = root.join("lb-ebpf/target/bpfel-unknown-none/release/lb-ebpf");
            let sources = [
                root.join("lb-ebpf/src"),
                root.join("lb-ebpf/Cargo.toml"),
                root.join("lb-common/src"),
            ];
            println!("cargo::rerun-if-changed={}", object.display());
            for source in &sources {
                println!("cargo::rerun-if-changed={}", source.display());
            }
            if let Err(message) = check_fresh(&object, &sources) {
                println!("cargo::error={message}");
                return;
            }
            object
        }
    };
    if let Err(e) = fs::copy(&object, out_dir.join("lb-ebpf.o")) {
        println!(
            "cargo::error=eBPF object not found at {}: {FIX} ({e})",
            object.display()
        );
    }
}

/// Fails when the object is missing or any source file is newer than it.
fn check_fresh(object: &Path, sources: &[PathBuf]) -> Result<(), String> {
    let built = fs::metadata(object)
        .and_then(|m| m.modified())
        .map_err(|_| format!("eBPF object not found at {}: {FIX}", object.display()))?;
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for source in sources {
        visit_files(source, &mut |path, modified| {
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, path.to_path_buf()));
            }
        })
        .map_err(|e| format!("reading {} failed: {e}", source.display()))?;
    }
    match newest {
        Some((modified, path)) if modified > built => Err(format!(
            "eBPF object at {} is stale: {} changed after it was built; {FIX}",
            object.display(),
            path.display()
        )),
        _ => Ok(()),
    }
}

/// Calls `f` with every file under `path` (or `path` itself) and its modification time.
fn visit_files(path: &Path, f: &mut impl FnMut(&Path, SystemTime)) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            visit_files(&entry?.path(), f)?;
        }
    } else {
        f(path, meta.modified()?);
    }
    Ok(())
}
