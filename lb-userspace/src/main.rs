//! `lb-agent`: the node agent of the eBPF service load balancer.

use std::io::{ErrorKind, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use lb_userspace::agent::{self, RunConfig, DEFAULT_BPFFS_DIR};
use lb_userspace::inspect::Snapshot;
use lb_userspace::{Capacities, Maps};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "eBPF Kubernetes service load balancer agent"
)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the data path and program the services found in a manifests directory.
    Run(RunArgs),
    /// Print the pinned maps of a running agent as tables.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Directory of Service and EndpointSlice YAML files, re-read every 200 ms.
    #[arg(long)]
    manifests: PathBuf,
    /// Interface to attach the TC ingress program to (repeatable; required in file mode).
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    /// Interface to attach the XDP program to.
    #[arg(long)]
    xdp_iface: Option<String>,
    /// bpffs directory; maps are pinned under <DIR>/maps/.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    /// bpffs directory of the agent to inspect.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("invalid --log-level {:?}", cli.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Inspect(args) => inspect(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.ifaces.is_empty() {
        bail!(
            "--iface is required in file mode: name the pod-facing interfaces whose TC ingress \
             gets the load balancer (automatic attachment comes later)"
        );
    }
    let config = RunConfig {
        manifests: args.manifests,
        tc_ifaces: args.ifaces,
        xdp_iface: args.xdp_iface,
        bpffs_dir: args.bpffs_dir,
        capacities: Capacities::default(),
        poll_interval: Duration::from_millis(200),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Registered before anything is loaded, so an early signal still exits cleanly.
        let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => info!("received SIGINT"),
                _ = terminate.recv() => info!("received SIGTERM"),
            }
        };
        agent::run(config, shutdown)
            .await
            .context("lb-agent run failed")
    })
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let maps = Maps::from_pins(&agent::maps_dir(&args.bpffs_dir))?;
    let tables = Snapshot::read(&maps)?.to_string();
    match std::io::stdout().write_all(tables.as_bytes()) {
        // Piped into `head` and friends: the reader has all it wanted.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}
