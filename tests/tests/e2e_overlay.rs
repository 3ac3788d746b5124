//! End to end on two nodes whose pods talk over a VXLAN overlay set up as flannel's vxlan
//! backend does (`flannel.1` on each node, static routes, neighbour and FDB entries; see
//! [`lb_tests::cluster::two_node`]), with one real `lb-agent` per node in auto-attach mode on
//! the agent's default interface patterns (plus `v-*`, the harness's pod veths).
//!
//! (a) An outside client's NodePort request to node A lands on node B's pod: node A's XDP
//! program translates and masquerades it, it crosses to node B inside VXLAN, and node B's pod
//! answers node A's LAN address, which node A's XDP program translates back.
//! (b) A pod reaches a ClusterIP whose only endpoint is on the other node: its node's TC
//! program translates the request on the pod's veth, and the reply comes back inside VXLAN and
//! arrives on `flannel.1`, where only a TC program on `flannel.1` can translate it back to the
//! VIP. Without one the pod gets the reply from the remote pod's own address and drops it
//! (0 of 20 answered, as issue 9 reported).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use lb_tests::{
    agent::{tc_attached, ATTACH_TIMEOUT},
    cluster::{
        two_node::{
            node_port_service, requests_from, Node, PodNetwork, Setup, TwoNodes, POD_PORTS,
            VXLAN_IFACE,
        },
        Protocol,
    },
    inspect_output,
    netns::NetNs,
    require_root,
};
use lb_userspace::links::DEFAULT_PATTERNS;

/// Requests per protocol and frontend; each must be answered.
const REQUESTS: usize = 20;
const NETWORK: PodNetwork = PodNetwork::Vxlan;

/// A Service whose only endpoint is `node`'s pod.
struct OnlyOn {
    node: Node,
    cluster_ip: Ipv4Addr,
    node_ports: [(Protocol, u16); 2],
}

impl OnlyOn {
    fn name(&self) -> String {
        format!("on-{}", self.node.name())
    }

    fn manifest(&self) -> String {
        let endpoint = (NETWORK.pod_addr(self.node), self.node);
        node_port_service(
            &self.name(),
            self.cluster_ip,
            "Cluster",
            self.node_ports,
            "",
            &[endpoint],
        )
    }

    /// The ClusterIP frontend of `protocol`.
    fn cluster_ip(&self, protocol: Protocol) -> SocketAddrV4 {
        let port = match protocol {
            Protocol::Tcp => 80,
            Protocol::Udp => 53,
        };
        SocketAddrV4::new(self.cluster_ip, port)
    }

    /// The node port of `protocol` on `node`.
    fn node_port(&self, node: Node, protocol: Protocol) -> SocketAddrV4 {
        let (_, port) = self
            .node_ports
            .into_iter()
            .find(|(p, _)| *p == protocol)
            .unwrap();
        SocketAddrV4::new(node.addr(), port)
    }
}

const ON_A: OnlyOn = OnlyOn {
    node: Node::A,
    cluster_ip: Ipv4Addr::new(198, 19, 6, 10),
    node_ports: [(Protocol::Tcp, 30081), (Protocol::Udp, 30054)],
};
const ON_B: OnlyOn = OnlyOn {
    node: Node::B,
    cluster_ip: Ipv4Addr::new(198, 19, 6, 11),
    node_ports: [(Protocol::Tcp, 30080), (Protocol::Udp, 30053)],
};

/// Both nodes, each agent auto-attaching on the default patterns, once both have attached
/// TC to `flannel.1`; the manifests directory lives as long as the cluster.
fn start() -> (TwoNodes, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = format!("{}---\n{}", ON_A.manifest(), ON_B.manifest());
    std::fs::write(dir.path().join("services.yaml"), manifests).unwrap();
    let iface_patterns = ["v-*"]
        .iter()
        .chain(DEFAULT_PATTERNS)
        .map(|p| p.to_string())
        .collect();
    let setup = Setup {
        network: NETWORK,
        iface_patterns,
        ..Setup::default()
    };
    let mut cluster = TwoNodes::start_with(dir.path(), &setup).unwrap();
    for node in Node::ALL {
        let agent = cluster.agent_mut(node);
        if let Err(e) = agent.wait_for_log(&tc_attached(VXLAN_IFACE), 1, ATTACH_TIMEOUT) {
            panic!("{node:?}'s agent did not attach to {VXLAN_IFACE} on its defaults: {e}");
        }
    }
    (cluster, dir)
}

