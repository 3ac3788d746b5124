//! `cargo xtask demo`: the example Services end to end. Builds what it needs, creates a node
//! namespace with a client pod and three backend pods (dual-stack) running real TCP and UDP
//! servers on both families, runs the real `lb-agent` there on `manifests/examples`, sends
//! requests from the client to the IPv4 ClusterIP and to the IPv6 one, shows which pod
//! answered how often and what `lb-agent inspect` reports, and tears everything down, also on
//! failure or Ctrl-C.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use lb_tests::{
    cluster::{Cluster, Protocol},
    example, root,
    servers::Reply,
};

use crate::{build_ebpf, setup, shell};

/// Set by SIGINT/SIGTERM; the demo then stops sending and tears down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Requests are sent in batches so Ctrl-C is noticed quickly.
const BATCH: usize = 25;
/// With this many requests, every backend must have answered at least once (a backend missing
/// by chance has probability (2/3)^30, about 5e-6).
const ENOUGH_FOR_EVERY_BACKEND: usize = 30;
/// Conntrack rows shown from `lb-agent inspect` (it has two per request).
const CONNTRACK_ROWS: usize = 12;

#[derive(clap::Args)]
pub struct Demo {
    /// Requests per protocol (bounded to 10000).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u16).range(1..=10000))]
    requests: u16,
    /// Skip setup and builds (use what was built before).
    #[arg(long)]
    no_build: bool,
}

impl Demo {
    /// Runs the demo.
    pub fn run(self) -> Result<()> {
        ensure!(
            root::is_root(),
            "the demo needs root (network namespaces, BPF): run `cargo xtask demo` as root"
        );
        if !self.no_build {
            setup::run()?;
            build_ebpf::run()?;
            let root_dir = shell::workspace_root();
            shell::run(shell::cargo(None, &root_dir).args(["build", "-p", "lb-userspace"]))?;
        }
        catch_interrupts();
        println!(
            "==> creating the node, a client pod and {} backend pods (IPv4 and IPv6)",
            example::BACKENDS
        );
        let manifests = example::manifests_dir();
        println!("==> starting lb-agent on {}", manifests.display());
        let cluster =
            Cluster::start_dual_stack(&manifests, "info").context("starting the demo failed")?;
        print!("{}", indent(&cluster.agent().log()));
        let result = self.exercise(&cluster);
        println!("==> tearing down (agent, servers, namespaces)");
        drop(cluster);
        result
    }

    fn exercise(&self, cluster: &Cluster) -> Result<()> {
        let mut tables = Vec::new();
        for (protocol, vip) in [
            (Protocol::Tcp, example::tcp_vip().into()),
            (Protocol::Udp, example::udp_vip().into()),
            (Protocol::Tcp, example::vip6(example::TCP_PORT).into()),
            (Protocol::Udp, example::vip6(example::UDP_PORT).into()),
        ] {
            if INTERRUPTED.load(Ordering::Relaxed) {
                break;
            }
            println!(
                "==> {} {protocol} requests from the client pod to {vip}",
                self.requests
            );
            let replies = send(cluster, vip, protocol, usize::from(self.requests))?;
            tables.push((protocol, vip, replies));
        }
        println!("\nanswers per pod:");
        let mut ok = true;
        for (protocol, vip, replies) in &tables {
            ok &= print_tally(*protocol, *vip, replies);
        }
        println!("\n==> lb-agent inspect (conntrack cut at {CONNTRACK_ROWS} rows)");
        let inspect = cluster.agent().inspect()?;
        println!("{}", cut_table(&inspect, "CONNTRACK", CONNTRACK_ROWS));
        let services = cluster.agent().options().bpffs_dir.join("maps/LB_SERVICES");
        let mut bpftool = std::process::Command::new("bpftool");
        bpftool.args(["map", "dump", "pinned"]).arg(&services);
        println!("==> bpftool map dump pinned {}", services.display());
        println!("{}", shell::output(&mut bpftool)?);
        ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
        ensure!(
            ok,
            "some requests failed or some backend never answered (see above)"
        );
        Ok(())
    }
}

/// Sends up to `count` requests in batches, stopping early when interrupted.
fn send(
    cluster: &Cluster,
    vip: SocketAddr,
    protocol: Protocol,
    count: usize,
) -> Result<Vec<std::io::Result<Reply>>> {
    let mut replies = Vec::with_capacity(count);
    while replies.len() < count && !INTERRUPTED.load(Ordering::Relaxed) {
        let batch = BATCH.min(count - replies.len());
        replies.extend(cluster.requests_to(vip, protocol, batch, Duration::from_secs(1))?);
    }
    Ok(replies)
}

/// Prints answers per pod; returns whether every request was answered from the VIP and every
/// backend answered.
fn print_tally(protocol: Protocol, vip: SocketAddr, replies: &[std::io::Result<Reply>]) -> bool {
    let mut per_pod = BTreeMap::new();
    let (mut failed, mut wrong_source) = (0, 0);
    for reply in replies {
        match reply {
            Ok(reply) => {
                *per_pod.entry(reply.from.as_str()).or_insert(0) += 1;
                wrong_source += usize::from(reply.peer != vip);
            }
            Err(_) => failed += 1,
        }
    }
    println!("  {protocol} to {vip}:");
    for (pod, count) in &per_pod {
        println!(
            "    {pod:<10} {count:>5}  {}",
            "#".repeat(count * 40 / replies.len())
        );
    }
    if failed > 0 {
        println!("    FAILED     {failed:>5}");
    }
    if wrong_source > 0 {
        println!("    {wrong_source} replies did not come from {vip}");
    }
    let every_backend =
        per_pod.len() == example::BACKENDS || replies.len() < ENOUGH_FOR_EVERY_BACKEND;
    failed == 0 && wrong_source == 0 && every_backend
}

/// Indents every line of `text` by two spaces.
fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// Cuts the blank-line separated table titled `title` in `text` to its title, its header and
/// `rows` rows.
fn cut_table(text: &str, title: &str, rows: usize) -> String {
    let mut out = String::new();
    for table in text.split("\n\n") {
        let lines: Vec<&str> = table.lines().collect();
        let keep = if lines.first() == Some(&title) {
            lines.len().min(rows + 2)
        } else {
            lines.len()
        };
        for line in &lines[..keep] {
            out.push_str(line);
            out.push('\n');
        }
        if lines.len() > keep {
            out.push_str(&format!("... {} more rows\n", lines.len() - keep));
        }
        out.push('\n');
    }
    out.trim_end().to_string()
}

/// Makes SIGINT and SIGTERM set [`INTERRUPTED`] instead of killing the process, so the
/// namespaces and the agent are always cleaned up.
fn catch_interrupts() {
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::Relaxed);
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}
