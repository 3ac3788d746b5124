//! Workload 6, the reply path (`lb-agent run --reply-path`): an outside client's new
//! connections and request/response transactions to a NodePort of node A in the two-node
//! topology ([`crate::cluster::two_node`]), whose only endpoint is
//! - node A's pod: the replies enter node A on the pod's veth, translated to node A's address;
//! - node B's pod: masqueraded, so XDP on node A's LAN interface gives the requests node A's
//!   address and the replies the node port's.
//!
//! Those are the packets the kernel's routing drops as martians without `accept_local`. Node A
//! masquerades to every port from 1024 up, and rounds of runs are spaced by the close timeout,
//! so the masqueraded connections measure the path, not the port range. Both
//! reply paths run in the same invocation, each on a topology of its own (node A's agent with
//! `--reply-path redirect` or `kernel`, which then sets `accept_local`), alternating run by run.
//!
//! Each run ends with a third window, requests/responses again with the kernel's run-time
//! statistics on, for the run time per program run of node A's programs ([`program_stats`]).
//! The first two windows run with them off, as runs before them did: the statistics add two
//! clock reads to every program run.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use lb_common::conntrack::CLOSING_REUSE_NS;

use serde::Serialize;

use crate::{
    bench::{
        client::{self, ConnectionRun, RequestResponseRun},
        error::{io_context, BenchError, Result},
        interrupt,
        options::Plan,
        program_stats::{AgentPrograms, ProgramCost},
        server::BenchServer,
    },
    cluster::two_node::{Node, TwoNodes, LAN_IFACE},
};

/// The bench servers' port in both pods (the pods' own servers use 8080 and 8053).
const POD_PORT: u16 = 9090;
/// Node ports of the Service whose endpoint is node A's pod, and node B's.
const LOCAL_NODE_PORT: u16 = 30090;
const REMOTE_NODE_PORT: u16 = 30091;
/// Connections before measuring, which must all succeed.
const WARM_UP: u32 = 5;
/// Node A's masquerading ports: as many as there are, since every new connection to the
/// remote endpoint takes one until its close timeout has passed.
const SNAT_PORTS: &str = "1024-65535";

/// One reply path with one endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct ReplyPathCell {
    /// `redirect` or `kernel` (`--reply-path`).
    pub path: &'static str,
    /// Where the NodePort's endpoint runs: `local` (node A) or `remote` (node B, masqueraded).
    pub endpoint: &'static str,
    pub target: SocketAddrV4,
    pub connections: Vec<ConnectionRun>,
    pub request_response: Vec<RequestResponseRun>,
    /// Per run, the window with run-time statistics on.
    pub programs: Vec<ProgramWindow>,
}

/// Requests/responses with the kernel's run-time statistics on, and what node A's attached
/// programs cost meanwhile.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramWindow {
    /// Transactions per second in this window.
    pub rate: f64,
    pub costs: Vec<ProgramCost>,
}

/// The reply paths, in report order.
pub const PATHS: [&str; 2] = ["redirect", "kernel"];
/// The endpoints, in report order, with their node ports.
pub const ENDPOINTS: [(&str, Node, u16); 2] = [
    ("local", Node::A, LOCAL_NODE_PORT),
    ("remote", Node::B, REMOTE_NODE_PORT),
];

