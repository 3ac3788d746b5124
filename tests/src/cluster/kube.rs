//! A node in Kubernetes mode: the topology with a client pod, backend pods and the outside
//! namespace; the in-memory API server inside the node namespace holding this node's Node
//! object, served over HTTPS with its own CA and a bearer token; `lb-agent run --kubeconfig`
//! (a kubeconfig with the CA data and the token) attached with TC to the pods' veths and XDP
//! to the external interface. [`KubeCluster::start_with`] starts the agent otherwise, e.g. as
//! a pod reaches its API server. Tests change Services and EndpointSlices through [`KubeCluster::api`]
//! and send real traffic from the client pod or the outside.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::ServicePort,
    discovery::v1::{Endpoint, EndpointSlice},
};

use super::Protocol;
use crate::{
    agent::{Agent, AgentOptions, Source},
    apiserver::{objects, ApiServer, Options},
    netns::NetNs,
    servers::{udp_connected_request, Reply, Server},
    topology::{backend_name, Outside, Pod, Topology, CLIENT, EXTERNAL_IFACE, NODE_IP},
    Result,
};

/// Name of the node the agent runs as.
pub const NODE_NAME: &str = "node-a";
/// Name of another node, for endpoints that are not local.
pub const OTHER_NODE: &str = "node-b";
/// Namespace of the test Services.
pub const NAMESPACE: &str = "e2e";
/// Ports every backend pod serves (each answers with its pod name).
pub const BACKEND_PORTS: [(Protocol, u16); 3] = [
    (Protocol::Tcp, 8080),
    (Protocol::Tcp, 8081),
    (Protocol::Udp, 8053),
];
/// Per-request timeout of the request helpers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the agent may take to apply a change made through the API.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per check in [`wait_for_backends`]: enough to reach each of three backends with
/// near certainty (a miss has odds of 3 x (2/3)^30, below 1e-5).
pub const REQUESTS: usize = 30;

/// How far [`KubeCluster::start_with`] waits for the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentWait {
    /// Until it programmed the API server's state ([`crate::agent::READY_MARKER`]).
    Ready,
    /// Until its metrics and health ports are open (it may never reach its API server).
    Serving,
}

/// A running node in Kubernetes mode; dropping it stops the agent, the servers, the API server
/// and deletes the namespaces.
#[derive(Debug)]
pub struct KubeCluster {
    // Field order is drop order.
    agent: Agent,
    servers: BTreeMap<(usize, Protocol, u16), Server>,
    api: ApiServer,
    topology: Topology,
}

impl KubeCluster {
    /// Builds the topology with `backends` backend pods and the outside, starts the backends'
    /// servers ([`BACKEND_PORTS`]), the API server with the Node [`NODE_NAME`] (InternalIP
    /// [`NODE_IP`]) and then the agent, and waits until it is ready.
    pub fn start(backends: usize) -> Result<KubeCluster> {
        KubeCluster::start_with(backends, AgentWait::Ready, |_, _| Ok(()))
    }

    /// [`KubeCluster::start`] with the agent's options changed by `configure` (given the
    /// running API server) and waiting only as far as `wait`.
    pub fn start_with(
        backends: usize,
        wait: AgentWait,
        configure: impl FnOnce(&ApiServer, &mut AgentOptions) -> Result<()>,
    ) -> Result<KubeCluster> {
        KubeCluster::start_configured(backends, Options::default(), wait, |_, api, options| {
            configure(api, options)
        })
    }

    /// [`KubeCluster::start_with`] with the API server's `api` options, and `configure` given
    /// the topology too (e.g. to add an address to the node first).
    pub fn start_configured(
        backends: usize,
        api: Options,
        wait: AgentWait,
        configure: impl FnOnce(&Topology, &ApiServer, &mut AgentOptions) -> Result<()>,
    ) -> Result<KubeCluster> {
        let mut topology = Topology::client_and_backends(backends)?;
        topology.add_outside()?;
        let mut servers = BTreeMap::new();
        for i in 0..backends {
            let pod = topology.pod(&backend_name(i));
            for (protocol, port) in BACKEND_PORTS {
                let addr = SocketAddrV4::new(pod.addr, port);
                let server = match protocol {
                    Protocol::Tcp => Server::tcp(&pod.netns, addr, &pod.name)?,
                    Protocol::Udp => Server::udp(&pod.netns, addr, &pod.name)?,
                };
                servers.insert((i, protocol, port), server);
            }
        }
        let api = ApiServer::start_in(topology.node(), api)?;
        api.create(&objects::node(NODE_NAME, NODE_IP))
            .expect("a fresh server accepts the Node");
        let mut options = AgentOptions::kubernetes(
            topology.id(),
            &api.kubeconfig(),
            NODE_NAME,
            topology.host_ifaces(),
            EXTERNAL_IFACE,
        );
        configure(&topology, &api, &mut options)?;
        let agent = match wait {
            AgentWait::Ready => Agent::start(topology.node(), options)?,
            AgentWait::Serving => Agent::start_serving(topology.node(), options)?,
        };
        Ok(KubeCluster {
            agent,
            servers,
            api,
            topology,
        })
    }

