//! Project tasks, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).

mod bench;
mod build_ebpf;
mod demo;
mod kind_e2e;
mod setup;
mod shell;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tasks for the eBPF service load balancer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, nightly rust-src and clippy,
    /// bpf-linker).
    Setup,
    /// Build the eBPF object (lb-ebpf) with nightly for bpfel-unknown-none.
    BuildEbpf,
    /// Format check, lints, build and every test (root-only tests skip loudly when not root).
    Test,
    /// Run the agent in a network namespace with real pods and show where requests go.
    Demo(demo::Demo),
    /// Benchmark the eBPF data path against kube-proxy-style iptables and nftables rules.
    Bench(bench::Bench),
    /// lb-agent in a kind cluster without kube-proxy (needs Docker, kind and kubectl).
    KindE2e(kind_e2e::KindE2e),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => build_ebpf::run().map(|object| println!("{}", object.display())),
        Task::Test => test::run(),
        Task::Demo(demo) => demo.run(),
        Task::Bench(bench) => bench.run(),
        Task::KindE2e(e2e) => e2e.run(),
    }
}
