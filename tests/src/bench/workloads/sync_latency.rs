//! Workload 5: Kubernetes-mode sync latency: the time from an EndpointSlice change in the API
//! server to the agent's services map showing it, and to traffic following it, with N
//! Services of 10 distinct endpoints each in the cluster; the agent's resident memory once it
//! has programmed them; the cost of scraping its metrics with conntrack full.
//!
//! The real `lb-agent` watches the in-memory API server from the node namespace (the same
//! [`KubeCluster`] the end-to-end tests use), with its map capacities raised to fit.
//! - Map: each change alternates the slice of one Service between two and three ready
//!   endpoints; the clock starts right before the API server accepts the change and stops
//!   when the pinned services map shows the new backend count, read in a tight loop of single
//!   lookups (a few microseconds, far below what is measured).
//! - Traffic: a probe Service is flipped between two endpoints (backend pods whose UDP echo
//!   answers with their name); after each change the client pod sends fresh UDP flows (a new
//!   socket on a source port not used before in the run, so no conntrack entry applies) to
//!   the Service, each waiting at most [`PROBE_TIMEOUT`] for its answer, until the new
//!   endpoint answers: the clock stops at that answer, as a user trying the Service would see.
//! - Scrape: after the changes, [`scrape_cost`] with the conntrack map filled to capacity.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
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
        error::{io_context, BenchError, Result},
        interrupt,
        options::Plan,
        workloads::{
            agent_memory::{child_named, map_memlock_kib, vm_rss_kib},
            scrape_cost::{self, ScrapeCost},
        },
    },
    cluster::{
        kube::{web_ports, AgentWait, KubeCluster, NAMESPACE, NODE_NAME},
        Protocol,
    },
    topology::backend_name,
};

/// The Service whose slice changes (map latency).
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// The probe Service flipped between two endpoints (traffic latency), its UDP port.
const PROBE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 53);
/// How long a probe waits for its answer before the next probe is sent.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(10);
/// Source ports of the probes, used in turn (so the run's flows are all fresh).
const PROBE_PORTS: std::ops::RangeInclusive<u16> = 20_000..=60_000;
/// How long one change may take to show before the run is declared failed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to program every Service at start.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause between changes, so each one is measured on its own rather than batched.
pub const SETTLE: Duration = Duration::from_millis(20);
/// Endpoints of every other Service, each a distinct address and port.
pub const FILLER_ENDPOINTS: u32 = 10;

/// The latencies measured with `services` Services in the cluster, the agent's memory and
/// its scrape cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncCell {
    pub services: u32,
    /// Each change's latency to the services map, in milliseconds.
    pub latency_ms: Vec<f64>,
    /// Each change's latency to the first answer from the new endpoint, in milliseconds.
    pub traffic_ms: Vec<f64>,
    /// The agent's VmRSS once every Service was programmed, in MiB.
    pub rss_mib: f64,
    /// The kernel memory of the maps it holds (their `memlock`) at that moment, in MiB.
    pub map_mib: f64,
    /// `GET /metrics` with conntrack full, after the changes.
    pub scrape: ScrapeCost,
}

/// One cell per size: `plan.sync_changes` EndpointSlice changes of each kind and
/// `plan.scrapes` scrapes with that many Services.
pub fn run(plan: &Plan) -> Result<Vec<SyncCell>> {
    plan.sizes.iter().map(|&n| run_size(plan, n)).collect()
}