    /// The API server the agent watches.
    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The agent, to wait for its logs or check its status.
    pub fn agent_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }

    /// Kills the agent with SIGKILL and starts a new one with the same options changed by
    /// `configure`, which adopts the pinned maps and programs; returns once it is ready.
    pub fn restart_agent_with(&mut self, configure: impl FnOnce(&mut AgentOptions)) -> Result<()> {
        self.agent.kill()?;
        let mut options = self.agent.options().clone();
        configure(&mut options);
        self.agent = Agent::start(self.topology.node(), options)?;
        Ok(())
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The client pod.
    pub fn client(&self) -> &Pod {
        self.topology.pod(CLIENT)
    }

    /// The outside namespace.
    pub fn outside(&self) -> &Outside {
        self.topology.outside()
    }

    /// Backend pod `index`.
    pub fn backend(&self, index: usize) -> &Pod {
        self.topology.pod(&backend_name(index))
    }

    /// Connections accepted, or datagrams received, by backend `index` on `protocol`/`port`.
    pub fn served(&self, index: usize, protocol: Protocol, port: u16) -> usize {
        self.server(index, protocol, port).served()
    }

    /// Client addresses backend `index` saw on `protocol`/`port`, in order.
    pub fn peers(&self, index: usize, protocol: Protocol, port: u16) -> Vec<SocketAddr> {
        self.server(index, protocol, port).peers()
    }

    fn server(&self, index: usize, protocol: Protocol, port: u16) -> &Server {
        self.servers
            .get(&(index, protocol, port))
            .unwrap_or_else(|| panic!("backend {index} serves no {protocol} port {port}"))
    }

    /// A ready endpoint for backend `index` on node `node_name`.
    pub fn endpoint(&self, index: usize, node_name: &str) -> Endpoint {
        objects::endpoint(self.backend(index).addr, node_name)
    }

    /// The EndpointSlice `<service>-1` of `service` for [`web_ports`] with the backends
    /// `indexes`, all ready on this node.
    pub fn web_slice(&self, service: &str, indexes: &[usize]) -> EndpointSlice {
        let endpoints = indexes
            .iter()
            .map(|&i| self.endpoint(i, NODE_NAME))
            .collect();
        web_slice(service, endpoints)
    }

    /// `lb-agent inspect` of the running agent.
    pub fn inspect(&self) -> Result<Inspect> {
        self.agent.inspect().map(Inspect)
    }
}

/// Ports of the test Services: `http` TCP 80 -> 8080 and `dns` UDP 53 -> 8053.
pub fn web_ports() -> Vec<ServicePort> {
    vec![
        objects::service_port("http", Protocol::Tcp, 80, 8080),
        objects::service_port("dns", Protocol::Udp, 53, 8053),
    ]
}

/// The EndpointSlice `<service>-1` of `service` for [`web_ports`] with `endpoints`.
pub fn web_slice(service: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
    let ports = vec![
        objects::endpoint_port("http", Protocol::Tcp, 8080),
        objects::endpoint_port("dns", Protocol::Udp, 8053),
    ];
    let name = format!("{service}-1");
    objects::endpoint_slice(NAMESPACE, service, &name, ports, endpoints)
}

/// Makes the agent start as a pod: no kubeconfig, the service account in `dir`, `env` (e.g.
/// `KUBERNETES_SERVICE_HOST`, `LB_K8S_API_SERVER`).
pub fn in_cluster(options: &mut AgentOptions, dir: &Path, env: &[(&str, &str)]) {
    options.source = Source::InCluster {
        node_name: NODE_NAME.into(),
    };
    options.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([(
            "LB_K8S_SERVICE_ACCOUNT_DIR".to_string(),
            dir.display().to_string(),
        )])
        .collect();
}

