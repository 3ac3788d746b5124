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
//! With [`PodNetwork::Vxlan`] the pods talk over a VXLAN overlay instead, set up as flannel's
//! vxlan backend sets it up (pod CIDRs 198.18.64.0/24 on node A and 198.18.65.0/24 on node
//! B): a `flannel.1` device on each node (VNI 1, UDP port 8472, no learning, MTU 1450) whose
//! address is the node's pod-CIDR network address (its VTEP address); per remote node a route
//! to its pod CIDR via its VTEP address `onlink dev flannel.1`, a permanent neighbour entry for
//! that address with the remote `flannel.1`'s MAC, and an FDB entry sending that MAC to the
//! remote node's LAN address. Packets between pods of different nodes cross the LAN inside
//! VXLAN and arrive on `flannel.1`; everything else (the client, masqueraded replies to node
//! A's LAN address) still takes the LAN.
//!
//! With [`Setup::ipv6`] the LAN, the client, both nodes and their pods get IPv6 addresses
//! too: each one's IPv4 address in 2001:2::/96 ([`crate::topology::ipv6_of`]), the LAN a
//! /120, and each node routes the other's pod /120 via the other's IPv6 LAN address.
//!
//! The frames that node A's XDP program translates come from the client and, for replies,
//! from pod-b, so both send with transmit checksum offload off (complete checksums, as on a
//! wire). No XDP program runs on the LAN side of the veths: nothing here is answered with
//! `XDP_TX` (see [`crate::topology::Topology::add_outside`] for when that matters).

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use super::Protocol;
use crate::{
    agent::{tc_attached, Agent, AgentOptions, ATTACH_TIMEOUT},
    cmd,
    netns::{unique_prefix, NetNs},
    servers::{Reply, Server},
    topology::{ipv6_of, lan::Lan, wait_for_dad, Pod, Topology, POD_IFACE},
    Error, Result,
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
/// Prefix length of the LAN.
const LAN_PREFIX: u8 = 24;
/// Prefix length of the LAN's IPv6 subnet, and of each node's IPv6 pod subnet.
const PREFIX6: u8 = 120;
/// Every node's default gateway on the LAN (no namespace answers there): what makes
/// [`LAN_IFACE`] a node's external interface for an agent that looks for it.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
/// Node-side veth names as CNI plugins make them (matched by the agent's `veth*` pattern).
const CNI_VETH_PREFIX: &str = "veth-";
/// The VXLAN device of [`PodNetwork::Vxlan`] on each node, named as flannel names it.
pub const VXLAN_IFACE: &str = "flannel.1";
/// The VXLAN network identifier and UDP port flannel's vxlan backend uses by default.
const VXLAN_ID: &str = "1";
const VXLAN_PORT: &str = "8472";
/// `flannel.1`'s MTU: the LAN's 1500 less VXLAN's 50 bytes of headers, as flannel sets it.
const VXLAN_MTU: &str = "1450";

/// How the two nodes' pods reach each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodNetwork {
    /// Each node routes the other's pod CIDR via the other's LAN address (as kindnet and
    /// flannel's host-gw backend do).
    #[default]
    Routed,
    /// A VXLAN overlay on [`VXLAN_IFACE`], as flannel's vxlan backend sets it up.
    Vxlan,
}

impl PodNetwork {
    /// The address of `node`'s pod on this network.
    pub fn pod_addr(self, node: Node) -> Ipv4Addr {
        let [a, b, c, _] = self.pod_net(node).octets();
        Ipv4Addr::new(a, b, c, 11)
    }

    /// The network address of `node`'s pod CIDR (a /24); on [`PodNetwork::Vxlan`] also the
    /// address of the node's [`VXLAN_IFACE`] (its VTEP address), as flannel gives it.
    fn pod_net(self, node: Node) -> Ipv4Addr {
        match (self, node) {
            (PodNetwork::Routed, Node::A) => Ipv4Addr::new(198, 18, 10, 0),
            (PodNetwork::Routed, Node::B) => Ipv4Addr::new(198, 18, 20, 0),
            (PodNetwork::Vxlan, Node::A) => Ipv4Addr::new(198, 18, 64, 0),
            (PodNetwork::Vxlan, Node::B) => Ipv4Addr::new(198, 18, 65, 0),
        }
    }

