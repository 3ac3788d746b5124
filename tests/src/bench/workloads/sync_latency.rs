//! Workload 5: Kubernetes-mode sync latency: the time from an EndpointSlice change in the API
//! server to the agent's services map showing it, with N Services of 10 distinct endpoints
//! each in the cluster, and the agent's resident memory once it has programmed them.
//!
//! The real `lb-agent` watches the in-memory API server from the node namespace (the same
//! [`KubeCluster`] the end-to-end tests use), with its map capacities raised to fit. Each
//! change alternates the slice of one Service between two and three ready endpoints; the
//! clock starts right before the API server accepts the change and stops when the pinned
//! services map shows the new backend count, read in a tight loop of single lookups (a few
//! microseconds, far below what is measured).

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use lb_common::{ipv4_mapped, service::scope, ServiceKey, IPPROTO_TCP};
use lb_userspace::DatapathMaps;
use serde::Serialize;

use crate::{
    agent::READY_MARKER,
    apiserver::{objects, ApiError, ApiServer},
    bench::{
        error::{BenchError, Result},
        interrupt,
        workloads::agent_memory::{child_named, map_memlock_kib, vm_rss_kib},
    },
    cluster::{
        kube::{web_ports, AgentWait, KubeCluster, NAMESPACE, NODE_NAME},
        Protocol,
    },
};

/// The Service whose slice changes.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// How long one change may take to show before the run is declared failed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to program every Service at start.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause between changes, so each one is measured on its own rather than batched.
pub const SETTLE: Duration = Duration::from_millis(20);
/// Endpoints of every other Service, each a distinct address and port.
pub const FILLER_ENDPOINTS: u32 = 10;

/// The latencies measured with `services` Services in the cluster, and the agent's memory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncCell {
    pub services: u32,
    /// Each change's latency, in milliseconds.
    pub latency_ms: Vec<f64>,
    /// The agent's VmRSS once every Service was programmed, in MiB.
    pub rss_mib: f64,
    /// The kernel memory of the maps it holds (their `memlock`) at that moment, in MiB.
    pub map_mib: f64,
}

/// One cell per size: `changes` EndpointSlice changes with that many Services.
pub fn run(changes: usize, sizes: &[u32]) -> Result<Vec<SyncCell>> {
    sizes.iter().map(|&n| run_size(changes, n)).collect()
}

fn run_size(changes: usize, services: u32) -> Result<SyncCell> {
    crate::bench::progress(&format!(
        "sync latency, {changes} EndpointSlice changes with {services} services"
    ));
    let fillers = services.saturating_sub(1);
    let mut cluster = KubeCluster::start_with(3, AgentWait::Serving, |api, options| {
        let room = |entries: u32| (entries + 64).to_string();
        options.extra_args.extend([
            "--max-service-entries".into(),
            room(4 * services),
            "--max-backends".into(),
            room(FILLER_ENDPOINTS * services + 3),
            "--max-backend-slots".into(),
            room(FILLER_ENDPOINTS * services + 6),
        ]);
        create_fillers(api, fillers)
    })?;
    let api = cluster.api();
    api.create(&objects::service(NAMESPACE, "web", VIP, web_ports()))?;
    api.create(&cluster.web_slice("web", &[0, 1, 2]))?;
    let maps = DatapathMaps::from_pins(&cluster.agent().options().bpffs_dir.join("maps"))?;
    let key = ServiceKey::new(ipv4_mapped(VIP.octets()), 80, IPPROTO_TCP, scope::INTERNAL);
    cluster
        .agent_mut()
        .wait_for_log(READY_MARKER, 1, SYNC_TIMEOUT)?;
    wait_for_count(&maps, &key, 3, Instant::now(), SYNC_TIMEOUT)?;
    let agent = child_named("lb-agent")?;
    let rss_mib = vm_rss_kib(agent)? as f64 / 1024.0;
    let map_mib = map_memlock_kib(agent)? as f64 / 1024.0;

    let mut latency_ms = Vec::with_capacity(changes);
    for i in 0..changes {
        interrupt::check()?;
        let backends: &[usize] = if i % 2 == 0 { &[0, 1] } else { &[0, 1, 2] };
        let slice = cluster.web_slice("web", backends);
        let started = Instant::now();
        cluster.api().replace(&slice)?;
        wait_for_count(&maps, &key, backends.len() as u32, started, CHANGE_TIMEOUT)?;
        latency_ms.push(started.elapsed().as_secs_f64() * 1e3);
        thread::sleep(SETTLE);
    }
    Ok(SyncCell {
        services,
        latency_ms,
        rss_mib,
        map_mib,
    })
}

/// `count` ClusterIP Services (198.19.128.0 upwards), each with one TCP port and a slice of
/// [`FILLER_ENDPOINTS`] ready endpoints on this node. Every endpoint is a distinct address and
/// port: addresses from 198.18.128.0/17, one port per 3,000 Services.
fn create_fillers(api: &ApiServer, count: u32) -> crate::Result<()> {
    let rejected = |e: ApiError| crate::Error::Invalid {
        what: "filler object".into(),
        reason: e.to_string(),
    };
    let base = u32::from(Ipv4Addr::new(198, 19, 128, 0));
    let pods = u32::from(Ipv4Addr::new(198, 18, 128, 0));
    for i in 0..count {
        let name = format!("filler-{i}");
        let port = 10_000 + (i / 3_000) as u16;
        let ports = vec![objects::service_port("http", Protocol::Tcp, 80, port)];
        let vip = Ipv4Addr::from(base + i);
        let service = objects::service(NAMESPACE, &name, vip, ports);
        api.create(&service).map_err(rejected)?;
        let endpoints = (0..FILLER_ENDPOINTS)
            .map(|j| {
                let addr = Ipv4Addr::from(pods + (i % 3_000) * FILLER_ENDPOINTS + j);
                objects::endpoint(addr, NODE_NAME)
            })
            .collect();
        let slice_ports = vec![objects::endpoint_port("http", Protocol::Tcp, port)];
        let slice = objects::endpoint_slice(
            NAMESPACE,
            &name,
            &format!("{name}-1"),
            slice_ports,
            endpoints,
        );
        api.create(&slice).map_err(rejected)?;
    }
    Ok(())
}

/// Spins until the services map entry of `key` has `count` backends.
fn wait_for_count(
    maps: &DatapathMaps,
    key: &ServiceKey,
    count: u32,
    started: Instant,
    timeout: Duration,
) -> Result<()> {
    loop {
        if maps.service(key)?.is_some_and(|v| v.backend_count == count) {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(BenchError::Check(format!(
                "the agent did not program {count} backends within {timeout:?}"
            )));
        }
        thread::yield_now();
    }
}
