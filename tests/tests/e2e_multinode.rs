//! End to end on two nodes: an outside client's requests to node A's NodePort and to an
//! external IP routed to node A are balanced over a pod on node A and a pod on node B.
//!
//! externalTrafficPolicy: Cluster flows to node B's pod are masqueraded to node A's address,
//! so node B's pod answers node A, which translates the reply back; flows to node A's own pod
//! keep the client's address. externalTrafficPolicy: Local keeps the client's address and
//! never leaves node A. Topology: [`lb_tests::cluster::two_node`]; node B reaches the client
//! directly over the LAN, so without masquerading its pod's replies bypass node A and the
//! connections break (the second test shows that they do). A closed connection's port goes
//! to a later one once the close timeout has passed, and an ICMP error from node B's pod
//! reaches the client translated.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::RangeInclusive,
    time::Duration,
};

use lb_tests::{
    cluster::{
        kube::connected_udp_request,
        two_node::{node_port_service, Node, TwoNodes, CLIENT_ADDR, LAN_IFACE},
        Protocol,
    },
    inspect_output, require_root,
};

/// Requests per protocol and frontend: pod-b gets about half; all of them land on one pod
/// with odds of 2 x 2^-40.
const REQUESTS: usize = 40;
/// Ports masqueraded flows leave node A with (`--masquerade-ports`; the address is the
/// default, node A's address on its XDP interface).
const SNAT_PORTS: RangeInclusive<u16> = 62000..=62999;
/// The Cluster service's node ports, per protocol.
const CLUSTER_NODE_PORTS: [(Protocol, u16); 2] = [(Protocol::Tcp, 30080), (Protocol::Udp, 30053)];
/// The Local service's node ports, per protocol.
const LOCAL_NODE_PORTS: [(Protocol, u16); 2] = [(Protocol::Tcp, 30081), (Protocol::Udp, 30054)];
/// The Cluster service's external IP (the client routes 198.19.0.0/16 via node A).
const EXTERNAL_IP: [u8; 4] = [198, 19, 5, 100];

/// A NodePort Service `name` (cluster IP 198.19.5.`octet`) with TCP 80 -> 8080 and UDP 53 ->
/// 8053 on `node_ports`, `policy` as externalTrafficPolicy, and its EndpointSlice with the
/// pods of `nodes`.
fn service(
    name: &str,
    octet: u8,
    policy: &str,
    node_ports: [(Protocol, u16); 2],
    extra: &str,
    nodes: &[Node],
) -> String {
    let endpoints: Vec<(Ipv4Addr, Node)> = nodes.iter().map(|&n| (n.pod_addr(), n)).collect();
    node_port_service(
        name,
        Ipv4Addr::new(198, 19, 5, octet),
        policy,
        node_ports,
        extra,
        &endpoints,
    )
}

/// Both nodes read this directory: Service `cluster` (eTP Cluster, with [`EXTERNAL_IP`]) and
/// Service `local` (eTP Local).
fn manifests() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let external = IpAddr::from(EXTERNAL_IP);
    let cluster = service(
        "cluster",
        10,
        "Cluster",
        CLUSTER_NODE_PORTS,
        &format!("  externalIPs: [{external}]\n"),
        &Node::ALL,
    );
    let local = service("local", 11, "Local", LOCAL_NODE_PORTS, "", &Node::ALL);
    std::fs::write(
        dir.path().join("services.yaml"),
        format!("{cluster}---\n{local}"),
    )
    .unwrap();
    dir
}

/// Sends [`REQUESTS`] requests to `target`; asserts that none failed and every answer came
/// from `target`; returns how many each pod answered.
fn all_answered(
    cluster: &TwoNodes,
    protocol: Protocol,
    target: SocketAddrV4,
) -> BTreeMap<String, usize> {
    let replies = cluster.requests(protocol, target, REQUESTS).unwrap();
    let mut answered = BTreeMap::new();
    let mut failed = Vec::new();
    for (i, reply) in replies.into_iter().enumerate() {
        match reply {
            Ok(reply) if reply.peer == SocketAddr::V4(target) => {
                *answered.entry(reply.from).or_insert(0) += 1
            }
            Ok(reply) => failed.push(format!("request {i} answered from {}", reply.peer)),
            Err(e) => failed.push(format!("request {i}: {e}")),
        }
    }
    eprintln!(
        "{protocol} to {target}: requests: {REQUESTS}, failed: {}, answered by {answered:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{protocol} to {target}: {failed:#?}");
    answered
}

