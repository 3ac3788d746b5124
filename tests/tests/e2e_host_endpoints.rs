//! End to end: a Service whose only endpoint is a server on node A's own address (a
//! host-network pod, `nodeName: node-a`), on the two-node topology
//! ([`lb_tests::cluster::two_node`]), with real sockets and the real agents.
//!
//! On node A the endpoint is local: a pod's request is translated on its veth and delivered to
//! the node's own stack, an outside client's on the XDP interface, and the node's own
//! processes are connected to it by the socket programs (node A's agent translates a test
//! cgroup's sockets). The stack's replies leave through the pod's veth or the LAN interface,
//! where the TC egress program translates them back: every client sees the Service address
//! it asked as the peer, and the server sees the real client (nothing is masqueraded). On
//! node B the same endpoint is remote: its pod's replies come back over the LAN to node B's
//! XDP program, and an outside client's NodePort flow is masqueraded to node B.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    cgroup::{SockClient, TestCgroup},
    cluster::{
        two_node::{node_port_service, requests_from, Node, Setup, TwoNodes, CLIENT_ADDR},
        Protocol,
    },
    netns::unique_prefix,
    require_root,
    servers::Server,
};

const REQUESTS: usize = 10;
/// The Service's cluster IP.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 6, 10);
/// The Service's node ports, per protocol.
const NODE_PORTS: [(Protocol, u16); 2] = [(Protocol::Tcp, 30080), (Protocol::Udp, 30053)];
/// What the host-network server answers with.
const HOST_SERVER: &str = "host-a";
const CLIENT: &str = env!("CARGO_BIN_EXE_lb-sock-client");

/// The cluster IP's port (the Service port) for `protocol`.
fn service_port(protocol: Protocol) -> u16 {
    match protocol {
        Protocol::Tcp => 80,
        Protocol::Udp => 53,
    }
}

fn node_port(protocol: Protocol) -> u16 {
    NODE_PORTS
        .iter()
        .find(|(p, _)| *p == protocol)
        .map(|(_, port)| *port)
        .unwrap()
}

/// The Service (NodePort, externalTrafficPolicy: Cluster) with node A's address as its one
/// endpoint.
fn manifests() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = [(Node::A.addr(), Node::A)];
    let service = node_port_service("host", VIP, "Cluster", NODE_PORTS, "", &endpoint);
    fs::write(dir.path().join("host.yaml"), service).unwrap();
    dir
}

/// The cgroup v2 root, found as the agent finds it.
fn cgroup_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    lb_userspace::agent::cgroup2_root(&mountinfo).expect("a cgroup v2 mount")
}

/// Node A's host-network server: TCP and UDP on its address, at the Service's target ports.
fn host_servers(cluster: &TwoNodes) -> [(Protocol, Server); 2] {
    let node = cluster.node(Node::A);
    let tcp = SocketAddrV4::new(Node::A.addr(), 8080);
    let udp = SocketAddrV4::new(Node::A.addr(), 8053);
    [
        (Protocol::Tcp, Server::tcp(node, tcp, HOST_SERVER).unwrap()),
        (Protocol::Udp, Server::udp(node, udp, HOST_SERVER).unwrap()),
    ]
}

/// Sends [`REQUESTS`] requests from `netns` to `target`; panics unless the host server
/// answered each one with `target` as the peer.
fn answered_from_target(netns: &lb_tests::netns::NetNs, protocol: Protocol, target: SocketAddrV4) {
    let replies = requests_from(netns, protocol, target, REQUESTS).unwrap();
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply.unwrap_or_else(|e| panic!("{protocol} request {i} to {target}: {e}"));
        assert_eq!(
            reply.from, HOST_SERVER,
            "{protocol} request {i} to {target}"
        );
        assert_eq!(reply.peer, SocketAddr::V4(target), "{protocol} request {i}");
    }
}

/// The addresses the server of `protocol` saw since it had served `since` requests.
fn peers_since(
    servers: &[(Protocol, Server)],
    protocol: Protocol,
    since: usize,
) -> BTreeSet<IpAddr> {
    let (_, server) = servers.iter().find(|(p, _)| *p == protocol).unwrap();
    server.peers()[since..].iter().map(|p| p.ip()).collect()
}

fn served(servers: &[(Protocol, Server)], protocol: Protocol) -> usize {
    let (_, server) = servers.iter().find(|(p, _)| *p == protocol).unwrap();
    server.served()
}

