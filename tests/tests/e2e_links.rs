//! End to end: auto-attach (no `--iface`). The agent follows the node's interfaces: pods that
//! appear while it runs are served at once, a pod's state goes with its interface, and a pod
//! created while the agent was down is attached when it comes back.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use lb_tests::{
    agent::{tc_attached as attached, Agent, AgentOptions, ATTACH_TIMEOUT, READY_MARKER},
    example, require_root,
    servers::{tcp_answerers, Server},
    topology::{backend_addr, backend_name, Pod, Topology},
};

const TIMEOUT: Duration = Duration::from_secs(2);
const REQUESTS: usize = 30;

/// `REQUESTS` new TCP connections from `pod` to the example Service: who answered. Every
/// request must succeed, answered from the VIP.
fn ask_from(pod: &Pod) -> BTreeSet<String> {
    tcp_answerers(&pod.netns, example::tcp_vip(), REQUESTS, TIMEOUT)
}

/// A TCP server like the example backends' on backend pod `index`.
fn backend_server(pod: &Pod) -> Server {
    Server::tcp(
        &pod.netns,
        SocketAddrV4::new(pod.addr, example::TCP_TARGET_PORT),
        &pod.name,
    )
    .unwrap()
}

fn auto_attach_options(topology: &Topology, manifests: &Path) -> AgentOptions {
    let mut options = AgentOptions::new(topology.id(), manifests, Vec::new());
    options.iface_patterns = vec!["v-*".into()];
    options
}

#[test]
fn pods_that_come_and_go_are_attached_and_forgotten_without_a_restart() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let mut topology = Topology::client_and_backends(example::BACKENDS).unwrap();
    let mut servers: Vec<Server> = (0..example::BACKENDS)
        .map(|i| backend_server(topology.pod(&backend_name(i))))
        .collect();
    // Not pod-facing, must stay untouched: a bridge even though its name matches, a veth
    // whose name does not, and a device without Ethernet frames (a layer-3 tun device, as
    // IPIP and WireGuard tunnels are) whose name matches.
    let node = topology.node();
    node.ip(&["link", "add", "v-br", "type", "bridge"]).unwrap();
    node.ip(&["tuntap", "add", "mode", "tun", "name", "v-tun"])
        .unwrap();
    node.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ])
    .unwrap();
    let mut agent =
        Agent::start(topology.node(), auto_attach_options(&topology, dir.path())).unwrap();
    for iface in topology.host_ifaces() {
        agent
            .wait_for_log(&attached(&iface), 1, ATTACH_TIMEOUT)
            .unwrap();
    }
    let all: BTreeSet<String> = (0..example::BACKENDS).map(backend_name).collect();
    assert_eq!(ask_from(topology.pod("client")), all);

    // A new client pod is served as soon as its veth is attached.
    topology
        .add_pod("client-2", Ipv4Addr::new(198, 18, 0, 20))
        .unwrap();
    agent
        .wait_for_log(&attached("v-client-2"), 1, ATTACH_TIMEOUT)
        .unwrap();
    assert_eq!(ask_from(topology.pod("client-2")), all);

    // A new backend pod: its replies are translated back only if its veth got the program.
    let new_backend = backend_name(example::BACKENDS);
    topology
        .add_pod(&new_backend, backend_addr(example::BACKENDS))
        .unwrap();
    servers.push(backend_server(topology.pod(&new_backend)));
    let host_iface = topology.pod(&new_backend).host_iface.clone();
    agent
        .wait_for_log(&attached(&host_iface), 1, ATTACH_TIMEOUT)
        .unwrap();
    let ready = agent.log_count(READY_MARKER);
    let with_new: Vec<usize> = (0..=example::BACKENDS).collect();
    example::replace_manifest(
        dir.path(),
        example::ENDPOINTSLICE_FILE,
        &example::endpointslice_yaml(&with_new),
    )
    .unwrap();
    agent
        .wait_for_log(READY_MARKER, ready + 1, ATTACH_TIMEOUT)
        .unwrap();
    // Every request must succeed; the new backend must show up within a few rounds.
    let served_by_new = (0..5).any(|_| {
        let served = ask_from(topology.pod("client"));
        served.contains(&new_backend) || {
            std::thread::sleep(Duration::from_millis(200));
            false
        }
    });
    assert!(served_by_new, "{new_backend} never answered");

    // A deleted pod: its state is dropped, quietly.
    let links = agent.options().bpffs_dir.join("links");
    let pins = ["v-client-2-tc", "v-client-2-tc-egress"].map(|name| links.join(name));
    for pin in &pins {
        assert!(pin.exists(), "no pinned link at {}", pin.display());
    }
    assert!(topology.remove_pod("client-2"));
    agent
        .wait_for_log("interface v-client-2 is gone", 1, ATTACH_TIMEOUT)
        .unwrap();
    for pin in &pins {
        assert!(!pin.exists(), "{} outlived its interface", pin.display());
    }
    assert_eq!(
        ask_from(topology.pod("client")).len(),
        example::BACKENDS + 1
    );

    let log = agent.log();
    for untouched in ["v-br", "other0", "other1", "lo", "v-tun"] {
        assert!(
            !log.contains(&attached(untouched)),
            "attached to {untouched}:\n{log}"
        );
    }
    assert!(
        log.contains("auto-attach: skipping v-tun: it carries no Ethernet frames"),
        "{log}"
    );
    // The node namespace has no default route, so no XDP: the only warning expected.
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| !l.contains("no IPv4 default route"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
}

#[test]
fn a_pod_created_while_the_agent_was_down_is_attached_when_it_comes_back() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let mut topology = Topology::client_and_backends(example::BACKENDS).unwrap();
    let _servers: Vec<Server> = (0..example::BACKENDS)
        .map(|i| backend_server(topology.pod(&backend_name(i))))
        .collect();
    let options = auto_attach_options(&topology, dir.path());
    let mut agent = Agent::start(topology.node(), options.clone()).unwrap();
    agent
        .wait_for_log(&attached("v-client"), 1, ATTACH_TIMEOUT)
        .unwrap();
    agent.kill().unwrap();

    topology
        .add_pod("late", Ipv4Addr::new(198, 18, 0, 30))
        .unwrap();
    let mut agent = Agent::start(topology.node(), options).unwrap();
    agent
        .wait_for_log(&attached("v-late"), 1, ATTACH_TIMEOUT)
        .unwrap();
    let all: BTreeSet<String> = (0..example::BACKENDS).map(backend_name).collect();
    assert_eq!(ask_from(topology.pod("late")), all);
    // The interfaces attached before were adopted, not attached twice.
    assert!(agent
        .log()
        .contains("replaced the program in the pinned tcx link of v-client"));
}