/// The sources a pod saw since it had seen `before` of them.
fn new_peers(cluster: &TwoNodes, node: Node, protocol: Protocol, before: usize) -> Vec<SocketAddr> {
    cluster.peers(node, protocol).split_off(before)
}

#[test]
fn external_flows_to_the_other_nodes_pod_are_masqueraded_and_local_ones_keep_the_client() {
    require_root!();
    let dir = manifests();
    let ports = format!("{}-{}", SNAT_PORTS.start(), SNAT_PORTS.end());
    let cluster = TwoNodes::start(dir.path(), &["--masquerade-ports", &ports]).unwrap();
    // The precondition that makes masquerading necessary: node B answers the client's subnet
    // directly over the LAN, not through node A.
    let route = cluster
        .node(Node::B)
        .ip(&["route", "get", &CLIENT_ADDR.to_string()])
        .unwrap();
    assert!(
        route.contains(&format!("dev {LAN_IFACE}")) && !route.contains("via"),
        "node B must reach the client directly: {route}"
    );
    let node_a = Node::A.addr();

    let external_ip = |port| SocketAddrV4::new(EXTERNAL_IP.into(), port);
    let targets = CLUSTER_NODE_PORTS
        .map(|(protocol, port)| (protocol, SocketAddrV4::new(node_a, port)))
        .into_iter()
        .chain([
            (Protocol::Tcp, external_ip(80)),
            (Protocol::Udp, external_ip(53)),
        ]);
    for (protocol, target) in targets {
        let before = Node::ALL.map(|node| cluster.served(node, protocol));
        let answered = all_answered(&cluster, protocol, target);
        for node in Node::ALL {
            let count = answered.get(node.pod_name()).copied().unwrap_or(0);
            assert!(
                count > 0,
                "{protocol} to {target}: {node:?}'s pod never answered: {answered:?}"
            );
            let seen = new_peers(&cluster, node, protocol, before[node as usize]);
            assert_eq!(
                seen.len(),
                count,
                "{protocol} to {target}: {node:?}'s pod served other requests"
            );
            match node {
                // Local: only DNATed, the pod sees the real client.
                Node::A => assert!(
                    seen.iter().all(|peer| peer.ip() == IpAddr::V4(CLIENT_ADDR)),
                    "{protocol} to {target}: pod-a saw {seen:?}"
                ),
                // Remote: masqueraded to node A's address and a port from the range.
                Node::B => assert!(
                    seen.iter()
                        .all(|peer| peer.ip() == IpAddr::V4(node_a)
                            && SNAT_PORTS.contains(&peer.port())),
                    "{protocol} to {target}: pod-b saw {seen:?}"
                ),
            }
        }
    }

    // externalTrafficPolicy: Local: node A's pod only, with the client's address.
    for (protocol, port) in LOCAL_NODE_PORTS {
        let target = SocketAddrV4::new(node_a, port);
        let before = Node::ALL.map(|node| cluster.served(node, protocol));
        let answered = all_answered(&cluster, protocol, target);
        assert_eq!(
            answered,
            BTreeMap::from([(Node::A.pod_name().to_string(), REQUESTS)])
        );
        assert_eq!(
            cluster.served(Node::B, protocol),
            before[Node::B as usize],
            "{protocol}: Local went remote"
        );
        let seen = new_peers(&cluster, Node::A, protocol, before[Node::A as usize]);
        assert!(
            seen.len() == REQUESTS && seen.iter().all(|peer| peer.ip() == IpAddr::V4(CLIENT_ADDR)),
            "{protocol} to {target}: pod-a saw {seen:?}"
        );
    }

    // Masqueraded packets and node port replies carry node A's address as their source, which
    // the kernel's routing drops unless accept_local is set: the (default) redirect reply path
    // sends them on without it.
    assert_eq!(
        cluster.node(Node::A).accept_local_on().unwrap(),
        [] as [String; 0]
    );

    let inspect = cluster.agent(Node::A).inspect().unwrap();
    assert_eq!(
        inspect_output::table_rows(&inspect, "NODE"),
        [[node_a.to_string(), ports, "off".to_string()]],
        "{inspect}"
    );
    assert!(
        counter(&inspect, "masqueraded") > 0,
        "node A counted no masqueraded flow:\n{inspect}"
    );
    assert_eq!(
        counter(&inspect, "drop_snat_ports_exhausted"),
        0,
        "{inspect}"
    );
    let backends = inspect_output::table_rows(&inspect, "BACKENDS");
    for (node, flag) in [(Node::A, "local"), (Node::B, "-")] {
        let addr = format!("{}:8080", node.pod_addr());
        assert!(
            backends
                .iter()
                .any(|row| row[1..] == [addr.clone(), flag.to_string()]),
            "{addr} is not marked {flag}:\n{inspect}"
        );
    }
    // Masqueraded flows are marked in conntrack: forward entries to pod-b with node A's
    // address and a port as the new source.
    let snat_forward = inspect_output::table_rows(&inspect, "CONNTRACK")
        .into_iter()
        .any(|row| {
            row[0] == "forward"
                && row[4].starts_with(&format!("{}:", Node::B.pod_addr()))
                && row[5].starts_with(&format!("{node_a}:"))
        });
    assert!(snat_forward, "no masqueraded conntrack entry:\n{inspect}");
    let node_b = cluster.agent(Node::B).inspect().unwrap();
    assert_eq!(
        counter(&node_b, "masqueraded"),
        0,
        "node B masqueraded:\n{node_b}"
    );
}

