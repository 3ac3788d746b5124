//! Two nodes on one LAN, each with one pod and its own `lb-agent`, and an outside client on
//! the same LAN: what a packet meets when a node port on one node balances to a pod on the
//! other.
//!
//! ```text
//!   client 198.18.1.100 ──┐            (198.19.0.0/16 via node A)
//!                         ├─ br0 (LAN namespace, 198.18.1.0/24)
//!   node A 198.18.1.1  ───┤   lan0: XDP; pod-a 198.18.10.11 on a /32 veth route;
//!                         │         198.18.20.0/24 via node B
//!   node B 198.18.1.2  ───┘   lan0: XDP; pod-b 198.18.20.11 on a /32 veth route;
//!                                   198.18.10.0/24 via node A
//! ```
//!
//! Both agents read the same manifests directory (file mode) with `--node-name node-a` or
//! `node-b` and `--node-address` their LAN address, so endpoints with `nodeName: node-a` are
//! local on node A only. Node B reaches the client's subnet directly over the LAN, not
//! through node A: a reply that node A did not masquerade goes straight to the client, as it
//! would in a real cluster, and breaks the connection.
//!
//! The frames that node A's XDP program translates come from the client and, for replies,
//! from pod-b, so both send with transmit checksum offload off (complete checksums, as on a
//! wire). No XDP program runs on the LAN side of the veths: nothing here is answered with
//! `XDP_TX` (see [`crate::topology::Topology::add_outside`] for when that matters).

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use super::Protocol;
use crate::{
    agent::{Agent, AgentOptions},
    cmd,
    netns::{unique_prefix, NetNs},
    servers::{tcp_request, udp_request, Reply, Server},
    topology::{lan::Lan, Pod, Topology, POD_IFACE},
    Result,
};

/// Each node's interface on the LAN, where its agent attaches XDP.
pub const LAN_IFACE: &str = "lan0";
/// The outside client's address on the LAN.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
/// Service addresses (cluster, external and load balancer IPs) the client routes via node A.
pub const SERVICE_NET: &str = "198.19.0.0/16";
/// Ports every pod serves (each answers with its pod name).
pub const POD_PORTS: [(Protocol, u16); 2] = [(Protocol::Tcp, 8080), (Protocol::Udp, 8053)];
/// Per-request timeout of [`TwoNodes::requests`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Every node's default gateway on the LAN (no namespace answers there): what makes
/// [`LAN_IFACE`] a node's external interface for an agent that looks for it.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
/// Prefix length of the LAN.
const LAN_PREFIX: u8 = 24;
/// Node-side veth names as CNI plugins make them (matched by the agent's `veth*` pattern).
const CNI_VETH_PREFIX: &str = "veth-";

/// One of the two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    A,
    B,
}

impl Node {
    /// Both nodes.
    pub const ALL: [Node; 2] = [Node::A, Node::B];

