//! `cargo xtask bench`: builds the eBPF object, `lb-agent`, `lb-bench` and `lb-bench-client`
//! in release mode and runs the benchmarks: this project's eBPF data path (per packet, and at
//! `connect()` for pods) against kube-proxy-style iptables and nftables rules and no
//! translation, with 1 to 30,000 services (see lb-tests' `bench`).
//! Results (results.md, results.json, PNG plots) go to `bench-results/` at the workspace root
//! unless `--out` says otherwise. About 20 minutes on a 2-core VM; `--quick` takes about one.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Result};
use lb_tests::{
    agent,
    bench::{options::BenchOptions, PLOT_FONT, PLOT_FONT_PACKAGE},
    netns, root,
};

use crate::{build_ebpf, setup, shell};

#[derive(clap::Args)]
pub struct Bench {
    #[command(flatten)]
    options: BenchOptions,
    /// Skip setup and builds (use the release binaries built before).
    #[arg(long)]
    no_build: bool,
}

impl Bench {
    /// Builds what the benchmarks need and runs them.
    pub fn run(mut self) -> Result<()> {
        ensure!(
            root::is_root(),
            "the benchmarks need root (network namespaces, BPF): run `cargo xtask bench` as root"
        );
        let root_dir = shell::workspace_root();
        if !self.no_build {
            setup::run()?;
            install_plot_font()?;
            build_ebpf::run()?;
            shell::run(shell::cargo(None, &root_dir).args([
                "build",
                "--release",
                "-p",
                "lb-userspace",
                "--bin",
                "lb-agent",
            ]))?;
            shell::run(shell::cargo(None, &root_dir).args([
                "build",
                "--release",
                "-p",
                "lb-tests",
                "--no-default-features",
                "--features",
                "bench",
                "--bin",
                "lb-bench",
                "--bin",
                "lb-bench-client",
            ]))?;
        }
        for name in netns::remove_stale()? {
            println!("bench: removed leftover netns {name}");
        }
        for dir in agent::remove_stale_pins() {
            println!("bench: removed leftover pins {}", dir.display());
        }
        self.options.out = output_dir(&root_dir, &self.options.out)?;
        let binary = root_dir.join("target").join("release").join("lb-bench");
        shell::run(Command::new(binary).args(self.options.to_args()))
    }
}

/// `out` made absolute: the default at the workspace root, other relative paths from the
/// current directory.
fn output_dir(root_dir: &Path, out: &Path) -> Result<PathBuf> {
    if out.is_absolute() {
        return Ok(out.to_path_buf());
    }
    if out == BenchOptions::default_out() {
        return Ok(root_dir.join(out));
    }
    Ok(std::env::current_dir()?.join(out))
}

fn install_plot_font() -> Result<()> {
    if Path::new(PLOT_FONT).is_file() {
        return Ok(());
    }
    shell::run(Command::new("apt-get").args(["install", "-y", PLOT_FONT_PACKAGE]))
}
