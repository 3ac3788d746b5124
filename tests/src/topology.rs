//! A node with pods, wired as kind's ptp CNI does: a "node" network namespace and one namespace
//! per pod, joined by veth pairs. The node side of every veth holds the gateway address
//! [`GATEWAY`]/32 and a /32 route to its pod; the pod has its address/32 on `eth0` and a
//! default route via the gateway. The node forwards (ip_forward=1) with rp_filter off, since
//! replies translated back to a VIP arrive on a pod's veth that has no route to the VIP.
//!
//! [`Topology::add_ipv6`] makes the pods dual-stack: each pod also gets [`ipv6_of`] its IPv4
//! address /128, the node's veth ends [`GATEWAY6`]/128 and a /128 route to their pod, and the
//! node forwards IPv6 too.
//!
//! Optionally an "outside" namespace stands for the world beyond the node: a veth pair joins
//! it to the node's external interface [`EXTERNAL_IFACE`] ([`NODE_IP`]/24, where the agent
//! attaches XDP), and it routes everything via the node, so NodePort, LoadBalancer and
//! external IP traffic enters the node the way it would from a wire.

use std::net::{Ipv4Addr, Ipv6Addr};

pub mod lan;
mod xdp_pass;

use xdp_pass::XdpPass;

use crate::{cmd, error::io_context, netns::NetNs, Error, Result};

/// Node-side address of every pod veth, the pods' default gateway (a link-local-like /32, as
/// kind's ptp CNI uses the node's pod-CIDR gateway).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Node-side IPv6 address of every pod veth once [`Topology::add_ipv6`] ran: the pods'
/// IPv6 default gateway.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0xffff, 0, 0, 0, 0, 1);
/// Address of the client pod in [`Topology::client_and_backends`].
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// Name of the client pod in [`Topology::client_and_backends`].
pub const CLIENT: &str = "client";
/// Interface name of every pod's end of its veth.
pub const POD_IFACE: &str = "eth0";
/// The node's external interface (node namespace side of the outside veth).
pub const EXTERNAL_IFACE: &str = "ext0";
/// The node's address on [`EXTERNAL_IFACE`]: its InternalIP, where NodePorts are served.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Address of the outside client, on the node's external subnet.
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// Prefix length of the external subnet.
const EXTERNAL_PREFIX: u8 = 24;
/// Prefix length of the external IPv6 subnet (see [`Topology::add_ipv6`]).
const EXTERNAL_PREFIX6: u8 = 120;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_IFACE_NAME: usize = 15;

/// Name of backend `index` in [`Topology::client_and_backends`].
pub fn backend_name(index: usize) -> String {
    format!("backend-{index}")
}

/// Address of backend `index` in [`Topology::client_and_backends`]: 198.18.0.11, .12, ...
pub fn backend_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + index as u8)
}

/// A pod's IPv6 address: its IPv4 address in the low 32 bits of 2001:2::/96.
pub fn ipv6_of(v4: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from((0x2001_0002_u128 << 96) | u128::from(u32::from(v4)))
}

/// Fails for an interface name longer than the kernel accepts.
fn check_iface_name(iface: &str) -> Result<()> {
    if iface.len() > MAX_IFACE_NAME {
        return Err(Error::Invalid {
            what: format!("interface name {iface:?}"),
            reason: format!("longer than {MAX_IFACE_NAME} bytes"),
        });
    }
    Ok(())
}

/// `iface` as a component of a dotted sysctl key, where a `.` in a name is written as `/`
/// (sysctl(8)'s convention: `net.ipv4.conf.eth0/100.rp_filter`).
fn sysctl_name(iface: &str) -> String {
    iface.replace('.', "/")
}

