//! End to end: interfaces whose names contain a dot (`flannel.1`, `vxlan.calico`, VLANs such
//! as `eth0.100`), which bpffs refuses in pin names. Pods on dotted veths, auto-attached, and
//! XDP on a dotted external interface: the agent starts, translates a ClusterIP and a NodePort,
//! a restarted agent reuses the pinned links, and `lb-agent cleanup` removes them.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    agent::{tc_attached, untranslated_after_cleanup, Agent, AgentOptions, ATTACH_TIMEOUT},
    example, require_root,
    servers::{tcp_answerers, Server},
    topology::{backend_addr, Topology, CLIENT_ADDR, NODE_IP},
};

const TIMEOUT: Duration = Duration::from_secs(2);
const REQUESTS: usize = 20;
const NODE_PORT: u16 = 30080;
/// The node's external interface (XDP), named like a VLAN interface.
const EXTERNAL: &str = "ext.0";
/// Pods whose node-side veths (`v-<pod>`) carry a dot.
const CLIENT: &str = "c.1";
const BACKENDS: [&str; 2] = ["b.0", "b.1"];

/// A NodePort Service on the same backends as the example's ClusterIP.
const NODE_PORT_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: np, namespace: default}
spec:
  type: NodePort
  clusterIP: 198.19.0.20
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: np-1
  namespace: default
  labels: {kubernetes.io/service-name: np}
addressType: IPv4
ports:
  - {name: http, protocol: TCP, port: 8080}
endpoints:
  - {addresses: [198.18.0.11], nodeName: node-a}
  - {addresses: [198.18.0.12], nodeName: node-a}
"#;

fn backend_names() -> BTreeSet<String> {
    BACKENDS.iter().map(|b| b.to_string()).collect()
}

/// Both Services answer, from every backend: the ClusterIP from the client pod (TC on the
/// dotted veths, both ways) and the NodePort from outside (XDP on the dotted interface).
fn assert_translated(topology: &Topology) {
    let client = &topology.pod(CLIENT).netns;
    assert_eq!(
        tcp_answerers(client, example::tcp_vip(), REQUESTS, TIMEOUT),
        backend_names()
    );
    let outside = &topology.outside().netns;
    let node_port = SocketAddrV4::new(NODE_IP, NODE_PORT);
    assert_eq!(
        tcp_answerers(outside, node_port, REQUESTS, TIMEOUT),
        backend_names()
    );
}

#[test]
fn interfaces_with_dots_in_their_names_are_attached_pinned_reused_and_cleaned_up() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    example::replace_manifest(
        dir.path(),
        example::ENDPOINTSLICE_FILE,
        &example::endpointslice_yaml(&[0, 1]),
    )
    .unwrap();
    std::fs::write(dir.path().join("node-port.yaml"), NODE_PORT_SERVICE).unwrap();

    let mut pods = vec![(CLIENT, CLIENT_ADDR)];
    pods.extend(
        BACKENDS
            .iter()
            .enumerate()
            .map(|(i, b)| (*b, backend_addr(i))),
    );
    let mut topology = Topology::new(&pods).unwrap();
    topology.add_outside_on(EXTERNAL).unwrap();
    let _servers: Vec<Server> = BACKENDS
        .iter()
        .map(|name| {
            let pod = topology.pod(name);
            let addr = SocketAddrV4::new(pod.addr, example::TCP_TARGET_PORT);
            Server::tcp(&pod.netns, addr, name).unwrap()
        })
        .collect();

    // Auto-attach for the pods, XDP named.
    let mut options = AgentOptions::new(topology.id(), dir.path(), Vec::new());
    options.iface_patterns = vec!["v-*".into()];
    options.xdp_iface = Some(EXTERNAL.into());
    options.extra_args = vec![
        "--node-name".into(),
        "node-a".into(),
        "--node-address".into(),
        NODE_IP.to_string(),
    ];
    let mut agent = Agent::start(topology.node(), options.clone()).unwrap();
    for iface in topology.host_ifaces() {
        agent
            .wait_for_log(&tc_attached(&iface), 1, ATTACH_TIMEOUT)
            .unwrap();
    }
    // Each pin is named after its interface with the dot written as ':'.
    let links = options.bpffs_dir.join("links");
    let pins = ["v-c:1-tc", "v-b:0-tc", "v-b:1-tc", "ext:0-xdp"];
    for pin in pins {
        assert!(links.join(pin).exists(), "no pin {pin}:\n{}", agent.log());
    }
    assert_translated(&topology);

    // A restarted agent swaps its program into the same pinned links.
    agent.kill().unwrap();
    let mut agent = Agent::start(topology.node(), options.clone()).unwrap();
    for iface in topology.host_ifaces() {
        let replaced = format!("replaced the program in the pinned tcx link of {iface}");
        agent.wait_for_log(&replaced, 1, ATTACH_TIMEOUT).unwrap();
    }
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "replaced the program in the pinned xdp link of {EXTERNAL}"
        )),
        "{log}"
    );
    assert!(!log.contains("cannot be reused"), "{log}");
    assert!(
        !log.contains("is gone"),
        "a live interface's pin was dropped:\n{log}"
    );
    assert_translated(&topology);

    // Cleanup removes every pin, which detaches the programs.
    let status = agent.stop_keeping_pins().unwrap();
    assert!(status.success(), "{status}");
    let output = agent.cleanup().unwrap();
    eprintln!("{output}");
    assert!(
        !options.bpffs_dir.exists(),
        "{} is still there",
        options.bpffs_dir.display()
    );
    let client = &topology.pod(CLIENT).netns;
    let detached = untranslated_after_cleanup(client, example::tcp_vip());
    assert!(detached, "the VIP is still translated after cleanup");
}

#[test]
fn a_named_dotted_interface_starts_the_agent() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let topology = Topology::new(&[("p.1", Ipv4Addr::new(198, 18, 0, 40))]).unwrap();
    // --iface mode: the name reaches the pin path unchanged by any pattern.
    let options = AgentOptions::new(topology.id(), dir.path(), vec!["v-p.1".into()]);
    let agent = Agent::start(topology.node(), options.clone()).unwrap();
    assert!(
        options.bpffs_dir.join("links/v-p:1-tc").exists(),
        "{}",
        agent.log()
    );
}
