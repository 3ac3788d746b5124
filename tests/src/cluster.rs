//! The example Service running for real: a node with a client pod and
//! [`example::BACKENDS`] backend pods serving TCP and UDP, and `lb-agent` in the node
//! namespace attached to every pod's veth, reading a manifests directory.
//!
//! [`kube`]: the same in Kubernetes mode, against the in-memory API server, with an outside
//! namespace for NodePort, LoadBalancer and external IP traffic (feature `kube`).
//!
//! [`two_node`]: two nodes with an agent each and an outside client on one LAN, for traffic
//! that one node balances to a pod on the other (masquerading).

use std::{
    io,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::Path,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    agent::{Agent, AgentOptions},
    error::{io_context, Error},
    example,
    scrape::{self, Metrics, METRICS_ADDR},
    servers::{tcp_request, udp_request, Reply, Server, TcpClient},
    topology::{
        backend_addr, backend_name, ipv6_of, Pod, Topology, CLIENT, CLIENT_ADDR, EXTERNAL_IFACE,
    },
    Result,
};

#[cfg(feature = "kube")]
pub mod kube;
pub mod two_node;

/// An open connection from [`Cluster::hold_tcp_connection`]: its ends as `ip:port`.
pub struct HeldConnection {
    /// The client pod's end.
    pub client: String,
    /// The backend pod it reached.
    pub backend: String,
    /// That backend's index (see [`backend_addr`]).
    pub backend_index: usize,
    /// Dropping it closes the connection.
    pub connection: TcpClient,
}

