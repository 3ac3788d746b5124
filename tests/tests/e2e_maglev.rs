//! End to end on two nodes with a Maglev Service (the `lb-agent/lb-algorithm: maglev`
//! annotation) of five pods: the same outside 5-tuple lands on the same pod whether the
//! client's router sends it through node A or node B (an ECMP rehash, a node drain), also
//! after the nodes saw different endpoint histories, and
//! after one of the five endpoints is removed only about a fifth of a fixed set of new flows
//! change pod.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    ops::Range,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{tc_attached, Agent, ATTACH_TIMEOUT},
    cluster::{
        two_node::{node_port_service, Node, Setup, TwoNodes, CLIENT_ADDR, SERVICE_NET},
        Protocol,
    },
    require_root,
    servers::Server,
};

/// The Service's external IP, routed by the client via node A or node B.
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 5, 100);
const NODE_PORTS: [(Protocol, u16); 2] = [(Protocol::Tcp, 30080), (Protocol::Udp, 30053)];
/// Pods added to the cluster's two (pod-a, pod-b): name, node, address.
const EXTRA_PODS: [(&str, Node, [u8; 4]); 3] = [
    ("pod-a2", Node::A, [198, 18, 10, 12]),
    ("pod-a3", Node::A, [198, 18, 10, 13]),
    ("pod-b2", Node::B, [198, 18, 20, 12]),
];
/// Client source ports of the flows sent through both nodes.
const BOTH_WAYS: Range<u16> = 41_000..41_100;
/// Client source ports of the flows sent through node A before, and node B after, the
/// removal: each flow is new on the node it goes through.
const ACROSS_REMOVAL: Range<u16> = 42_000..42_200;
const PROPAGATION: Duration = Duration::from_secs(10);

/// The Service over `endpoints` (address, node), Maglev by annotation.
fn manifest(endpoints: &[(Ipv4Addr, Node)]) -> String {
    node_port_service(
        "maglev",
        Ipv4Addr::new(198, 19, 5, 10),
        "Cluster",
        NODE_PORTS,
        &format!("  externalIPs: [{EXTERNAL_IP}]\n"),
        endpoints,
    )
    .replacen(
        "namespace: e2e}",
        "namespace: e2e, annotations: {lb-agent/lb-algorithm: maglev}}",
        1,
    )
}

