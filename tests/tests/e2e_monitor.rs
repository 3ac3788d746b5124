//! End to end: `lb-agent monitor`, run as a process beside the real agent, prints the events
//! of the traffic the test sends: a TCP connection through a ClusterIP as one new flow with
//! the client's tuple and the backend that answered; a connection to a Service without
//! endpoints as a reject; a NodePort flow masqueraded to another node's pod as a masquerade
//! allocation with the address and port that pod saw. Filters drop what they should, and the
//! kernel's gate (`LB_MONITOR`) is closed while no client is connected.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, AgentOptions},
    cluster::{
        two_node::{node_port_service, Node, TwoNodes, CLIENT_ADDR, LAN_IFACE},
        Protocol,
    },
    example, require_root,
    servers::tcp_request,
    topology::{Topology, CLIENT},
};
use lb_userspace::monitor::record::{Line, Record};

/// How long a monitor may take to see its events and exit.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The records of a monitor's `--json` lines.
fn records(lines: &[String]) -> Vec<Record> {
    lines
        .iter()
        .map(|line| match serde_json::from_str(line) {
            Ok(Line::Event(record)) => *record,
            other => panic!("not an event: {line} ({other:?})"),
        })
        .collect()
}

#[test]
fn a_monitor_sees_the_new_flow_and_the_reject_the_client_caused_and_filters_them() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    std::fs::write(dir.path().join("empty.yaml"), example::EMPTY_SERVICE).unwrap();
    let topology = Topology::client_and_backends(example::BACKENDS).unwrap();
    let _servers = example::tcp_backends(&topology).unwrap();
    let options = AgentOptions::new(topology.id(), dir.path(), topology.host_ifaces());
    let agent = Agent::start(topology.node(), options).unwrap();
    let client = topology.pod(CLIENT);
    assert_eq!(
        agent.monitor_clients().unwrap(),
        0,
        "no client, gate closed"
    );

    let all = agent.monitor(&["--json", "--count", "2"]).unwrap();
    let text = agent.monitor(&["--count", "2"]).unwrap();
    let empty_only = agent
        .monitor(&["--json", "--count", "1", "--service", "default/empty"])
        .unwrap();
    let rejects_only = agent
        .monitor(&["--json", "--count", "1", "--reason", "reject_no_backend"])
        .unwrap();
    let new_flows_only = agent
        .monitor(&["--json", "--count", "1", "--kind", "new-flow"])
        .unwrap();
    let elsewhere = agent.monitor(&["--address", "198.18.9.9"]).unwrap();
    agent
        .wait_for_monitor_clients(6, MONITOR_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}; monitor stderr: {}", all.stderr()));

    // First the new flow, then the reject: each filter must skip the one before its match.
    let reply = client
        .netns
        .run(|| tcp_request(example::tcp_vip(), REQUEST_TIMEOUT))
        .unwrap()
        .unwrap();
    let empty = SocketAddrV4::new(example::EMPTY_VIP, 80);
    let refused = client
        .netns
        .run(|| tcp_request(empty, REQUEST_TIMEOUT))
        .unwrap();
    assert!(refused.is_err(), "a Service without endpoints answered");

    let (status, lines) = all.wait(MONITOR_TIMEOUT).unwrap();
    assert!(status.success(), "{status}");
    for line in &lines {
        eprintln!("monitor --json: {line}");
    }
    let [new_flow, reject] = &records(&lines)[..] else {
        panic!("{lines:?}")
    };
    let answered = topology.pod(&reply.from);
    let client_end = SocketAddr::new(IpAddr::V4(client.addr), reply.local_port);
    assert_eq!(new_flow.kind, "new-flow");
    assert_eq!(new_flow.reason, "new_flows");
    assert_eq!(new_flow.service.as_deref(), Some("default/demo:http"));
    assert_eq!(new_flow.protocol.as_deref(), Some("tcp"));
    assert_eq!(new_flow.source, Some(client_end));
    assert_eq!(
        new_flow.destination,
        Some(SocketAddr::V4(example::tcp_vip()))
    );
    assert_eq!(
        new_flow.backend,
        Some(SocketAddr::new(
            IpAddr::V4(answered.addr),
            example::TCP_TARGET_PORT
        )),
        "the backend that answered"
    );
    assert_eq!(new_flow.nat, None);
    assert_eq!(new_flow.iface.as_deref(), Some(client.host_iface.as_str()));
    assert_eq!(new_flow.hook, "tc-ingress");

    assert_eq!(reject.kind, "reject");
    assert_eq!(reject.reason, "reject_no_backend");
    assert_eq!(reject.service.as_deref(), Some("default/empty:web"));
    assert_eq!(reject.source.map(|s| s.ip()), Some(IpAddr::V4(client.addr)));
    assert_eq!(reject.destination, Some(SocketAddr::V4(empty)));
    assert_eq!(reject.backend, None);
    assert_eq!(reject.iface.as_deref(), Some(client.host_iface.as_str()));

    let (_, text) = text.wait(MONITOR_TIMEOUT).unwrap();
    for line in &text {
        eprintln!("monitor: {line}");
    }
    assert!(
        text[0].ends_with(&format!(
            " new-flow tcp {client_end} -> {} => {}:{} svc default/demo:http iface {} tc-ingress",
            example::tcp_vip(),
            answered.addr,
            example::TCP_TARGET_PORT,
            client.host_iface
        )),
        "{text:?}"
    );
    assert!(text[1].contains(" reject tcp "), "{text:?}");

    for filtered in [empty_only, rejects_only] {
        let (_, lines) = filtered.wait(MONITOR_TIMEOUT).unwrap();
        assert_eq!(records(&lines), std::slice::from_ref(reject));
    }
    let (_, lines) = new_flows_only.wait(MONITOR_TIMEOUT).unwrap();
    assert_eq!(records(&lines), std::slice::from_ref(new_flow));
    assert_eq!(
        elsewhere.lines(),
        Vec::<String>::new(),
        "no event has 198.18.9.9"
    );
    drop(elsewhere);

    // Every client gone: the gate closes (the kernel then writes no new flows or rejects).
    agent.wait_for_monitor_clients(0, MONITOR_TIMEOUT).unwrap();
}

