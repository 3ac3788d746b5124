//! Workloads 1 and 2, live traffic: a client pod talks to the target service through each
//! variant, on a node namespace routing between pod namespaces over veth pairs.
//!
//! Per (variant, N) a fresh topology is built, N services (3 endpoints each; the target's are
//! the three backend pods) are programmed, and each run measures, one after the other: the
//! new-connection loop, stream throughput on one connection, and request/response on one
//! kept-open connection, each for one window.

use std::net::SocketAddrV4;

use crate::{
    bench::{
        client::{self, ConnectionRun},
        error::{io_context, BenchError, Result},
        interrupt,
        options::Plan,
        results::TrafficCell,
        server::BenchServer,
        services::{ServiceSet, TARGET_PORT},
        variants::{self, Variant},
    },
    topology::{Topology, CLIENT},
};

/// Which traffic workloads to run.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    pub connections: bool,
    pub established: bool,
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
    let _programmed = variants::program(
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

    let warm_up = client_ns.run(|| client::connection_loop(target, plan.window * 5, WARM_UP))?;
    check_warm_up(&warm_up, variant, services, target)?;

    let mut cell = TrafficCell {
        variant,
        services,
        target,
        connections: Vec::new(),
        stream: Vec::new(),
        request_response: Vec::new(),
        backend_connections: 0,
    };
    for _ in 0..plan.runs {
        interrupt::check()?;
        if traffic.connections {
            let run = client_ns
                .run(|| client::connection_loop(target, plan.window, plan.max_operations))?;
            cell.connections.push(run);
        }
        if traffic.established {
            let context = format!("{} N={services}: stream to {target}", variant.label());
            let stream = client_ns
                .run(|| client::stream(target, plan.window))?
                .map_err(io_context(context))?;
            cell.stream.push(stream);
            let context = format!("{} N={services}: requests to {target}", variant.label());
            let rr = client_ns
                .run(|| client::request_response(target, plan.window, plan.max_operations))?
                .map_err(io_context(context))?;
            cell.request_response.push(rr);
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