#[test]
fn without_masquerading_the_other_nodes_replies_bypass_node_a_and_fail() {
    require_root!();
    let dir = manifests();
    let cluster = TwoNodes::start(dir.path(), &["--no-masquerade"]).unwrap();
    let log = cluster.agent(Node::A).log();
    assert!(log.contains("masquerading off (--no-masquerade)"), "{log}");
    let target = SocketAddrV4::new(Node::A.addr(), CLUSTER_NODE_PORTS[1].1);

    // UDP shows it plainly: pod-b's answers reach the client from pod-b's own address.
    let replies = cluster.requests(Protocol::Udp, target, REQUESTS).unwrap();
    let from_pod_b = SocketAddr::from((Node::B.pod_addr(), 8053));
    let sources: Vec<SocketAddr> = replies
        .into_iter()
        .filter_map(Result::ok)
        .map(|r| r.peer)
        .collect();
    assert!(
        sources.contains(&from_pod_b),
        "no answer bypassed node A: {sources:?}"
    );
    assert!(
        sources
            .iter()
            .all(|s| *s == from_pod_b || *s == SocketAddr::V4(target)),
        "{sources:?}"
    );
    // pod-b saw the client itself: node A only DNATed.
    let seen = cluster.peers(Node::B, Protocol::Udp);
    assert!(
        !seen.is_empty() && seen.iter().all(|p| p.ip() == IpAddr::V4(CLIENT_ADDR)),
        "{seen:?}"
    );
    // TCP: pod-b's SYN-ACK comes from the wrong address, the client resets it, and pod-b never
    // accepts a connection; the client's connects to node A time out.
    let tcp = SocketAddrV4::new(Node::A.addr(), CLUSTER_NODE_PORTS[0].1);
    let replies = cluster.requests(Protocol::Tcp, tcp, 12).unwrap();
    let failed = replies.iter().filter(|r| r.is_err()).count();
    assert!(
        failed > 0,
        "every TCP request succeeded without masquerading"
    );
    assert_eq!(cluster.served(Node::B, Protocol::Tcp), 0);
    assert_eq!(cluster.served(Node::A, Protocol::Tcp), 12 - failed);
}

/// Node-wide counter `name` in `lb-agent inspect` output (0 if absent).
fn counter(inspect: &str, name: &str) -> u64 {
    inspect_output::counter(inspect, name).unwrap_or(0)
}

