//! End to end: the eBPF programs' log lines reach the agent's log (`kernel: ...`), filtered by
//! `--log-level` in the kernel: a drop for a backend missing mid-update at warn level, read by
//! an agent restarted onto the pinned links; the expected drop of an externalTrafficPolicy:
//! Local path without a local endpoint only at debug level.

use std::{net::SocketAddrV4, thread, time::Duration};

use lb_common::{service::scope, IPPROTO_TCP};
use lb_tests::{
    agent::{Agent, AgentOptions},
    bpftool::{self, service_key, slot_key, u32_at},
    example, inspect_output,
    netns::NetNs,
    require_root,
    servers::tcp_request,
    topology::{Topology, CLIENT, EXTERNAL_IFACE, NODE_IP},
};

/// How long a forwarded kernel line may take to show up in the agent's log.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection attempts that are dropped: short.
const DROPPED_TIMEOUT: Duration = Duration::from_millis(300);
const NODE_PORT: u16 = 30080;

/// Connects to `target` from `netns`; the attempt must fail (its SYN is dropped).
fn assert_dropped(netns: &NetNs, target: SocketAddrV4) {
    let reply = netns.run(|| tcp_request(target, DROPPED_TIMEOUT)).unwrap();
    assert!(
        reply.is_err(),
        "a connection to {target} succeeded: {reply:?}"
    );
}

/// The node-wide counter `name` from `lb-agent inspect`.
fn counter(agent: &Agent, name: &str) -> u64 {
    let inspect = agent.inspect().unwrap();
    inspect_output::counter(&inspect, name)
        .unwrap_or_else(|| panic!("no counter {name} in:\n{inspect}"))
}

#[test]
fn a_backend_missing_mid_update_is_logged_at_warn_by_a_restarted_agent() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let topology = Topology::client_and_backends(example::BACKENDS).unwrap();
    let _servers = example::tcp_backends(&topology).unwrap();
    let mut options = AgentOptions::new(topology.id(), dir.path(), topology.host_ifaces());
    // No resync while the test breaks the maps.
    options.extra_args = vec!["--resync-interval".into(), "1h".into()];
    let mut agent = Agent::start(topology.node(), options.clone()).unwrap();
    agent.kill().unwrap();
    // The new agent swaps its program into the pinned links; it must read that program's
    // lines, not the old one's.
    let mut agent = Agent::start(topology.node(), options).unwrap();
    assert!(agent
        .log()
        .contains("replaced the program in the pinned tcx link"));

    // Every slot of the TCP frontend gone: whichever slot a new flow picks is missing.
    let maps = agent.options().bpffs_dir.join("maps");
    let frontend = service_key(
        example::VIP,
        example::TCP_PORT,
        IPPROTO_TCP,
        scope::INTERNAL,
    );
    let service = bpftool::lookup(&maps.join("LB_SERVICES"), &frontend)
        .unwrap()
        .expect("the TCP frontend is programmed");
    let id = u32_at(&service, 0);
    for slot in 1..=example::BACKENDS as u32 {
        bpftool::delete(&maps.join("LB_SLOTS"), &slot_key(id, slot)).unwrap();
    }
    assert_dropped(&topology.pod(CLIENT).netns, example::tcp_vip());

    let line = format!(
        "kernel: service {id}: dropped a packet: its backend slot or backend entry is missing"
    );
    agent.wait_for_log(&line, 1, LOG_TIMEOUT).unwrap();
    let log = agent.log();
    let logged = log.lines().find(|l| l.contains(&line)).unwrap();
    eprintln!("{logged}");
    assert!(logged.contains("WARN"), "{logged}");
}

/// A NodePort Service with externalTrafficPolicy: Local whose only endpoint is on another
/// node.
const LOCAL_WITHOUT_LOCAL_ENDPOINT: &str = r#"apiVersion: v1
kind: Service
metadata: {name: local-only, namespace: e2e}
spec:
  type: NodePort
  clusterIP: 198.19.6.10
  externalTrafficPolicy: Local
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local-only-1
  namespace: e2e
  labels: {kubernetes.io/service-name: local-only}
addressType: IPv4
ports:
  - {name: http, protocol: TCP, port: 8080}
endpoints:
  - {addresses: [198.18.0.11], nodeName: node-b}
"#;

#[test]
fn an_external_traffic_policy_local_drop_is_logged_at_debug_only() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("local.yaml"), LOCAL_WITHOUT_LOCAL_ENDPOINT).unwrap();
    let mut topology = Topology::new(&[]).unwrap();
    topology.add_outside().unwrap();
    let mut options = AgentOptions::new(topology.id(), dir.path(), Vec::new());
    options.xdp_iface = Some(EXTERNAL_IFACE.into());
    options.extra_args = ["--node-name", "node-a", "--node-address"]
        .map(String::from)
        .into_iter()
        .chain([NODE_IP.to_string()])
        .collect();
    let node_port = SocketAddrV4::new(NODE_IP, NODE_PORT);
    let outside = &topology.outside().netns;
    let line = "dropped a new flow: no backend on this path (a traffic policy Local without";

    // At the default level the drop is counted, but the kernel writes no line.
    let mut agent = Agent::start(topology.node(), options.clone()).unwrap();
    let before = counter(&agent, "drop_no_backend");
    assert_dropped(outside, node_port);
    assert!(counter(&agent, "drop_no_backend") > before);
    thread::sleep(Duration::from_millis(500));
    assert!(!agent.log().contains(line), "{}", agent.log());
    agent.kill().unwrap();

    // At debug level it does.
    options.log_level = "debug".into();
    let mut agent = Agent::start(topology.node(), options).unwrap();
    assert_dropped(outside, node_port);
    agent.wait_for_log(line, 1, LOG_TIMEOUT).unwrap();
    let log = agent.log();
    let logged = log.lines().find(|l| l.contains(line)).unwrap();
    eprintln!("{logged}");
    assert!(
        logged.contains("DEBUG") && logged.contains("kernel: service "),
        "{logged}"
    );
}
