//! `cargo xtask setup`: installs what a fresh Debian machine lacks to build and test, and
//! nothing else. Idempotent: each step checks first and only acts when something is missing.
//! It mounts nothing and changes no network configuration.
//!
//! bpf-linker is built against the nightly toolchain's own libLLVM, so the LLVM that links the
//! eBPF object is the one rustc emitted bitcode for. Its build links `-lLLVM` from
//! `$LLVM_PREFIX/lib` and records that directory as the binary's RUNPATH, so the prefix (two
//! symlinks into the nightly sysroot) lives next to the binary, in `$CARGO_HOME`, where it
//! outlives `target/`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::shell;

/// Debian packages: what the tests, the demo and the README use (ethtool turns checksum
/// offload off where test traffic crosses XDP; podman with runc runs the agent's image as the
/// DaemonSet declares it in the "as deployed" test), and a C toolchain for building bpf-linker.
const PACKAGES: &[&str] = &[
    "bpftool",
    "ethtool",
    "iproute2",
    "iptables",
    "nftables",
    "podman",
    "runc",
    "build-essential",
];
/// bpf-linker release built by setup (its features name the LLVM majors it supports).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs every setup step.
pub fn run() -> Result<()> {
    debian_packages()?;
    rust_components()?;
    bpf_linker()?;
    println!("setup: everything is installed");
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present ({})", PACKAGES.join(", "));
        return Ok(());
    }
    let install = format!("apt-get install -y {}", missing.join(" "));
    ensure!(
        lb_tests::root::is_root(),
        "missing Debian packages {missing:?} and not root: run `cargo xtask setup` as root, or \
         install them yourself (`apt-get update && {install}`)"
    );
    shell::run(Command::new("apt-get").arg("update"))
        .context("apt-get update failed: check network access to the Debian mirrors")?;
    shell::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
    .with_context(|| format!("installing {missing:?} failed"))?;
    Ok(())
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
}

fn rust_components() -> Result<()> {
    if !shell::succeeds("rustc", &["+nightly", "-V"]) {
        println!("setup: nightly toolchain missing, installing it");
        shell::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("installing the nightly toolchain failed: check network access to rustup")?;
    }
    let installed = shell::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    for (component, why) in [
        ("rust-src", "-Z build-std=core"),
        ("clippy", "linting lb-ebpf for the BPF target"),
    ] {
        if installed.lines().any(|l| l.starts_with(component)) {
            println!("setup: nightly {component} present");
        } else {
            shell::run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))
            .with_context(|| format!("adding {component} to nightly failed (needed for {why})"))?;
        }
    }
    for (component, probe) in [("clippy", "clippy"), ("rustfmt", "fmt")] {
        if shell::succeeds("cargo", &[probe, "--version"]) {
            println!("setup: {component} present");
        } else {
            shell::run(Command::new("rustup").args(["component", "add", component]))
                .with_context(|| format!("adding {component} to the default toolchain failed"))?;
            ensure!(
                shell::succeeds("cargo", &[probe, "--version"]),
                "{component} is installed but `cargo {probe}` does not run: is rustup's \
                 cargo-{probe} proxy on PATH (usually $CARGO_HOME/bin)?"
            );
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = shell::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = llvm_major(&version).with_context(|| {
        format!("no \"LLVM version: N...\" line in `rustc +nightly -vV`:\n{version}")
    })?;
    let cargo_home = cargo_home()?;
    if shell::succeeds("bpf-linker", &["--version"]) {
        match installed_llvm_features(&cargo_home) {
            Some(features) if features.contains(&format!("llvm-{major}")) => {
                println!("setup: bpf-linker present, built for LLVM {major}");
                return Ok(());
            }
            Some(features) => println!(
                "setup: bpf-linker was built with features {features:?}, not llvm-{major} \
                 (nightly's LLVM): rebuilding it"
            ),
            None => {
                println!(
                    "setup: bpf-linker present but not installed by cargo, so its LLVM version is \
                     unknown; keeping it (if eBPF links fail, remove it and rerun setup)"
                );
                return Ok(());
            }
        }
    } else {
        println!(
            "setup: bpf-linker missing or not loadable: building it against nightly's libLLVM"
        );
    }
    let prefix = llvm_prefix(&cargo_home)?;
    shell::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .args(["install", "bpf-linker", "--locked", "--force", "--version"])
            .arg(BPF_LINKER_VERSION)
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}")),
    )
    .context(
        "building bpf-linker failed (needs build-essential and network access to crates.io)",
    )?;
    ensure!(
        shell::succeeds("bpf-linker", &["--version"]),
        "bpf-linker was installed but does not run: is {} on PATH?",
        cargo_home.join("bin").display()
    );
    Ok(())
}

/// The LLVM major from `rustc -vV` output ("LLVM version: 22.1.4" -> 22).
fn llvm_major(rustc_version: &str) -> Option<u32> {
    rustc_version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// Features bpf-linker was installed with, from cargo's install record, if cargo installed it.
fn installed_llvm_features(cargo_home: &Path) -> Option<Vec<String>> {
    let record = fs::read_to_string(cargo_home.join(".crates2.json")).ok()?;
    let record: serde_json::Value = serde_json::from_str(&record).ok()?;
    let (_, install) = record
        .get("installs")?
        .as_object()?
        .iter()
        .find(|(package, _)| package.starts_with("bpf-linker "))?;
    Some(
        install
            .get("features")?
            .as_array()?
            .iter()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect(),
    )
}

/// Makes `<cargo home>/bpf-linker-llvm/lib` hold `libLLVM.so` and the soname file, both
/// symlinks to the nightly sysroot's libLLVM, and returns the prefix.
fn llvm_prefix(cargo_home: &Path) -> Result<PathBuf> {
    let sysroot = shell::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let shared: Vec<PathBuf> = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("cannot list {}", sysroot_lib.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .collect();
    let [library] = shared.as_slice() else {
        bail!(
            "expected one libLLVM.so.* in {}, found {shared:?}: nightly must ship its LLVM as a \
             shared library",
            sysroot_lib.display()
        );
    };
    let prefix = cargo_home.join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let soname = library.file_name().expect("listed files have names");
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(library, &link)
            .with_context(|| format!("cannot create symlink {}", link.display()))?;
    }
    println!(
        "setup: LLVM_PREFIX {} -> {}",
        prefix.display(),
        library.display()
    );
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_is_read_from_rustc_version_output() {
        let output =
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\n\
                      release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(output), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn llvm_features_come_from_cargos_install_record() {
        let home = std::env::temp_dir().join(format!("xtask-setup-{}", std::process::id()));
        fs::create_dir_all(&home).unwrap();
        assert_eq!(installed_llvm_features(&home), None);
        fs::write(
            home.join(".crates2.json"),
            r#"{"installs":{"bpf-linker 0.13.0 (registry+https://github.com/rust-lang/crates.io-index)":
               {"features":["llvm-22"],"no_default_features":true}}}"#,
        )
        .unwrap();
        let features = installed_llvm_features(&home);
        fs::remove_dir_all(&home).unwrap();
        assert_eq!(features, Some(vec!["llvm-22".to_string()]));
    }
}