#[test]
fn a_closed_connections_port_goes_to_the_next_connection_after_the_close_timeout() {
    require_root!();
    const PORT: u16 = 62_500;
    let dir = tempfile::tempdir().unwrap();
    let remote = service("remote", 12, "Cluster", CLUSTER_NODE_PORTS, "", &[Node::B]);
    std::fs::write(dir.path().join("remote.yaml"), remote).unwrap();
    let port = PORT.to_string();
    let range = format!("{port}-{port}");
    let cluster = TwoNodes::start(dir.path(), &["--masquerade-ports", &range]).unwrap();
    let (protocol, node_port) = CLUSTER_NODE_PORTS[0];
    let target = SocketAddrV4::new(Node::A.addr(), node_port);
    let one = |what: &str| {
        let reply = cluster.requests(protocol, target, 1).unwrap().remove(0);
        eprintln!("{what}: {reply:?}");
        reply
    };

    let first = one("first").expect("the first connection");
    assert_eq!(first.from, Node::B.pod_name());
    // Closed a moment ago, so its port is still its own: the next connection gets none.
    assert!(one("right after").is_err());
    let inspect = cluster.agent(Node::A).inspect().unwrap();
    assert!(
        counter(&inspect, "drop_snat_ports_exhausted") > 0,
        "{inspect}"
    );
    let closing = inspect_output::table_rows(&inspect, "CONNTRACK")
        .into_iter()
        .filter(|row| row.last().is_some_and(|state| state == "closing"))
        .count();
    assert_eq!(closing, 2, "the closed flow's two entries:\n{inspect}");

    let close_timeout = Duration::from_nanos(lb_common::conntrack::CLOSING_REUSE_NS);
    std::thread::sleep(close_timeout + Duration::from_secs(1));
    let later = one("after the close timeout").expect("a connection after the close timeout");
    assert_eq!(later.from, Node::B.pod_name());
    let expected = SocketAddr::V4(SocketAddrV4::new(Node::A.addr(), PORT));
    assert_eq!(cluster.peers(Node::B, protocol), [expected, expected]);
}

#[test]
fn a_remote_pods_port_unreachable_reaches_the_client_through_the_masquerading_node() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    // The UDP port targets a port node B's pod does not listen on.
    let closed = service(
        "closed",
        13,
        "Cluster",
        [(Protocol::Tcp, 30082), (Protocol::Udp, 30055)],
        "",
        &[Node::B],
    )
    .replace("8053", "9053");
    std::fs::write(dir.path().join("closed.yaml"), closed).unwrap();
    let cluster = TwoNodes::start(dir.path(), &[]).unwrap();
    let node_port = |port| SocketAddrV4::new(Node::A.addr(), port);
    let http = cluster
        .requests(Protocol::Tcp, node_port(30082), 1)
        .unwrap();
    assert!(http[0].is_ok(), "the Service works over TCP: {http:?}");

    let started = std::time::Instant::now();
    let udp = connected_udp_request(cluster.client(), node_port(30055)).unwrap();
    let took = started.elapsed();
    match udp {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("expected ECONNREFUSED, got {other:?} after {took:?}"),
    }
    assert!(
        took < Duration::from_millis(500),
        "the refusal took {took:?}"
    );
    let inspect = cluster.agent(Node::A).inspect().unwrap();
    assert_eq!(counter(&inspect, "icmp_error_translated"), 1, "{inspect}");
    assert_eq!(counter(&inspect, "masqueraded"), 2, "{inspect}");
}

#[test]
fn with_the_kernel_reply_path_the_agent_sets_accept_local_and_node_ports_answer() {
    require_root!();
    let dir = manifests();
    let cluster = TwoNodes::start(dir.path(), &["--reply-path", "kernel"]).unwrap();
    let target = SocketAddrV4::new(Node::A.addr(), CLUSTER_NODE_PORTS[0].1);
    let answered = all_answered(&cluster, Protocol::Tcp, target);
    for node in Node::ALL {
        assert!(answered.contains_key(node.pod_name()), "{answered:?}");
    }
    // The kernel routes node port replies (arriving on the pod's veth) and masqueraded
    // packets (on the LAN interface): both need accept_local, which the agent set.
    let on = cluster.node(Node::A).accept_local_on().unwrap();
    assert!(
        on.iter().any(|iface| iface == LAN_IFACE) && on.iter().any(|i| i.starts_with("veth")),
        "{on:?}"
    );
}