/// Waits until [`REQUESTS`] requests from `netns` to `target` are all answered, from
/// `target`, by exactly the backends `indexes`.
pub fn wait_for_backends(
    what: &str,
    netns: &NetNs,
    protocol: Protocol,
    target: impl Into<SocketAddr>,
    indexes: &[usize],
) {
    let target = target.into();
    let expected: BTreeSet<String> = indexes.iter().map(|&i| backend_name(i)).collect();
    wait_until(what, APPLY_TIMEOUT, || {
        let counts = tally(netns, protocol, target, REQUESTS)?;
        if counts.keys().eq(expected.iter()) {
            Ok(())
        } else {
            Err(format!("{protocol} to {target} answered by {counts:?}"))
        }
    });
}

/// Which pods answered `count` requests to `target` from `netns`, and how often; an `Err`
/// describes the first failed request (the last one sent) or an answer from an address other
/// than `target`.
pub fn tally(
    netns: &NetNs,
    protocol: Protocol,
    target: impl Into<SocketAddr>,
    count: usize,
) -> std::result::Result<BTreeMap<String, usize>, String> {
    let target = target.into();
    netns
        .run(|| {
            let mut counts = BTreeMap::new();
            for i in 0..count {
                let reply = protocol
                    .request(target, REQUEST_TIMEOUT)
                    .map_err(|e| format!("{protocol} request {i} to {target} failed: {e}"))?;
                if reply.peer != target {
                    return Err(format!(
                        "{protocol} request {i} to {target} answered from {}",
                        reply.peer
                    ));
                }
                *counts.entry(reply.from).or_insert(0) += 1;
            }
            Ok(counts)
        })
        .map_err(|e| e.to_string())?
}

/// Sends one datagram from a connected UDP socket in `netns` and waits for the answer; a
/// rejected flow (ICMP port unreachable) fails with `ConnectionRefused`.
pub fn connected_udp_request(netns: &NetNs, target: SocketAddrV4) -> Result<io::Result<Reply>> {
    netns.run(|| udp_connected_request(target, REQUEST_TIMEOUT))
}

/// Calls `check` every 100 ms until it returns `Ok` or `timeout` passes; then panics with
/// `what` and the last error. For conditions that hold once the agent applied a change.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> std::result::Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting until {what}; last: {last}")
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Output of `lb-agent inspect`, with accessors for what tests check.
#[derive(Clone, Debug)]
pub struct Inspect(pub String);

/// One row of the services table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRow {
    /// `addr:port/PROTO`.
    pub frontend: String,
    /// `external` or `internal`.
    pub scope: String,
    pub backends: u32,
}

impl Inspect {
    /// The value of node-wide counter `name` (as `lb_common::Counter::name` spells it).
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.section("COUNTERS").find_map(|line| {
            let mut columns = line.split_whitespace();
            (columns.next() == Some(name))
                .then(|| columns.next()?.parse().ok())
                .flatten()
        })
    }

    /// Every row of the services table.
    pub fn frontends(&self) -> Vec<FrontendRow> {
        self.section("SERVICES")
            .filter_map(|line| {
                let columns: Vec<&str> = line.split_whitespace().collect();
                Some(FrontendRow {
                    frontend: columns.first()?.to_string(),
                    scope: columns.get(2)?.to_string(),
                    backends: columns.get(4)?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Rows of `frontend` (`addr:port/PROTO`), one per scope.
    pub fn frontend(&self, frontend: &str) -> Vec<FrontendRow> {
        self.frontends()
            .into_iter()
            .filter(|row| row.frontend == frontend)
            .collect()
    }

    /// The data lines of the table after the line `title` (without its header line).
    fn section<'a>(&'a self, title: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .lines()
            .skip_while(move |line| line.trim() != title)
            .skip(2)
            .take_while(|line| !line.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_tables_are_read_by_column() {
        let text = "SERVICES\nFRONTEND  SERVICE  SCOPE  ID  BACKENDS  SLOTS  PACKETS\n\
                    198.19.0.10:80/TCP  default/web:http  external  1  2  1,2  5\n\
                    198.19.0.10:80/TCP  -  internal  1  0    0\n\nBACKENDS\nID  ADDRESS\n\
                    1  198.18.0.11:8080\n\nCOUNTERS\nCOUNTER  VALUE\npackets  12\n\
                    reject_no_backend  3\n";
        let inspect = Inspect(text.to_string());
        assert_eq!(inspect.counter("reject_no_backend"), Some(3));
        assert_eq!(inspect.counter("packets"), Some(12));
        assert_eq!(inspect.counter("drops"), None);
        let rows = inspect.frontend("198.19.0.10:80/TCP");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].scope.as_str(), rows[0].backends), ("external", 2));
        assert_eq!((rows[1].scope.as_str(), rows[1].backends), ("internal", 0));
        assert!(inspect.frontend("198.19.0.11:80/TCP").is_empty());
    }
}
