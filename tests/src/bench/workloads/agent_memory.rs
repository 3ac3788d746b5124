//! Workload 4b: the real `lb-agent` programming N services from a manifests directory: its
//! resident memory (VmRSS) after its ready line, and the time from start to that line.
//!
//! The agent runs with its default capacities (it has no flag to raise them), so when N x 3
//! endpoints would exceed its backend capacity, services share endpoint sets; the distinct
//! backend count is recorded with each cell.

use std::{collections::BTreeMap, fs, time::Instant};

use lb_userspace::Capacities;

use crate::{
    agent::{Agent, AgentOptions},
    bench::{
        error::{io_context, BenchError, Result},
        interrupt,
        options::Plan,
        results::AgentCell,
        services::ServiceSet,
    },
    topology::Topology,
};

/// The interface the agent attaches to (it requires one): one end of a veth pair in the node
/// namespace (this kernel may lack the dummy link type).
const IFACE: &str = "bench0";

/// One cell per size.
pub fn run(plan: &Plan) -> Result<Vec<AgentCell>> {
    let mut cells = Vec::new();
    for &services in &plan.sizes {
        crate::bench::progress(&format!("agent memory, {services} services"));
        let room = Capacities::default().backends - 16;
        let set = ServiceSet::new(services, plan.endpoints).with_at_most_backends(room);
        let dir = tempfile::tempdir().map_err(io_context("creating a manifests directory"))?;
        let file = dir.path().join("services.yaml");
        fs::write(&file, set.manifests())
            .map_err(io_context(format!("writing {}", file.display())))?;
        let mut cell = AgentCell {
            services,
            endpoints: plan.endpoints,
            distinct_backends: set.distinct_endpoints(),
            rss_mib: Vec::new(),
            ready_s: Vec::new(),
        };
        let started = Instant::now();
        for _ in 0..plan.runs {
            interrupt::check()?;
            let (rss_mib, ready_s) = measure_once(dir.path(), services)?;
            cell.rss_mib.push(rss_mib);
            cell.ready_s.push(ready_s);
            if started.elapsed() >= plan.control_plane_budget {
                break;
            }
        }
        cells.push(cell);
    }
    Ok(cells)
}

/// Starts the agent on `manifests`, waits for its ready line, reads its VmRSS (MiB) and
/// returns it with the seconds from start to ready.
fn measure_once(manifests: &std::path::Path, services: u32) -> Result<(f64, f64)> {
    let topology = Topology::new(&[])?;
    let node = topology.node();
    node.ip(&[
        "link", "add", IFACE, "type", "veth", "peer", "name", "bench1",
    ])?;
    node.ip(&["link", "set", IFACE, "up"])?;
    let options = AgentOptions::new(topology.id(), manifests, vec![IFACE.to_string()]);
    let started = Instant::now();
    let agent = Agent::start(node, options)?;
    let ready = started.elapsed().as_secs_f64();
    let expected = format!("ready: programmed {services} services");
    if !agent.log().contains(&expected) {
        return Err(BenchError::Check(format!(
            "the agent did not log {expected:?}; its log:\n{}",
            agent.log()
        )));
    }
    let pid = child_named("lb-agent")?;
    let rss_kib = vm_rss_kib(pid)?;
    Ok((rss_kib as f64 / 1024.0, ready))
}

/// The pid of this process's child whose command name is `name` (the one agent running).
pub fn child_named(name: &str) -> Result<u32> {
    let me = std::process::id();
    let entries = fs::read_dir("/proc").map_err(io_context("listing /proc"))?;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may contain spaces, so split at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c);
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == Some(name) && ppid == Some(me) {
            return Ok(pid);
        }
    }
    Err(BenchError::Check(format!("no child process named {name}")))
}

/// VmRSS of `pid` in KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(io_context(format!("reading {path}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::Check(format!("no VmRSS in {path}")))
}

/// Kernel memory of the BPF maps `pid` holds open, in KiB: the sum of each map's `memlock`
/// (what `bpftool map show` reports), read from the fdinfo of its map file descriptors and
/// counted once per map id. Not part of VmRSS: none of the maps is mmap'd.
pub fn map_memlock_kib(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = fs::read_dir(&dir).map_err(io_context(format!("listing {dir}")))?;
    let mut maps = BTreeMap::new();
    for entry in entries.flatten() {
        // An fd closed since the listing has no fdinfo any more: skipped.
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            maps.insert(id, bytes);
        }
    }
    Ok(maps.values().sum::<u64>() / 1024)
}