/// Measures both reply paths with both endpoints, `plan.runs` windows each.
pub fn run(plan: &Plan) -> Result<Vec<ReplyPathCell>> {
    let dir = tempfile::tempdir().map_err(io_context("creating the manifests directory"))?;
    std::fs::write(dir.path().join("services.yaml"), manifests())
        .map_err(io_context("writing the manifests"))?;
    // Declaration order is the reverse of drop order: servers before their namespaces.
    let mut clusters = Vec::new();
    let mut servers = Vec::new();
    for path in PATHS {
        crate::bench::progress(&format!(
            "reply path: starting two nodes, node A with {path}"
        ));
        let args = ["--reply-path", path, "--masquerade-ports", SNAT_PORTS];
        let cluster = TwoNodes::start(dir.path(), &args)?;
        for node in Node::ALL {
            let pod = cluster.pod(node);
            let addr = SocketAddrV4::new(pod.addr, POD_PORT);
            servers.push(BenchServer::start(&pod.netns, addr)?);
        }
        clients_may_reuse_ports(&cluster)?;
        clusters.push(cluster);
    }
    let mut cells = Vec::new();
    for (cluster, path) in clusters.iter().zip(PATHS) {
        for (endpoint, _, port) in ENDPOINTS {
            let target = SocketAddrV4::new(Node::A.addr(), port);
            let warm_up = cluster
                .client()
                .run(|| client::connection_loop(target, plan.window * 5, WARM_UP))?;
            if warm_up.failed > 0 || warm_up.completed < u64::from(WARM_UP) {
                return Err(BenchError::Check(format!(
                    "reply path {path}, {endpoint} endpoint: {} of {WARM_UP} warm-up \
                     connections to {target} completed (first error: {})",
                    warm_up.completed,
                    warm_up.error.as_deref().unwrap_or("none")
                )));
            }
            cells.push(ReplyPathCell {
                path,
                endpoint,
                target,
                connections: Vec::new(),
                request_response: Vec::new(),
                programs: Vec::new(),
            });
        }
    }
    let node_a_programs = clusters
        .iter()
        .map(|cluster| {
            let bpffs_dir = &cluster.agent(Node::A).options().bpffs_dir;
            AgentPrograms::pinned(bpffs_dir, LAN_IFACE)
        })
        .collect::<Result<Vec<_>>>()?;
    // A round's masqueraded connections hold their ports until the close timeout has passed:
    // the next round starts after it, so no run finds the ports taken.
    let round_gap = Duration::from_nanos(CLOSING_REUSE_NS) + Duration::from_secs(1);
    let mut started = Instant::now();
    for round in 0..plan.runs {
        if round > 0 {
            std::thread::sleep(round_gap.saturating_sub(started.elapsed()));
        }
        started = Instant::now();
        let paths = clusters.iter().zip(&node_a_programs);
        for ((cluster, programs), cells) in paths.zip(cells.chunks_mut(ENDPOINTS.len())) {
            for cell in cells {
                interrupt::check()?;
                let target = cell.target;
                let run = cluster
                    .client()
                    .run(|| client::connection_loop(target, plan.window, plan.max_operations))?;
                cell.connections.push(run);
                let context = format!("reply path {}: requests to {target}", cell.path);
                let requests = || {
                    cluster
                        .client()
                        .run(|| client::request_response(target, plan.window, plan.max_operations))?
                        .map_err(io_context(context.clone()))
                };
                cell.request_response.push(requests()?);
                let (rr, costs) = programs.measure(requests)?;
                cell.programs.push(ProgramWindow {
                    rate: rr.rate,
                    costs,
                });
            }
        }
    }
    Ok(cells)
}

/// Many short connections: the client reuses TIME_WAIT ports and the whole port range.
fn clients_may_reuse_ports(cluster: &TwoNodes) -> Result<()> {
    let client = cluster.client();
    client.set_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    client.set_sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    Ok(())
}

/// One NodePort Service (TCP, targetPort [`POD_PORT`]) per endpoint of [`ENDPOINTS`].
fn manifests() -> String {
    ENDPOINTS
        .iter()
        .enumerate()
        .map(|(i, (endpoint, node, node_port))| {
            let (addr, node_name) = (node.pod_addr(), node.name());
            format!(
                r#"apiVersion: v1
kind: Service
metadata: {{name: reply-{endpoint}, namespace: bench}}
spec:
  type: NodePort
  clusterIP: 198.19.9.{octet}
  ports:
  - {{name: tcp, protocol: TCP, port: 80, targetPort: {POD_PORT}, nodePort: {node_port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reply-{endpoint}-1
  namespace: bench
  labels: {{kubernetes.io/service-name: reply-{endpoint}}}
addressType: IPv4
ports:
  - {{name: tcp, protocol: TCP, port: {POD_PORT}}}
endpoints:
  - {{addresses: [{addr}], nodeName: {node_name}}}
---
"#,
                octet = 10 + i
            )
        })
        .collect()
}
