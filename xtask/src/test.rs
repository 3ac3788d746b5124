//! `cargo xtask test`: everything CI checks, cheapest first, stopping at the first failure.

use anyhow::Result;
use lb_tests::{agent, cgroup, netns, root};

use crate::{build_ebpf, setup, shell};

/// Runs setup, format checks, the eBPF build, the workspace build (the e2e tests run the
/// lb-agent binary), clippy (root workspace, and lb-ebpf for the BPF target and the host), and
/// all tests including lb-ebpf's host unit tests.
pub fn run() -> Result<()> {
    setup::run()?;
    let root_dir = shell::workspace_root();
    let ebpf_dir = root_dir.join("lb-ebpf");
    if root::is_root() {
        remove_leftovers()?;
    }
    shell::run(shell::cargo(None, &root_dir).args(["fmt", "--all", "--check"]))?;
    shell::run(shell::cargo(None, &ebpf_dir).args(["fmt", "--check"]))?;
    build_ebpf::run()?;
    shell::run(shell::cargo(None, &root_dir).args(["build", "--workspace"]))?;
    shell::run(shell::cargo(None, &root_dir).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // lb-ebpf is outside the root workspace: lint it as it is built (nightly, the BPF target,
    // core built from source) and as its host unit tests are built.
    shell::run(shell::cargo(Some("nightly"), &ebpf_dir).args([
        "clippy",
        "--release",
        "-Z",
        "build-std=core",
        "--target",
        build_ebpf::TARGET,
        "--",
        "-D",
        "warnings",
    ]))?;
    shell::run(shell::cargo(None, &ebpf_dir).args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    shell::run(shell::cargo(None, &root_dir).args(["test", "--workspace"]))?;
    shell::run(shell::cargo(None, &ebpf_dir).arg("test"))?;
    if root::is_root() {
        println!("xtask test: all checks and tests passed");
    } else {
        let line = "!".repeat(78);
        println!(
            "{line}\n!!! Checks passed, but NOT as root: every test that needs network namespaces \
             or BPF\n!!! was SKIPPED (see the SKIPPED banners above). Run as root for the full \
             suite.\n{line}"
        );
    }
    Ok(())
}

/// Removes namespaces, bpffs pins and test cgroups of earlier test runs that were killed before cleaning up.
fn remove_leftovers() -> Result<()> {
    for name in netns::remove_stale()? {
        println!("xtask test: removed leftover netns {name}");
    }
    for dir in agent::remove_stale_pins() {
        println!("xtask test: removed leftover pins {}", dir.display());
    }
    for dir in cgroup::remove_stale() {
        println!("xtask test: removed leftover cgroup {}", dir.display());
    }
    Ok(())
}