    /// The node's name (`--node-name`, endpoints' `nodeName`).
    pub fn name(self) -> &'static str {
        match self {
            Node::A => "node-a",
            Node::B => "node-b",
        }
    }

    /// The node's LAN address (`--node-address`: node ports are served there).
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Node::A => Ipv4Addr::new(198, 18, 1, 1),
            Node::B => Ipv4Addr::new(198, 18, 1, 2),
        }
    }

    /// The name of the node's pod.
    pub fn pod_name(self) -> &'static str {
        match self {
            Node::A => "pod-a",
            Node::B => "pod-b",
        }
    }

    /// The address of the node's pod.
    pub fn pod_addr(self) -> Ipv4Addr {
        match self {
            Node::A => Ipv4Addr::new(198, 18, 10, 11),
            Node::B => Ipv4Addr::new(198, 18, 20, 11),
        }
    }

    /// The node's pod subnet (the other node routes it via this node's LAN address).
    fn pod_cidr(self) -> &'static str {
        match self {
            Node::A => "198.18.10.0/24",
            Node::B => "198.18.20.0/24",
        }
    }

    fn other(self) -> Node {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The running two-node cluster; dropping it stops the agents, then the servers, then
/// deletes every namespace.
#[derive(Debug)]
pub struct TwoNodes {
    // Field order is drop order: the LAN goes last.
    agents: BTreeMap<Node, Agent>,
    servers: BTreeMap<(Node, Protocol), Server>,
    client: NetNs,
    nodes: Vec<Topology>,
    _lan: Lan,
}

impl TwoNodes {
    /// Builds the LAN, the client and both nodes with their pods, starts the pods' servers
    /// ([`POD_PORTS`]) and an agent per node on `manifests`, and waits until both are ready.
    /// `node_a_args` are further `lb-agent run` arguments for node A's agent.
    pub fn start(manifests: &Path, node_a_args: &[&str]) -> Result<TwoNodes> {
        let mut cluster = TwoNodes::without_agents()?;
        for node in Node::ALL {
            let args = if node == Node::A { node_a_args } else { &[] };
            cluster.start_agent(node, manifests, args)?;
        }
        Ok(cluster)
    }

    /// Builds the LAN, the client and both nodes with their pods and starts the pods'
    /// servers ([`POD_PORTS`]), but no agent. Pods' node-side veths are named as CNI plugins
    /// name them (`veth-<pod>`), so an agent in auto-attach mode finds them; each node's
    /// default route leads to [`GATEWAY_ADDR`] on its [`LAN_IFACE`], where such an agent
    /// attaches XDP.
    pub fn without_agents() -> Result<TwoNodes> {
        let id = unique_prefix();
        let mut lan = Lan::new(&id)?;
        let client = NetNs::create(&format!("{id}-client"))?;
        lan.join(&client, POD_IFACE, CLIENT_ADDR, LAN_PREFIX)?;
        let via_a = Node::A.addr().to_string();
        client.ip(&["route", "add", SERVICE_NET, "via", &via_a])?;
        checksum_offload_off(&client)?;

        let mut nodes = Vec::new();
        let mut servers = BTreeMap::new();
        for node in Node::ALL {
            let pods = [(node.pod_name(), node.pod_addr())];
            let topology = Topology::with_host_prefix(CNI_VETH_PREFIX, &pods)?;
            lan.join(topology.node(), LAN_IFACE, node.addr(), LAN_PREFIX)?;
            let other = node.other();
            let via = other.addr().to_string();
            let node_ns = topology.node();
            node_ns.ip(&["route", "add", other.pod_cidr(), "via", &via])?;
            let gateway = GATEWAY_ADDR.to_string();
            node_ns.ip(&["route", "add", "default", "via", &gateway, "dev", LAN_IFACE])?;
            let pod = topology.pod(node.pod_name());
            checksum_offload_off(&pod.netns)?;
            for (protocol, port) in POD_PORTS {
                let addr = SocketAddrV4::new(pod.addr, port);
                let server = match protocol {
                    Protocol::Tcp => Server::tcp(&pod.netns, addr, &pod.name)?,
                    Protocol::Udp => Server::udp(&pod.netns, addr, &pod.name)?,
                };
                servers.insert((node, protocol), server);
            }
            nodes.push(topology);
        }
        Ok(TwoNodes {
            agents: BTreeMap::new(),
            servers,
            client,
            nodes,
            _lan: lan,
        })
    }

    /// Starts a file-mode agent on `node` reading `manifests`, with TC on its pods' veths,
    /// XDP on [`LAN_IFACE`] and further `lb-agent run` arguments `args`, and waits until it
    /// is ready.
    pub fn start_agent(&mut self, node: Node, manifests: &Path, args: &[&str]) -> Result<()> {
        let topology = &self.nodes[node.index()];
        let mut options = AgentOptions::new(topology.id(), manifests, topology.host_ifaces());
        options.xdp_iface = Some(LAN_IFACE.to_string());
        let addr = node.addr().to_string();
        options.extra_args = ["--node-name", node.name(), "--node-address", &addr]
            .iter()
            .chain(args)
            .map(|arg| arg.to_string())
            .collect();
        let agent = Agent::start(topology.node(), options)?;
        self.agents.insert(node, agent);
        Ok(())
    }

    /// Adds a pod `name` at `addr` on `node` (with no server): in the node's pod subnet
    /// (198.18.10.0/24 on node A, 198.18.20.0/24 on node B) the other node routes to it.
    pub fn add_pod(&mut self, node: Node, name: &str, addr: Ipv4Addr) -> Result<&Pod> {
        let pod = self.nodes[node.index()].add_pod(name, addr)?;
        checksum_offload_off(&pod.netns)?;
        Ok(pod)
    }

    /// The bpffs directory name (under `/sys/fs/bpf`) and namespace prefix of `node`: unique
    /// to this process, removed by the harness's stale-state sweep once it is gone.
    pub fn id(&self, node: Node) -> &str {
        self.nodes[node.index()].id()
    }

    /// The outside client's namespace.
    pub fn client(&self) -> &NetNs {
        &self.client
    }

    /// The agent of `node`.
    pub fn agent(&self, node: Node) -> &Agent {
        &self.agents[&node]
    }

    /// The namespace of `node`.
    pub fn node(&self, node: Node) -> &NetNs {
        self.nodes[node.index()].node()
    }

    /// The pod `name` of `node` (one [`TwoNodes::add_pod`] added).
    pub fn pod_named(&self, node: Node, name: &str) -> &Pod {
        self.nodes[node.index()].pod(name)
    }

    /// The pod of `node`.
    pub fn pod(&self, node: Node) -> &Pod {
        self.nodes[node.index()].pod(node.pod_name())
    }

    /// Connections accepted, or datagrams received, by the pod of `node` on `protocol`.
    pub fn served(&self, node: Node, protocol: Protocol) -> usize {
        self.servers[&(node, protocol)].served()
    }

    /// Client addresses the pod of `node` saw on `protocol`, in order.
    pub fn peers(&self, node: Node, protocol: Protocol) -> Vec<SocketAddr> {
        self.servers[&(node, protocol)].peers()
    }

    /// Sends `count` requests from the client to `target`, a new connection (TCP) or fresh
    /// socket (UDP) each, waiting up to [`REQUEST_TIMEOUT`] for each; every outcome is kept.
    pub fn requests(
        &self,
        protocol: Protocol,
        target: SocketAddrV4,
        count: usize,
    ) -> Result<Vec<io::Result<Reply>>> {
        self.client.run(|| {
            (0..count)
                .map(|_| match protocol {
                    Protocol::Tcp => tcp_request(target, REQUEST_TIMEOUT),
                    Protocol::Udp => udp_request(target, REQUEST_TIMEOUT),
                })
                .collect()
        })
    }
}

/// Turns transmit checksum offload off on `netns`'s [`POD_IFACE`], so its frames carry
/// complete checksums for an XDP program to update.
fn checksum_offload_off(netns: &NetNs) -> Result<()> {
    cmd::run(
        "ip",
        &[
            "netns",
            "exec",
            netns.name(),
            "ethtool",
            "-K",
            POD_IFACE,
            "tx",
            "off",
        ],
    )
    .map(drop)
}
