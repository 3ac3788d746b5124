//! Workloads 1 and 2, live traffic: a client pod talks to the target service through each
//! variant, on a node namespace routing between pod namespaces over veth pairs.
//!
//! Per (variant, N) a fresh topology is built, N services (3 endpoints each; the target's are
//! the three backend pods) are programmed, and each run measures, one after the other: the
//! new-connection loop, stream throughput on one connection, and request/response on one
//! kept-open connection, each for one window, each in a new client process of the client pod
//! (in the cgroup with the socket programs for (e)).
//!
//! For (a) and (e), each cell ends with one more window of each workload with the kernel's
//! run-time statistics on ([`crate::bench::program_stats`]): the TC ingress program's time
//! per run under that traffic, and for (e) the `connect4` socket program's. The measured windows run with them off: the statistics add two
//! clock reads to every program run.

use std::net::SocketAddrV4;

use crate::{
    bench::{
        client::{Client, ConnectionRun, Workload},
        error::{io_context, BenchError, Result},
        interrupt,
        options::Plan,
        program_stats::AgentPrograms,
        results::{TrafficCell, WorkloadCosts},
        server::BenchServer,
        services::{ServiceSet, TARGET_PORT},
        variants::{self, Programmed, Variant},
    },
    topology::{Topology, CLIENT},
};

/// Which traffic workloads to run.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    pub connections: bool,
    pub established: bool,
}

impl Traffic {
    /// The client workloads selected, in report order.
    fn workloads(self) -> Vec<Workload> {
        let mut workloads = Vec::new();
        if self.connections {
            workloads.push(Workload::Connections);
        }
        if self.established {
            workloads.extend([Workload::Stream, Workload::RequestResponse]);
        }
        workloads
    }
}

/// Connections a cell makes before measuring, which must all succeed.
const WARM_UP: u32 = 5;

/// Runs the selected traffic workloads for `variant` with `services` services.
pub fn run_cell(
    plan: &Plan,
    traffic: Traffic,
    variant: Variant,
    services: u32,
) -> Result<TrafficCell> {
    // Declaration order is the reverse of drop order: the data path goes first, then the
    // servers, then the namespaces.
    let topology = Topology::client_and_backends(plan.endpoints as usize)?;
    let client_ns = &topology.pod(CLIENT).netns;
    // Many short connections: reuse TIME_WAIT ports and use the whole port range.
    client_ns.set_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    client_ns.set_sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    let backends: Vec<SocketAddrV4> = topology.pods()[1..]
        .iter()
        .map(|pod| SocketAddrV4::new(pod.addr, TARGET_PORT))
        .collect();
    let servers = topology.pods()[1..]
        .iter()
        .zip(&backends)
        .map(|(pod, addr)| BenchServer::start(&pod.netns, *addr))
        .collect::<Result<Vec<_>>>()?;
    let set = ServiceSet::new(services, plan.endpoints).with_target(backends.clone());
    let mut programmed = variants::program(
        variant,
        &topology,
        &set,
        plan.endpoints,
        plan.nft_services_per_transaction,
    )?;
    let target = match variant {
        Variant::Direct => backends[0],
        _ => set.target_vip(),
    };
    let cgroup = programmed.client_cgroup().map(|c| c.path().to_path_buf());
    let client = Client::new(client_ns, cgroup.as_deref())?;
    let (window, max) = (plan.window, plan.max_operations);

    let warm_up = client.run(Workload::Connections, target, window * 5, WARM_UP)?;
    check_warm_up(
        &warm_up.map_err(io_context("warm-up"))?,
        variant,
        services,
        target,
    )?;
    check_path(&mut programmed, variant)?;

    let mut cell = TrafficCell {
        variant,
        services,
        target,
        connections: Vec::new(),
        stream: Vec::new(),
        request_response: Vec::new(),
        programs: Vec::new(),
        backend_connections: 0,
    };
    let context = |what: &str| format!("{} N={services}: {what} to {target}", variant.label());
    for _ in 0..plan.runs {
        interrupt::check()?;
        if traffic.connections {
            let run = client.run(Workload::Connections, target, window, max)?;
            cell.connections
                .push(run.map_err(io_context(context("connections")))?);
        }
        if traffic.established {
            let stream = client.run(Workload::Stream, target, window, max)?;
            cell.stream
                .push(stream.map_err(io_context(context("stream")))?);
            let rr = client.run(Workload::RequestResponse, target, window, max)?;
            cell.request_response
                .push(rr.map_err(io_context(context("requests")))?);
        }
    }
    if let Some(datapath) = programmed.datapath() {
        let sockets = programmed.client_cgroup().is_some();
        let programs = AgentPrograms::in_process(datapath, sockets)?;
        for workload in traffic.workloads() {
            interrupt::check()?;
            let run_window = || {
                client
                    .run::<serde_json::Value>(workload, target, window, max)?
                    .map(|_| ())
                    .map_err(io_context(context("a window with run-time statistics")))
            };
            let ((), costs) = programs.measure(run_window)?;
            cell.programs.push(WorkloadCosts { workload, costs });
        }
    }
    cell.backend_connections = servers.iter().map(BenchServer::connections).sum();
    Ok(cell)
}

/// The warm-up must reach the target through the variant: every connection completes and the
/// client sees the address it connected to.
fn check_warm_up(
    run: &ConnectionRun,
    variant: Variant,
    services: u32,
    target: SocketAddrV4,
) -> Result<()> {
    let reached = run.peer == Some(target.into());
    if run.failed > 0 || run.completed < u64::from(WARM_UP) || !reached {
        return Err(BenchError::Check(format!(
            "{} with {services} services: {} of {WARM_UP} warm-up connections to {target} \
             completed (peer {:?}; first error: {})",
            variant.label(),
            run.completed,
            run.peer,
            run.error.as_deref().unwrap_or("none"),
        )));
    }
    Ok(())
}

/// The eBPF variants must take their own path: (a) translates the warm-up per packet and
/// tracks it in conntrack, (e) connects its sockets to a backend so the TC program tracks
/// nothing.
fn check_path(programmed: &mut Programmed, variant: Variant) -> Result<()> {
    let Some(tracked) = programmed.conntrack_entries()? else {
        return Ok(());
    };
    let per_socket = variant == Variant::EbpfSocket;
    if (tracked == 0) != per_socket {
        return Err(BenchError::Check(format!(
            "{}: {tracked} conntrack entries after the warm-up",
            variant.label()
        )));
    }
    Ok(())
}