/// Transport protocol of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// One request to `target` from the current namespace: a new TCP connection or a fresh
    /// UDP socket, waiting up to `timeout` for the answer.
    pub fn request(self, target: impl Into<SocketAddr>, timeout: Duration) -> io::Result<Reply> {
        match self {
            Protocol::Tcp => tcp_request(target, timeout),
            Protocol::Udp => udp_request(target, timeout),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A running example cluster; dropping it stops the agent, then the servers, then deletes the
/// namespaces.
#[derive(Debug)]
pub struct Cluster {
    // Field order is drop order.
    agent: Agent,
    /// Per backend, its TCP and UDP server.
    servers: Vec<(Server, Server)>,
    /// With [`Cluster::start_dual_stack`], per backend its TCP and UDP server on IPv6.
    ipv6_servers: Vec<Server>,
    topology: Topology,
}

impl Cluster {
    /// Builds the topology, starts the backends' servers and then the agent on `manifests`
    /// with `log_level`, and waits until the agent is ready.
    pub fn start(manifests: &Path, log_level: &str) -> Result<Cluster> {
        Cluster::start_configured(manifests, |options| options.log_level = log_level.into())
    }

    /// Like [`Cluster::start`], with the agent's options changed by `configure` first.
    pub fn start_configured(
        manifests: &Path,
        configure: impl FnOnce(&mut AgentOptions),
    ) -> Result<Cluster> {
        Cluster::start_on(
            Topology::client_and_backends(example::BACKENDS)?,
            manifests,
            configure,
        )
    }

    /// Like [`Cluster::start`], with the outside namespace ([`Topology::add_outside`]) on the
    /// node's external interface, where the agent attaches XDP.
    pub fn start_with_outside(manifests: &Path) -> Result<Cluster> {
        let mut topology = Topology::client_and_backends(example::BACKENDS)?;
        topology.add_outside()?;
        Cluster::start_on(topology, manifests, |options| {
            options.xdp_iface = Some(EXTERNAL_IFACE.into())
        })
    }

    /// Like [`Cluster::start`], with dual-stack pods ([`Topology::add_ipv6`]) whose servers
    /// also listen on their IPv6 addresses, answering with the same names.
    pub fn start_dual_stack(manifests: &Path, log_level: &str) -> Result<Cluster> {
        let topology = Topology::client_and_backends(example::BACKENDS)?;
        topology.add_ipv6()?;
        let mut ipv6_servers = Vec::new();
        for i in 0..example::BACKENDS {
            let pod = topology.pod(&backend_name(i));
            let addr = IpAddr::from(ipv6_of(pod.addr));
            let tcp = (addr, example::TCP_TARGET_PORT);
            ipv6_servers.push(Server::tcp(&pod.netns, tcp, &pod.name)?);
            let udp = (addr, example::UDP_TARGET_PORT);
            ipv6_servers.push(Server::udp(&pod.netns, udp, &pod.name)?);
        }
        let mut cluster = Cluster::start_on(topology, manifests, |options| {
            options.log_level = log_level.into()
        })?;
        cluster.ipv6_servers = ipv6_servers;
        Ok(cluster)
    }

    fn start_on(
        topology: Topology,
        manifests: &Path,
        configure: impl FnOnce(&mut AgentOptions),
    ) -> Result<Cluster> {
        let mut servers = Vec::new();
        for i in 0..example::BACKENDS {
            let pod = topology.pod(&backend_name(i));
            let tcp = SocketAddrV4::new(pod.addr, example::TCP_TARGET_PORT);
            let udp = SocketAddrV4::new(pod.addr, example::UDP_TARGET_PORT);
            servers.push((
                Server::tcp(&pod.netns, tcp, &pod.name)?,
                Server::udp(&pod.netns, udp, &pod.name)?,
            ));
        }
        let mut options = AgentOptions::new(topology.id(), manifests, topology.host_ifaces());
        configure(&mut options);
        let agent = Agent::start(topology.node(), options)?;
        Ok(Cluster {
            agent,
            servers,
            ipv6_servers: Vec::new(),
            topology,
        })
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The agent, to wait for its logs or check its status.
    pub fn agent_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }

    /// Kills the agent with SIGKILL and starts a new one with the same options, which adopts
    /// the pinned maps and programs; returns once the new agent is ready.
    pub fn restart_agent_after_kill(&mut self) -> Result<()> {
        self.restart_agent_with(|_| {})
    }

    /// Like [`Cluster::restart_agent_after_kill`], with the options changed by `configure`.
    pub fn restart_agent_with(&mut self, configure: impl FnOnce(&mut AgentOptions)) -> Result<()> {
        self.agent.kill()?;
        let mut options = self.agent.options().clone();
        configure(&mut options);
        self.agent = Agent::start(self.topology.node(), options)?;
        Ok(())
    }

    /// The agent, mutable, beside the topology (e.g. to kill it while another agent starts
    /// in the node namespace).
    pub fn agent_and_topology(&mut self) -> (&mut Agent, &Topology) {
        (&mut self.agent, &self.topology)
    }

    /// TCP connections accepted, or UDP datagrams received, by backend `index` so far.
    pub fn served(&self, index: usize, protocol: Protocol) -> usize {
        let (tcp, udp) = &self.servers[index];
        match protocol {
            Protocol::Tcp => tcp.served(),
            Protocol::Udp => udp.served(),
        }
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The agent's metrics, scraped from the node's namespace (status 200 asserted).
    pub fn scrape_metrics(&self) -> Metrics {
        let response = self
            .topology
            .node()
            .run(|| scrape::get(METRICS_ADDR, "/metrics"))
            .expect("entering the node's namespace")
            .expect("scraping the metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        Metrics(response.body)
    }

    /// The agent's metrics from the first scrape after a conntrack garbage collector walk that
    /// started after `since` (`lbagent_conntrack_entries` counts what that walk kept); panics
    /// when no such walk ends within `timeout`.
    pub fn scrape_after_conntrack_walk(&self, since: SystemTime, timeout: Duration) -> Metrics {
        let since = since.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let started = Instant::now();
        loop {
            let metrics = self.scrape_metrics();
            let walked = metrics.value("lbagent_conntrack_entries_timestamp_seconds", &[]);
            if walked.is_some_and(|at| at > since) {
                return metrics;
            }
            assert!(
                started.elapsed() < timeout,
                "no conntrack walk started after {since} within {timeout:?}: {walked:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client pod.
    pub fn client(&self) -> &Pod {
        self.topology.pod(CLIENT)
    }

    /// A TCP connection from the client pod to the example Service, asked once and kept open
    /// so its flow stays in conntrack.
    pub fn hold_tcp_connection(&self, timeout: Duration) -> Result<HeldConnection> {
        let mut connection = self
            .client()
            .netns
            .run(|| TcpClient::connect(example::tcp_vip(), timeout))?
            .map_err(io_context("connecting to the example Service"))?;
        let reply = connection
            .ask()
            .map_err(io_context("asking the example Service"))?;
        let index: usize = reply
            .from
            .trim_start_matches("backend-")
            .parse()
            .map_err(|_| Error::Invalid {
                what: "reply".into(),
                reason: format!("from {:?}, no backend pod", reply.from),
            })?;
        Ok(HeldConnection {
            client: format!("{CLIENT_ADDR}:{}", reply.local_port),
            backend: format!("{}:{}", backend_addr(index), example::TCP_TARGET_PORT),
            backend_index: index,
            connection,
        })
    }

    /// Sends `count` requests to the Service's frontend for `protocol` from the client pod,
    /// one new connection (TCP) or fresh socket (UDP) each, waiting up to `timeout` for each.
    pub fn requests(
        &self,
        protocol: Protocol,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<io::Result<Reply>>> {
        let target = match protocol {
            Protocol::Tcp => example::tcp_vip(),
            Protocol::Udp => example::udp_vip(),
        };
        self.requests_to(target.into(), protocol, count, timeout)
    }

    /// [`Cluster::requests`] to `target`, of either family.
    pub fn requests_to(
        &self,
        target: SocketAddr,
        protocol: Protocol,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<io::Result<Reply>>> {
        self.client().netns.run(|| {
            (0..count)
                .map(|_| protocol.request(target, timeout))
                .collect()
        })
    }
}