fn run_size(plan: &Plan, services: u32) -> Result<SyncCell> {
    let changes = plan.sync_changes as usize;
    crate::bench::progress(&format!(
        "sync latency, {changes} EndpointSlice changes to the map and {changes} to traffic \
         with {services} services"
    ));
    // N Services in all: the changed one, the probe and the fillers.
    let fillers = services.saturating_sub(2);
    let mut cluster = KubeCluster::start_with(3, AgentWait::Serving, |api, options| {
        let room = |entries: u32| (entries + 64).to_string();
        options.extra_args.extend([
            "--max-service-entries".into(),
            room(4 * services),
            "--max-backends".into(),
            room(FILLER_ENDPOINTS * services + 3),
            "--max-backend-slots".into(),
            room(FILLER_ENDPOINTS * services + 6),
            // The scrape is measured alone: the filled conntrack entries are never
            // refreshed, so a garbage collection walk would delete them meanwhile.
            "--conntrack-gc-interval".into(),
            "1h".into(),
        ]);
        create_fillers(api, fillers)
    })?;
    let api = cluster.api();
    api.create(&objects::service(NAMESPACE, "web", VIP, web_ports()))?;
    api.create(&cluster.web_slice("web", &[0, 1, 2]))?;
    api.create(&objects::service(
        NAMESPACE,
        "probe",
        *PROBE.ip(),
        web_ports(),
    ))?;
    api.create(&cluster.web_slice("probe", &[0]))?;
    let maps_dir = cluster.agent().options().bpffs_dir.join("maps");
    let maps = DatapathMaps::from_pins(&maps_dir)?;
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

    let client = cluster.client();
    let mut probes = Probes {
        source: client.addr,
        next_port: *PROBE_PORTS.start(),
    };
    let first = backend_name(0);
    client
        .netns
        .run(|| probes.until_answered_by(&first, Instant::now()))?
        .map_err(io_context("probing the probe Service before the changes"))?;
    let mut traffic_ms = Vec::with_capacity(changes);
    for i in 0..changes {
        interrupt::check()?;
        let to = if i % 2 == 0 { 1 } else { 0 };
        let slice = cluster.web_slice("probe", &[to]);
        let expected = backend_name(to);
        let started = Instant::now();
        cluster.api().replace(&slice)?;
        client
            .netns
            .run(|| probes.until_answered_by(&expected, started))?
            .map_err(io_context(format!("probing {PROBE} after change {i}")))?;
        traffic_ms.push(started.elapsed().as_secs_f64() * 1e3);
        thread::sleep(SETTLE);
    }

    crate::bench::progress(&format!(
        "scrape cost with conntrack full and {services} services"
    ));
    let scrape = scrape_cost::measure(
        cluster.topology().node(),
        &maps_dir,
        agent,
        SocketAddrV4::new(VIP, 80),
        plan.scrapes,
    )?;
    Ok(SyncCell {
        services,
        latency_ms,
        traffic_ms,
        rss_mib,
        map_mib,
        scrape,
    })
}

/// Fresh UDP flows from the client pod to [`PROBE`].
struct Probes {
    source: Ipv4Addr,
    next_port: u16,
}

impl Probes {
    /// Sends probes, one fresh flow each, until one is answered by the pod `expected`; an
    /// error after [`CHANGE_TIMEOUT`] from `started`. Run inside the client's namespace.
    fn until_answered_by(&mut self, expected: &str, started: Instant) -> io::Result<()> {
        let mut buf = [0u8; 64];
        loop {
            if let Some(from) = self.probe(&mut buf)? {
                if from == expected.as_bytes() {
                    return Ok(());
                }
            }
            if started.elapsed() > CHANGE_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{expected} did not answer within {CHANGE_TIMEOUT:?}"),
                ));
            }
        }
    }

    /// One probe from the next source port: the answer, or `None` when none came within
    /// [`PROBE_TIMEOUT`] (or the port was taken).
    fn probe<'b>(&mut self, buf: &'b mut [u8]) -> io::Result<Option<&'b [u8]>> {
        let port = self.next_port;
        self.next_port = match port {
            p if p >= *PROBE_PORTS.end() => *PROBE_PORTS.start(),
            p => p + 1,
        };
        let socket = match UdpSocket::bind((self.source, port)) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Ok(None),
            bound => bound?,
        };
        socket.set_read_timeout(Some(PROBE_TIMEOUT))?;
        socket.send_to(b"probe", PROBE)?;
        match socket.recv_from(buf) {
            Ok((len, _)) => Ok(Some(&buf[..len])),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
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