#[test]
fn a_host_network_endpoint_answers_pods_outside_clients_and_nodes_from_the_service_address() {
    require_root!();
    let cgroup = TestCgroup::create(&cgroup_root(), &unique_prefix()).unwrap();
    let dir = manifests();
    let setup = Setup {
        node_a_cgroup: Some(cgroup.path().to_path_buf()),
        ..Setup::default()
    };
    let cluster = TwoNodes::start_with(dir.path(), &setup).unwrap();
    let servers = host_servers(&cluster);
    let (pod_a, pod_b) = (cluster.pod(Node::A), cluster.pod(Node::B));

    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let cluster_ip = SocketAddrV4::new(VIP, service_port(protocol));
        // Local endpoint: from node A's pod (TC ingress, replies through TC egress on its
        // veth) and from the outside client through node A's node port (XDP, replies through
        // TC egress on the LAN interface); neither is masqueraded.
        let before = served(&servers, protocol);
        answered_from_target(&pod_a.netns, protocol, cluster_ip);
        let node_a_port = SocketAddrV4::new(Node::A.addr(), node_port(protocol));
        answered_from_target(cluster.client(), protocol, node_a_port);
        assert_eq!(
            peers_since(&servers, protocol, before),
            BTreeSet::from([IpAddr::V4(pod_a.addr), IpAddr::V4(CLIENT_ADDR)]),
            "{protocol}"
        );

        // Remote endpoint: from node B's pod (the reply crosses the LAN to node B's XDP) and
        // through node B's node port (masqueraded to node B, whose XDP translates back).
        let before = served(&servers, protocol);
        answered_from_target(&pod_b.netns, protocol, cluster_ip);
        let node_b_port = SocketAddrV4::new(Node::B.addr(), node_port(protocol));
        answered_from_target(cluster.client(), protocol, node_b_port);
        assert_eq!(
            peers_since(&servers, protocol, before),
            BTreeSet::from([IpAddr::V4(pod_b.addr), IpAddr::V4(Node::B.addr())]),
            "{protocol}"
        );
    }

    // Node A's own processes: the socket programs connect them to the server directly.
    let mut node_client =
        SockClient::start(Path::new(CLIENT), cluster.node(Node::A), Some(&cgroup)).unwrap();
    for (kind, protocol) in [
        ("tcp", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("udpu", Protocol::Udp),
    ] {
        for target in [
            SocketAddrV4::new(VIP, service_port(protocol)),
            SocketAddrV4::new(Node::A.addr(), node_port(protocol)),
        ] {
            for i in 0..REQUESTS {
                let reply = node_client
                    .ask(&format!("{kind} {target}"))
                    .unwrap_or_else(|e| panic!("{kind} request {i} to {target}: {e}"));
                assert_eq!(reply.from, HOST_SERVER, "{kind} request {i} to {target}");
                assert_eq!(reply.peer, SocketAddr::V4(target), "{kind} request {i}");
            }
        }
    }
}

#[test]
fn the_egress_links_are_readopted_and_without_one_the_pods_connections_fail() {
    require_root!();
    let dir = manifests();
    let mut cluster = TwoNodes::start(dir.path(), &[]).unwrap();
    let _servers = host_servers(&cluster);
    let tcp_vip = SocketAddrV4::new(VIP, service_port(Protocol::Tcp));
    answered_from_target(&cluster.pod(Node::A).netns, Protocol::Tcp, tcp_vip);

    // The pod's veth loses its egress link while no agent runs: the server's answers leave
    // from the node's address, which the pod's socket does not know. The kernel detaches a
    // link whose last pin is removed from a work queue, so on a busy node it may still
    // translate for a moment.
    let links = cluster.agent(Node::A).options().bpffs_dir.join("links");
    let veth = cluster.pod(Node::A).host_iface.clone();
    let pin = links.join(format!("{veth}-tc-egress"));
    assert!(links.join("lan0-tc-egress").exists());
    cluster
        .restart_agent(Node::A, |cluster| {
            fs::remove_file(&pin).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let replies =
                    requests_from(&cluster.pod(Node::A).netns, Protocol::Tcp, tcp_vip, 3).unwrap();
                if replies.iter().all(|r| r.is_err()) {
                    break;
                }
                assert!(Instant::now() < deadline, "{replies:?}");
                thread::sleep(Duration::from_millis(200));
            }
        })
        .unwrap();

    // The restarted agent attaches it anew and swaps its program into the other pinned links.
    assert!(pin.exists());
    let log = cluster.agent(Node::A).log();
    for expected in [
        format!("attached lb_tc_egress to {veth} egress"),
        "replaced the program in the pinned tcx egress link of lan0".to_string(),
    ] {
        assert!(log.contains(&expected), "no {expected:?} in:\n{log}");
    }
    answered_from_target(&cluster.pod(Node::A).netns, Protocol::Tcp, tcp_vip);
    let node_port = SocketAddrV4::new(Node::A.addr(), node_port(Protocol::Tcp));
    answered_from_target(cluster.client(), Protocol::Tcp, node_port);
}