/// How long duplicate address detection of the veths' link-local addresses may take.
const DAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until `netns` has no tentative IPv6 address: until the veths' link-local addresses
/// have passed duplicate address detection (about a second after they came up), neighbour
/// discovery holds the first packets to a new neighbour back for a second or more.
pub fn wait_for_dad(netns: &NetNs) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let tentative = netns.ip(&["-6", "addr", "show", "tentative"])?;
        if tentative.trim().is_empty() {
            return Ok(());
        }
        if start.elapsed() > DAD_TIMEOUT {
            return Err(Error::Invalid {
                what: format!("IPv6 addresses in {}", netns.name()),
                reason: format!("still tentative after {DAD_TIMEOUT:?}: {tentative}"),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One pod: its namespace, address and the node-side end of its veth.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub addr: Ipv4Addr,
    /// Name of the veth end in the node namespace (where the agent attaches).
    pub host_iface: String,
    pub netns: NetNs,
}

/// The outside client: a namespace on the node's external subnet.
#[derive(Debug)]
pub struct Outside {
    pub addr: Ipv4Addr,
    /// The node's interface to it.
    iface: String,
    // Detached before the namespace goes.
    _xdp_pass: XdpPass,
    pub netns: NetNs,
}

/// Default prefix of the pods' node-side veth names.
const HOST_PREFIX: &str = "v-";

/// A node namespace and its pods; all namespaces (and so all veths) are deleted on drop.
#[derive(Debug)]
pub struct Topology {
    id: String,
    /// Prefix of the pods' node-side veth names.
    host_prefix: &'static str,
    // Field order is drop order: the node goes last.
    pods: Vec<Pod>,
    outside: Option<Outside>,
    node: NetNs,
}

impl Topology {
    /// Builds a node with the given pods (name, address). Namespace names carry a prefix unique
    /// to this process and call, so topologies can coexist.
    pub fn new(pods: &[(&str, Ipv4Addr)]) -> Result<Topology> {
        Topology::with_host_prefix(HOST_PREFIX, pods)
    }

    /// [`Topology::new`] with the pods' node-side veths named `<host_prefix><name>`, e.g.
    /// `veth-` as CNI plugins name them, which the agent's default auto-attach patterns match.
    pub fn with_host_prefix(
        host_prefix: &'static str,
        pods: &[(&str, Ipv4Addr)],
    ) -> Result<Topology> {
        let id = crate::netns::unique_prefix();
        let node = NetNs::create(&format!("{id}-node"))?;
        node.set_sysctl("net.ipv4.ip_forward", "1")?;
        node.set_sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        node.set_sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        let mut topology = Topology {
            id,
            host_prefix,
            pods: Vec::with_capacity(pods.len()),
            outside: None,
            node,
        };
        for (name, addr) in pods {
            topology.add_pod(name, *addr)?;
        }
        Ok(topology)
    }

    /// A client pod ([`CLIENT`] at [`CLIENT_ADDR`]) and `backends` backend pods
    /// ([`backend_name`] at [`backend_addr`]).
    pub fn client_and_backends(backends: usize) -> Result<Topology> {
        let names: Vec<String> = (0..backends).map(backend_name).collect();
        let mut pods = vec![(CLIENT, CLIENT_ADDR)];
        pods.extend(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), backend_addr(i))),
        );
        Topology::new(&pods)
    }

    /// Adds a pod (also while an agent runs, as a CNI would): its namespace, a veth whose node
    /// end is `v-<name>` (or with the prefix of [`Topology::with_host_prefix`]), and the /32
    /// routes.
    pub fn add_pod(&mut self, name: &str, addr: Ipv4Addr) -> Result<&Pod> {
        let pod = self.make_pod(name, addr)?;
        self.pods.push(pod);
        Ok(&self.pods[self.pods.len() - 1])
    }

    /// Deletes pod `name` (its namespace, and so its veth); false if there is none.
    pub fn remove_pod(&mut self, name: &str) -> bool {
        let before = self.pods.len();
        self.pods.retain(|p| p.name != name);
        self.pods.len() != before
    }

    fn make_pod(&self, name: &str, addr: Ipv4Addr) -> Result<Pod> {
        let host_iface = format!("{}{name}", self.host_prefix);
        check_iface_name(&host_iface)?;
        let netns = NetNs::create(&format!("{}-{name}", self.id))?;
        let node = &self.node;
        node.ip(&[
            "link",
            "add",
            &host_iface,
            "type",
            "veth",
            "peer",
            "name",
            POD_IFACE,
            "netns",
            netns.name(),
        ])?;
        node.set_sysctl(
            &format!("net.ipv4.conf.{}.rp_filter", sysctl_name(&host_iface)),
            "0",
        )?;
        node.ip(&["addr", "add", &format!("{GATEWAY}/32"), "dev", &host_iface])?;
        node.ip(&["link", "set", &host_iface, "up"])?;
        node.ip(&[
            "route",
            "add",
            &format!("{addr}/32"),
            "dev",
            &host_iface,
            "scope",
            "host",
        ])?;
        netns.ip(&["addr", "add", &format!("{addr}/32"), "dev", POD_IFACE])?;
        netns.ip(&["link", "set", POD_IFACE, "up"])?;
        let gateway = GATEWAY.to_string();
        netns.ip(&["route", "add", &gateway, "dev", POD_IFACE, "scope", "link"])?;
        netns.ip(&["route", "add", "default", "via", &gateway, "dev", POD_IFACE])?;
        Ok(Pod {
            name: name.to_string(),
            addr,
            host_iface,
            netns,
        })
    }

    /// Makes every pod, and the outside namespace if added before, dual-stack (see the module
    /// documentation; the node's external interface gets `ipv6_of(NODE_IP)`, the outside
    /// `ipv6_of(OUTSIDE_ADDR)`, on a /120). Addresses skip duplicate address detection, so they
    /// are usable at once.
    pub fn add_ipv6(&self) -> Result<()> {
        self.node.set_sysctl("net.ipv6.conf.all.forwarding", "1")?;
        if let Some(outside) = &self.outside {
            let node_ip = ipv6_of(NODE_IP).to_string();
            let on_subnet = |addr: &str| format!("{addr}/{EXTERNAL_PREFIX6}");
            let iface = &outside.iface;
            self.node.ip(&[
                "-6",
                "addr",
                "add",
                &on_subnet(&node_ip),
                "dev",
                iface,
                "nodad",
            ])?;
            let outside_addr = on_subnet(&ipv6_of(OUTSIDE_ADDR).to_string());
            let netns = &outside.netns;
            netns.ip(&[
                "-6",
                "addr",
                "add",
                &outside_addr,
                "dev",
                POD_IFACE,
                "nodad",
            ])?;
            netns.ip(&[
                "-6", "route", "add", "default", "via", &node_ip, "dev", POD_IFACE,
            ])?;
        }
        let gateway = GATEWAY6.to_string();
        for pod in &self.pods {
            let addr = ipv6_of(pod.addr).to_string();
            let iface = &pod.host_iface;
            let node = &self.node;
            node.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{gateway}/128"),
                "dev",
                iface,
                "nodad",
            ])?;
            node.ip(&["-6", "route", "add", &format!("{addr}/128"), "dev", iface])?;
            let netns = &pod.netns;
            netns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr}/128"),
                "dev",
                POD_IFACE,
                "nodad",
            ])?;
            netns.ip(&["-6", "route", "add", &gateway, "dev", POD_IFACE])?;
            netns.ip(&[
                "-6", "route", "add", "default", "via", &gateway, "dev", POD_IFACE,
            ])?;
        }
        let mut namespaces = vec![&self.node];
        namespaces.extend(self.pods.iter().map(|pod| &pod.netns));
        namespaces.extend(self.outside.as_ref().map(|outside| &outside.netns));
        namespaces.into_iter().try_for_each(wait_for_dad)
    }

    /// Adds the outside namespace ([`OUTSIDE_ADDR`]) joined to the node's [`EXTERNAL_IFACE`]
    /// ([`NODE_IP`]). Two settings make the outside's veth behave like a wire: transmit
    /// checksum offload is off, so its frames carry complete checksums (the node's XDP program
    /// rewrites them incrementally and cannot complete a partial one); and it runs a
    /// pass-through XDP program, without which a veth drops the frames its peer's XDP program
    /// sends back with `XDP_TX` (the node's rejects).
    pub fn add_outside(&mut self) -> Result<&Outside> {
        self.add_outside_on(EXTERNAL_IFACE)
    }

    /// [`Topology::add_outside`] with `iface` as the node's external interface instead of
    /// [`iface`].
    pub fn add_outside_on(&mut self, iface: &str) -> Result<&Outside> {
        check_iface_name(iface)?;
        let netns = NetNs::create(&format!("{}-outside", self.id))?;
        let node = &self.node;
        node.ip(&[
            "link",
            "add",
            iface,
            "type",
            "veth",
            "peer",
            "name",
            POD_IFACE,
            "netns",
            netns.name(),
        ])?;
        node.set_sysctl(
            &format!("net.ipv4.conf.{}.rp_filter", sysctl_name(iface)),
            "0",
        )?;
        let node_addr = format!("{NODE_IP}/{EXTERNAL_PREFIX}");
        node.ip(&["addr", "add", &node_addr, "dev", iface])?;
        node.ip(&["link", "set", iface, "up"])?;
        let outside_addr = format!("{OUTSIDE_ADDR}/{EXTERNAL_PREFIX}");
        netns.ip(&["addr", "add", &outside_addr, "dev", POD_IFACE])?;
        netns.ip(&["link", "set", POD_IFACE, "up"])?;
        let node_ip = NODE_IP.to_string();
        netns.ip(&["route", "add", "default", "via", &node_ip, "dev", POD_IFACE])?;
        let netns_name = netns.name().to_string();
        cmd::run(
            "ip",
            &[
                "netns",
                "exec",
                &netns_name,
                "ethtool",
                "-K",
                POD_IFACE,
                "tx",
                "off",
            ],
        )?;
        let xdp_pass = netns
            .run(|| XdpPass::attach(POD_IFACE))?
            .map_err(io_context(format!(
                "cannot attach a pass-through XDP program to {POD_IFACE} in {netns_name}"
            )))?;
        Ok(self.outside.insert(Outside {
            addr: OUTSIDE_ADDR,
            iface: iface.to_string(),
            _xdp_pass: xdp_pass,
            netns,
        }))
    }

    /// The outside namespace; panics if [`Topology::add_outside`] was not called (a bug in
    /// the calling test).
    pub fn outside(&self) -> &Outside {
        self.outside
            .as_ref()
            .unwrap_or_else(|| panic!("topology {} has no outside namespace", self.id))
    }

    /// Unique id of this topology (`lbt-<pid>-<n>`), also usable for per-test paths.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The node namespace (where the agent runs and the veths' node ends live).
    pub fn node(&self) -> &NetNs {
        &self.node
    }

    /// All pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod called `name`; panics if there is none (a bug in the calling test).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?} in topology {}", self.id))
    }

    /// Node-side interface names of all pods (what the agent attaches to).
    pub fn host_ifaces(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.host_iface.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddrV4, time::Duration};

    use super::*;
    use crate::servers::{tcp_request, Server};

    #[test]
    fn the_outside_reaches_the_node_and_pods_reach_the_outside() {
        crate::require_root!();
        let mut topology = Topology::client_and_backends(0).unwrap();
        let outside_netns = topology.add_outside().unwrap().netns.name().to_string();
        let timeout = Duration::from_secs(2);
        let on_node = SocketAddrV4::new(NODE_IP, 9000);
        let _node_server = Server::tcp(topology.node(), on_node, "node").unwrap();
        let outside = topology.outside();
        let _outside_server = Server::tcp(
            &outside.netns,
            SocketAddrV4::new(OUTSIDE_ADDR, 9000),
            "outside",
        )
        .unwrap();
        let reply = outside
            .netns
            .run(|| tcp_request(on_node, timeout))
            .unwrap()
            .unwrap();
        assert_eq!(reply.from, "node");
        let to_outside = SocketAddrV4::new(OUTSIDE_ADDR, 9000);
        let client = topology.pod(CLIENT);
        let reply = client
            .netns
            .run(|| tcp_request(to_outside, timeout))
            .unwrap()
            .unwrap();
        assert_eq!(reply.from, "outside");
        let offload = crate::cmd::run(
            "ip",
            &["netns", "exec", &outside_netns, "ethtool", "-k", POD_IFACE],
        )
        .unwrap();
        assert!(offload.contains("tx-checksumming: off"), "{offload}");
        let link =
            crate::cmd::run("ip", &["-n", &outside_netns, "link", "show", POD_IFACE]).unwrap();
        assert!(
            link.contains("xdp"),
            "no XDP program on the outside's interface: {link}"
        );
        drop(topology);
        assert!(!std::path::Path::new("/run/netns")
            .join(&outside_netns)
            .exists());
    }
}