/// Which pod answered each UDP request from the client's `ports` to the external IP.
fn answers(cluster: &TwoNodes, ports: Range<u16>) -> Vec<String> {
    let target = SocketAddrV4::new(EXTERNAL_IP, 53);
    cluster
        .client()
        .run(|| {
            ports
                .map(|port| {
                    let socket = UdpSocket::bind(SocketAddrV4::new(CLIENT_ADDR, port))?;
                    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
                    socket.send_to(b"which pod?", target)?;
                    let mut buf = [0u8; 64];
                    let (len, from) = socket.recv_from(&mut buf)?;
                    assert_eq!(from, target.into(), "the reply comes from the Service");
                    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
                })
                .collect::<std::io::Result<Vec<String>>>()
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("a request failed: {e}"))
}

/// Waits until `agent` logged `needle` `count` times.
fn wait_for_count(agent: &Agent, needle: &str, count: usize) {
    let deadline = Instant::now() + PROPAGATION;
    while agent.log_count(needle) < count {
        assert!(
            Instant::now() < deadline,
            "{count} x {needle:?} not in the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the client route Service addresses through `node`.
fn route_via(cluster: &TwoNodes, node: Node) {
    let via = node.addr().to_string();
    cluster
        .client()
        .ip(&["route", "replace", SERVICE_NET, "via", &via])
        .unwrap();
}

#[test]
fn the_same_flow_lands_on_the_same_pod_through_either_node_and_few_move_on_removal() {
    require_root!();
    let mut endpoints: Vec<(Ipv4Addr, Node)> =
        Node::ALL.iter().map(|n| (n.pod_addr(), *n)).collect();
    endpoints.extend(EXTRA_PODS.map(|(_, node, addr)| (Ipv4Addr::from(addr), node)));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.yaml");
    std::fs::write(&file, manifest(&endpoints)).unwrap();
    let setup = Setup {
        iface_patterns: vec!["veth-*".into()],
        ..Setup::default()
    };
    let mut cluster = TwoNodes::start_with(dir.path(), &setup).unwrap();
    let mut servers = Vec::new();
    for (name, node, addr) in EXTRA_PODS {
        let pod = cluster.add_pod(node, name, addr.into()).unwrap();
        let bind = SocketAddrV4::new(pod.addr, 8053);
        servers.push(Server::udp(&pod.netns, bind, name).unwrap());
        let iface = pod.host_iface.clone();
        cluster
            .agent_mut(node)
            .wait_for_log(&tc_attached(&iface), 1, ATTACH_TIMEOUT)
            .unwrap();
    }

    // Node A sees pod-a leave and come back while node B's agent is down: the nodes' histories
    // differ (random selection's slot order then differs; a Maglev table does not).
    cluster
        .restart_agent(Node::B, |cluster| {
            let node_a = cluster.agent(Node::A);
            std::fs::write(&file, manifest(&endpoints[1..])).unwrap();
            wait_for_count(node_a, "ready: programmed 6 services, 8 backends", 1);
            std::fs::write(&file, manifest(&endpoints)).unwrap();
            wait_for_count(node_a, "ready: programmed 6 services, 10 backends", 2);
        })
        .unwrap();

    let via_a = answers(&cluster, BOTH_WAYS);
    route_via(&cluster, Node::B);
    let via_b = answers(&cluster, BOTH_WAYS);
    let differ: Vec<u16> = BOTH_WAYS
        .zip(via_a.iter().zip(&via_b))
        .filter(|(_, (a, b))| a != b)
        .map(|(port, _)| port)
        .collect();
    assert!(
        differ.is_empty(),
        "flows from ports {differ:?} changed pod with the node"
    );
    let pods: BTreeSet<&String> = via_a.iter().collect();
    eprintln!(
        "{} flows, the same pod through either node; pods: {pods:?}",
        via_a.len()
    );
    assert_eq!(pods.len(), 5, "every pod gets flows");

    route_via(&cluster, Node::A);
    let before = answers(&cluster, ACROSS_REMOVAL);
    let (removed, _) = endpoints.remove(3);
    std::fs::write(&file, manifest(&endpoints)).unwrap();
    for node in Node::ALL {
        cluster
            .agent_mut(node)
            .wait_for_log("ready: programmed 6 services, 8 backends", 1, PROPAGATION)
            .unwrap();
    }
    route_via(&cluster, Node::B);
    let after = answers(&cluster, ACROSS_REMOVAL);
    let removed_pod = EXTRA_PODS[1].0;
    assert_eq!(removed, Ipv4Addr::from(EXTRA_PODS[1].2));
    assert!(!after.iter().any(|pod| pod == removed_pod));
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let on_removed = before.iter().filter(|pod| *pod == removed_pod).count();
    let mut per_pod: BTreeMap<&String, usize> = BTreeMap::new();
    for pod in &before {
        *per_pod.entry(pod).or_default() += 1;
    }
    let flows = before.len();
    eprintln!(
        "removing 1 of 5 endpoints moved {moved} of {flows} flows ({:.1}%), {on_removed} of \
         them from the removed pod; before: {per_pod:?}",
        100.0 * moved as f64 / flows as f64
    );
    // Flows of the removed pod must move; of the others, few do (Maglev's table, 1021
    // entries by default, moves a few entries beyond the removed pod's).
    assert!(
        moved - on_removed <= flows / 20,
        "{moved} of {flows} flows moved"
    );
    drop(servers);
}