    /// `node`'s pod CIDR.
    fn pod_cidr(self, node: Node) -> String {
        format!("{}/24", self.pod_net(node))
    }

    /// Makes `netns`, the namespace of `node`, reach the other node's pods.
    fn connect(self, node: Node, netns: &NetNs) -> Result<()> {
        let other = node.other();
        let cidr = self.pod_cidr(other);
        match self {
            PodNetwork::Routed => netns
                .ip(&["route", "add", &cidr, "via", &other.addr().to_string()])
                .map(drop),
            PodNetwork::Vxlan => {
                let (mac, local, lan) = (node.vtep_mac(), node.addr(), LAN_IFACE);
                let (remote_mac, remote) = (other.vtep_mac(), other.addr());
                let vtep = self.pod_net(node);
                let remote_vtep = self.pod_net(other);
                let dev = VXLAN_IFACE;
                for command in [
                    format!(
                        "link add {dev} address {mac} mtu {VXLAN_MTU} type vxlan id {VXLAN_ID} \
                         local {local} dev {lan} dstport {VXLAN_PORT} nolearning"
                    ),
                    format!("addr add {vtep}/32 dev {dev}"),
                    format!("link set {dev} up"),
                    format!("route add {cidr} via {remote_vtep} dev {dev} onlink"),
                    format!("neigh add {remote_vtep} lladdr {remote_mac} dev {dev} nud permanent"),
                ] {
                    netns.ip(&command.split(' ').collect::<Vec<_>>())?;
                }
                let fdb = format!("fdb append {remote_mac} dev {dev} dst {remote}");
                let args: Vec<&str> = ["-netns", netns.name()]
                    .into_iter()
                    .chain(fdb.split(' '))
                    .collect();
                cmd::run("bridge", &args).map(drop)
            }
        }
    }
}