#[test]
fn a_masqueraded_flow_shows_the_address_and_port_the_other_nodes_pod_saw() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    // The only endpoint is node B's pod: node A masquerades the outside client's flows.
    let service = node_port_service(
        "remote",
        "198.19.5.10".parse().unwrap(),
        "Cluster",
        [(Protocol::Tcp, 30080), (Protocol::Udp, 30053)],
        "",
        &[(Node::B.pod_addr(), Node::B)],
    );
    std::fs::write(dir.path().join("remote.yaml"), service).unwrap();
    let cluster = TwoNodes::start(dir.path(), &[]).unwrap();
    let agent = cluster.agent(Node::A);
    let monitor = agent
        .monitor(&["--json", "--count", "1", "--kind", "masquerade"])
        .unwrap();
    agent.wait_for_monitor_clients(1, MONITOR_TIMEOUT).unwrap();

    let node_port = SocketAddrV4::new(Node::A.addr(), 30080);
    let [reply] = &cluster.requests(Protocol::Tcp, node_port, 1).unwrap()[..] else {
        unreachable!()
    };
    let reply = reply.as_ref().expect("answered");
    let (_, lines) = monitor.wait(MONITOR_TIMEOUT).unwrap();
    eprintln!("monitor --json: {lines:?}");
    let [event] = &records(&lines)[..] else {
        panic!("{lines:?}")
    };
    let seen_by_pod_b = cluster.peers(Node::B, Protocol::Tcp);
    assert_eq!(event.kind, "masquerade");
    assert_eq!(event.reason, "masqueraded");
    assert_eq!(event.service.as_deref(), Some("e2e/remote:http"));
    assert_eq!(
        event.source,
        Some(SocketAddr::new(IpAddr::V4(CLIENT_ADDR), reply.local_port))
    );
    assert_eq!(event.destination, Some(SocketAddr::V4(node_port)));
    assert_eq!(
        event.backend,
        Some(SocketAddr::new(IpAddr::V4(Node::B.pod_addr()), 8080))
    );
    assert_eq!(event.nat.as_slice(), seen_by_pod_b.as_slice());
    assert_eq!(
        event.nat.map(|nat| nat.ip()),
        Some(IpAddr::V4(Node::A.addr()))
    );
    assert_eq!(event.iface.as_deref(), Some(LAN_IFACE));
    assert_eq!(event.hook, "xdp");
}