/// Node-wide counter `name` in `lb-agent inspect` output of `node`'s agent (0 if absent).
fn counter(cluster: &TwoNodes, node: Node, name: &str) -> u64 {
    let inspect = cluster.agent(node).inspect().unwrap();
    inspect_output::counter(&inspect, name).unwrap_or(0)
}

/// Asserts that `count` requests from `netns` to `target` were all answered by `node`'s pod
/// from `target`, and that they crossed the overlay: `over`'s `flannel.1` received packets.
fn all_answered_by(
    cluster: &TwoNodes,
    from: &NetNs,
    protocol: Protocol,
    target: SocketAddrV4,
    node: Node,
    over: Node,
) {
    let before = cluster.vxlan_rx_packets(over).unwrap();
    let replies = requests_from(from, protocol, target, REQUESTS).unwrap();
    let (answered, failed): (Vec<_>, Vec<_>) = replies.into_iter().partition(|reply| {
        reply
            .as_ref()
            .is_ok_and(|r| r.peer == SocketAddr::V4(target) && r.from == node.pod_name())
    });
    eprintln!(
        "{protocol} to {target} from {}: {} of {REQUESTS} answered by {} from {target}",
        from.name(),
        answered.len(),
        node.pod_name()
    );
    assert!(
        failed.is_empty(),
        "{protocol} to {target}: {} of {REQUESTS} answered by {} from {target}; the others: \
         {failed:?}",
        answered.len(),
        node.pod_name()
    );
    let received = cluster.vxlan_rx_packets(over).unwrap() - before;
    assert!(
        received >= REQUESTS as u64,
        "{protocol} to {target}: only {received} packets arrived on {over:?}'s {VXLAN_IFACE}"
    );
}

#[test]
fn an_outside_clients_node_port_request_reaches_the_other_nodes_pod_over_the_overlay() {
    require_root!();
    let (cluster, _dir) = start();
    // Masqueraded flows, as pod-b saw them: each has its own port on node A's address (a
    // fresh UDP socket may get an earlier one's port and continue its flow).
    let mut flows = 0;
    for (protocol, _) in POD_PORTS {
        let target = ON_B.node_port(Node::A, protocol);
        let before = cluster.peers(Node::B, protocol).len();
        all_answered_by(
            &cluster,
            cluster.client(),
            protocol,
            target,
            Node::B,
            Node::B,
        );
        // Masqueraded to node A's LAN address: pod-b's replies go back to node A over the LAN.
        let seen = cluster.peers(Node::B, protocol).split_off(before);
        assert!(
            seen.len() == REQUESTS && seen.iter().all(|p| p.ip() == IpAddr::V4(Node::A.addr())),
            "{protocol}: pod-b saw {seen:?}"
        );
        flows += seen.iter().collect::<BTreeSet<_>>().len();
    }
    assert!(flows >= 2 * REQUESTS - 2, "{flows} flows");
    assert!(counter(&cluster, Node::A, "masqueraded") >= flows as u64);
    // Masqueraded packets carry node A's address: sent on without accept_local.
    assert_eq!(
        cluster.node(Node::A).accept_local_on().unwrap(),
        [] as [String; 0]
    );
}

#[test]
fn a_pod_reaches_a_cluster_ip_whose_only_endpoint_is_on_the_other_node_over_the_overlay() {
    require_root!();
    let (cluster, _dir) = start();
    for (service, client) in [(&ON_B, Node::A), (&ON_A, Node::B)] {
        let server = service.node;
        let pod = cluster.pod(client);
        for (protocol, _) in POD_PORTS {
            let target = service.cluster_ip(protocol);
            let before = cluster.peers(server, protocol).len();
            let replies_before = counter(&cluster, client, "reply_translated");
            // The request crosses to the server's node, the reply back to the client's:
            // that is where it must be translated.
            all_answered_by(&cluster, &pod.netns, protocol, target, server, client);
            // Pod traffic keeps the pod's address: no masquerading.
            let seen = cluster.peers(server, protocol).split_off(before);
            assert!(
                seen.len() == REQUESTS && seen.iter().all(|p| p.ip() == IpAddr::V4(pod.addr)),
                "{protocol} to {target}: {server:?}'s pod saw {seen:?}"
            );
            let replies = counter(&cluster, client, "reply_translated") - replies_before;
            assert!(
                replies >= REQUESTS as u64,
                "{protocol} to {target}: {client:?} translated only {replies} replies"
            );
        }
    }
}