/// How [`TwoNodes::start_with`] builds the nodes and runs their agents.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub network: PodNetwork,
    /// Auto-attach with these `--iface-pattern`s; empty: TC on the pods' veths by name
    /// (`--iface`).
    pub iface_patterns: Vec<String>,
    /// Further `lb-agent run` arguments for node A's agent.
    pub node_a_args: Vec<String>,
    /// The test cgroup whose sockets node A's agent translates (`--cgroup-path`); `None`:
    /// `--no-socket-lb`, as node B's always runs.
    pub node_a_cgroup: Option<PathBuf>,
    /// IPv6 addresses and routes too, before the agents start (routed pods only).
    pub ipv6: bool,
}

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

    /// The node's IPv6 LAN address, with [`Setup::ipv6`].
    pub fn addr6(self) -> Ipv6Addr {
        ipv6_of(self.addr())
    }

    /// The name of the node's pod.
    pub fn pod_name(self) -> &'static str {
        match self {
            Node::A => "pod-a",
            Node::B => "pod-b",
        }
    }

    /// The address of the node's pod on the [`PodNetwork::Routed`] network
    /// ([`TwoNodes::start`]).
    pub fn pod_addr(self) -> Ipv4Addr {
        PodNetwork::Routed.pod_addr(self)
    }

    /// The MAC address of the node's [`VXLAN_IFACE`].
    fn vtep_mac(self) -> &'static str {
        match self {
            Node::A => "02:00:c6:12:40:00",
            Node::B => "02:00:c6:12:41:00",
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
    /// `node_a_args` are further `lb-agent run` arguments for node A's agent. The pods are
    /// routed ([`PodNetwork::Routed`]) and each agent attaches TC to its pod's veth by name.
    pub fn start(manifests: &Path, node_a_args: &[&str]) -> Result<TwoNodes> {
        TwoNodes::start_with(
            manifests,
            &Setup {
                node_a_args: node_a_args.iter().map(|arg| arg.to_string()).collect(),
                ..Setup::default()
            },
        )
    }

    /// [`TwoNodes::start`] as `setup` says. With auto-attach it also waits until each agent
    /// has attached its pod's veth.
    pub fn start_with(manifests: &Path, setup: &Setup) -> Result<TwoNodes> {
        let mut cluster = TwoNodes::build(setup.network)?;
        if setup.ipv6 {
            cluster.add_ipv6(setup.network)?;
        }
        for node in Node::ALL {
            cluster.start_agent(node, manifests, setup)?;
        }
        Ok(cluster)
    }

    /// Builds the LAN, the client and both nodes with their routed pods and starts the pods'
    /// servers ([`POD_PORTS`]), but no agent. Pods' node-side veths are named as CNI plugins
    /// name them (`veth-<pod>`), so an agent in auto-attach mode finds them; each node's
    /// default route leads to [`GATEWAY_ADDR`] on its [`LAN_IFACE`], where such an agent
    /// attaches XDP.
    pub fn without_agents() -> Result<TwoNodes> {
        TwoNodes::build(PodNetwork::Routed)
    }

    fn build(network: PodNetwork) -> Result<TwoNodes> {
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
            let pods = [(node.pod_name(), network.pod_addr(node))];
            let topology = Topology::with_host_prefix(CNI_VETH_PREFIX, &pods)?;
            lan.join(topology.node(), LAN_IFACE, node.addr(), LAN_PREFIX)?;
            network.connect(node, topology.node())?;
            let gateway = GATEWAY_ADDR.to_string();
            topology
                .node()
                .ip(&["route", "add", "default", "via", &gateway, "dev", LAN_IFACE])?;
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

    /// Gives the client, the nodes and their pods IPv6 addresses (see the module's doc) and
    /// routes each node's IPv6 pod subnet via it.
    fn add_ipv6(&self, network: PodNetwork) -> Result<()> {
        if network != PodNetwork::Routed {
            return Err(Error::Invalid {
                what: "the two-node setup".into(),
                reason: "IPv6 is set up for routed pods only".into(),
            });
        }
        let on_lan = |addr: Ipv6Addr| format!("{addr}/{PREFIX6}");
        let client6 = on_lan(ipv6_of(CLIENT_ADDR));
        self.client
            .ip(&["-6", "addr", "add", &client6, "dev", POD_IFACE, "nodad"])?;
        for node in Node::ALL {
            let topology = &self.nodes[node.index()];
            topology.add_ipv6()?;
            let netns = topology.node();
            let addr = on_lan(node.addr6());
            netns.ip(&["-6", "addr", "add", &addr, "dev", LAN_IFACE, "nodad"])?;
            let other = node.other();
            let pods = format!("{}/{PREFIX6}", ipv6_of(network.pod_net(other)));
            let via = other.addr6().to_string();
            netns.ip(&["-6", "route", "add", &pods, "via", &via])?;
        }
        wait_for_dad(&self.client)
    }

    /// Starts a file-mode agent on `node` reading `manifests` as `setup` says (TC on its pods'
    /// veths by name, or auto-attach), with XDP on [`LAN_IFACE`], and waits until it is ready
    /// (and, with auto-attach, has attached its pods' veths).
    fn start_agent(&mut self, node: Node, manifests: &Path, setup: &Setup) -> Result<()> {
        let topology = &self.nodes[node.index()];
        let auto_attach = !setup.iface_patterns.is_empty();
        let ifaces = if auto_attach {
            Vec::new()
        } else {
            topology.host_ifaces()
        };
        let mut options = AgentOptions::new(topology.id(), manifests, ifaces);
        options.iface_patterns = setup.iface_patterns.clone();
        options.xdp_iface = Some(LAN_IFACE.to_string());
        if node == Node::A {
            options.cgroup = setup.node_a_cgroup.clone();
        }
        let addr = node.addr().to_string();
        options.extra_args = ["--node-name", node.name(), "--node-address", &addr]
            .iter()
            .map(|arg| arg.to_string())
            .chain(if node == Node::A {
                setup.node_a_args.clone()
            } else {
                Vec::new()
            })
            .collect();
        let mut agent = Agent::start(topology.node(), options)?;
        if auto_attach {
            for iface in topology.host_ifaces() {
                agent.wait_for_log(&tc_attached(&iface), 1, ATTACH_TIMEOUT)?;
            }
        }
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

    /// The pod `name` of `node` (one [`TwoNodes::add_pod`] added).
    pub fn pod_named(&self, node: Node, name: &str) -> &Pod {
        self.nodes[node.index()].pod(name)
    }

    /// The outside client's namespace.
    pub fn client(&self) -> &NetNs {
        &self.client
    }

    /// The agent of `node`.
    pub fn agent(&self, node: Node) -> &Agent {
        &self.agents[&node]
    }

    /// Kills `node`'s agent with SIGKILL (its maps and links stay pinned), runs `while_down`,
    /// then starts a new agent with the same options, which adopts the pins, and waits until
    /// it is ready.
    pub fn restart_agent(&mut self, node: Node, while_down: impl FnOnce(&TwoNodes)) -> Result<()> {
        self.agent_mut(node).kill()?;
        while_down(self);
        let options = self.agent(node).options().clone();
        let agent = Agent::start(self.node(node), options)?;
        self.agents.insert(node, agent);
        Ok(())
    }

    /// The agent of `node`, to wait for its logs.
    pub fn agent_mut(&mut self, node: Node) -> &mut Agent {
        self.agents
            .get_mut(&node)
            .unwrap_or_else(|| panic!("{} runs no agent", node.name()))
    }

    /// Packets `node`'s [`VXLAN_IFACE`] received so far (what arrived over the overlay).
    pub fn vxlan_rx_packets(&self, node: Node) -> Result<u64> {
        let path = format!("/sys/class/net/{VXLAN_IFACE}/statistics/rx_packets");
        // `ip netns exec` mounts the namespace's own sysfs.
        let count = cmd::run(
            "ip",
            &["netns", "exec", self.node(node).name(), "cat", &path],
        )?;
        count.trim().parse().map_err(|e| Error::Invalid {
            what: format!("{path} in {}", self.node(node).name()),
            reason: format!("{e}: {count:?}"),
        })
    }

    /// The namespace of `node`.
    pub fn node(&self, node: Node) -> &NetNs {
        self.nodes[node.index()].node()
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
        requests_from(&self.client, protocol, target, count)
    }
}

/// [`TwoNodes::requests`] from `netns` (a pod's, say) instead of the client's.
pub fn requests_from(
    netns: &NetNs,
    protocol: Protocol,
    target: SocketAddrV4,
    count: usize,
) -> Result<Vec<io::Result<Reply>>> {
    netns.run(|| {
        (0..count)
            .map(|_| protocol.request(target, REQUEST_TIMEOUT))
            .collect()
    })
}

/// A NodePort Service `name` in namespace `e2e` at `cluster_ip` (either family) with TCP 80 ->
/// 8080 and UDP 53 -> 8053 ([`POD_PORTS`]) on `node_ports`, `policy` as externalTrafficPolicy
/// and `extra` as further `spec` lines, and its EndpointSlice with `endpoints` (pod address of
/// the cluster IP's family, its node).
pub fn node_port_service<A: Copy + Into<IpAddr>>(
    name: &str,
    cluster_ip: A,
    policy: &str,
    node_ports: [(Protocol, u16); 2],
    extra: &str,
    endpoints: &[(A, Node)],
) -> String {
    let [(_, tcp), (_, udp)] = node_ports;
    let cluster_ip: IpAddr = cluster_ip.into();
    let family = if cluster_ip.is_ipv6() { "IPv6" } else { "IPv4" };
    let endpoints: String = endpoints
        .iter()
        .map(|&(addr, node)| {
            let addr: IpAddr = addr.into();
            format!(
                "  - {{addresses: [\"{addr}\"], nodeName: {}}}\n",
                node.name()
            )
        })
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: e2e}}
spec:
  type: NodePort
  clusterIP: "{cluster_ip}"
  ipFamilies: [{family}]
  externalTrafficPolicy: {policy}
{extra}  ports:
  - {{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: {tcp}}}
  - {{name: dns, protocol: UDP, port: 53, targetPort: 8053, nodePort: {udp}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: e2e
  labels: {{kubernetes.io/service-name: {name}}}
addressType: {family}
ports:
  - {{name: http, protocol: TCP, port: 8080}}
  - {{name: dns, protocol: UDP, port: 8053}}
endpoints:
{endpoints}"#
    )
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
