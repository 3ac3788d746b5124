//! End to end over IPv6: the real `lb-agent` (file mode) programs a dual-stack Service and an
//! IPv6 Service without endpoints; a dual-stack client pod reaches the Service over TCP and
//! UDP on both families through the TC programs (the IPv6 ones by tail call), every answer
//! comes from the address it asked, each family's requests reach that family's backends, and
//! a connection to the Service without endpoints is refused at once. An outside client reaches
//! the Service's node port on the node's IPv6 address through the XDP program.
//!
//! On two nodes ([`lb_tests::cluster::two_node`] with IPv6): an outside client's requests to
//! node A's IPv6 node port reach node B's pod masqueraded to node A's IPv6 address (node B
//! answers the client's subnet directly, so only masquerading brings its answers back through
//! node A) and node A's pod with the client's address.
//!
//! In Kubernetes mode (the in-memory API server): a dual-stack Service is served on IPv4 from
//! its IPv4 slice while its IPv6 ClusterIP, without a slice, refuses; the IPv6 slice, created
//! later, serves the IPv6 ClusterIP.

use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    net::{IpAddr, SocketAddr, SocketAddrV6},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, AgentOptions},
    apiserver::{objects, Options},
    cluster::{
        kube::{
            wait_for_backends, web_ports, web_slice, AgentWait, KubeCluster, NAMESPACE, NODE_NAME,
        },
        two_node::{node_port_service, Node, Setup, TwoNodes, CLIENT_ADDR},
        Protocol,
    },
    inspect_output,
    netns::NetNs,
    require_root,
    servers::{tally, tcp_request, udp_request, Server},
    topology::{backend_name, ipv6_of, Topology, CLIENT, EXTERNAL_IFACE, NODE_IP},
};

const BACKENDS: usize = 2;
const REQUESTS: usize = 40;
const TIMEOUT: Duration = Duration::from_secs(2);
const VIP4: &str = "198.19.0.60";
const VIP6: &str = "2001:2:0:53::60";
const EMPTY_VIP6: &str = "2001:2:0:53::61";
/// The two-node test's Service whose only endpoint is on node B.
const REMOTE_VIP6: &str = "2001:2:0:53::62";

/// The Service (both families) and its two EndpointSlices, and the IPv6 Service without
/// endpoints.
fn manifests(topology: &Topology) -> (String, String) {
    let services = format!(
        "\
apiVersion: v1
kind: Service
metadata: {{name: dual, namespace: default}}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: {VIP4}
  clusterIPs: [{VIP4}, \"{VIP6}\"]
  ports:
    - {{name: tcp, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}}
    - {{name: udp, protocol: UDP, port: 53, targetPort: 8053, nodePort: 30053}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty6, namespace: default}}
spec:
  type: ClusterIP
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  clusterIP: \"{EMPTY_VIP6}\"
  clusterIPs: [\"{EMPTY_VIP6}\"]
  ports:
    - {{name: tcp, protocol: TCP, port: 80, targetPort: 8080}}
"
    );
    let slice = |family: &str, name: &str, addr: &dyn Fn(usize) -> String| {
        let endpoints: String = (0..BACKENDS)
            .map(|i| format!("  - {{addresses: [\"{}\"]}}\n", addr(i)))
            .collect();
        format!(
            "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels: {{kubernetes.io/service-name: dual}}
addressType: {family}
ports:
  - {{name: tcp, protocol: TCP, port: 8080}}
  - {{name: udp, protocol: UDP, port: 8053}}
endpoints:
{endpoints}"
        )
    };
    let pod = |i: usize| topology.pod(&backend_name(i)).addr;
    let v4 = slice("IPv4", "dual-v4", &|i| pod(i).to_string());
    let v6 = slice("IPv6", "dual-v6", &|i| ipv6_of(pod(i)).to_string());
    (services, format!("{v4}---\n{v6}"))
}

/// The backends' names that answered `count` requests from `client` to `target`, each
/// checked to come from `target` itself.
fn answerers(client: &NetNs, tcp: bool, target: SocketAddr, count: usize) -> BTreeSet<String> {
    let replies = client
        .run(|| {
            (0..count)
                .map(|_| match tcp {
                    true => tcp_request(target, TIMEOUT),
                    false => udp_request(target, TIMEOUT),
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    let replies: Vec<_> = replies
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let reply = r.unwrap_or_else(|e| panic!("request {i} to {target} failed: {e}"));
            assert_eq!(reply.peer, target, "request {i} answered from elsewhere");
            reply
        })
        .collect();
    tally(&replies).into_keys().collect()
}

#[test]
fn a_dual_stack_service_answers_on_both_families_and_an_empty_ipv6_one_refuses() {
    require_root!();
    let mut topology = Topology::client_and_backends(BACKENDS).unwrap();
    topology.add_outside().unwrap();
    topology.add_ipv6().unwrap();
    // Each family's servers answer with their family in the name, so a request that reached
    // the other family's backend would show.
    let mut servers = Vec::new();
    for i in 0..BACKENDS {
        let pod = topology.pod(&backend_name(i));
        let v6 = ipv6_of(pod.addr);
        for (addr, family) in [(IpAddr::from(pod.addr), "v4"), (IpAddr::from(v6), "v6")] {
            let name = format!("{}-{family}", pod.name);
            servers.push(Server::tcp(&pod.netns, (addr, 8080), &name).unwrap());
            servers.push(Server::udp(&pod.netns, (addr, 8053), &name).unwrap());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (services, slices) = manifests(&topology);
    fs::write(dir.path().join("service.yaml"), services).unwrap();
    fs::write(dir.path().join("endpointslice.yaml"), slices).unwrap();
    let mut options = AgentOptions::new(topology.id(), dir.path(), topology.host_ifaces());
    options.xdp_iface = Some(EXTERNAL_IFACE.into());
    let node_ip6 = ipv6_of(NODE_IP);
    for addr in [IpAddr::from(NODE_IP), IpAddr::from(node_ip6)] {
        options
            .extra_args
            .extend(["--node-address".into(), addr.to_string()]);
    }
    let agent = Agent::start(topology.node(), options).unwrap();

    let expected = |family: &str| -> BTreeSet<String> {
        (0..BACKENDS)
            .map(|i| format!("{}-{family}", backend_name(i)))
            .collect()
    };
    for (vip, family) in [
        (VIP4.parse::<IpAddr>().unwrap(), "v4"),
        (VIP6.parse().unwrap(), "v6"),
    ] {
        for (tcp, port) in [(true, 80), (false, 53)] {
            let target = SocketAddr::new(vip, port);
            assert_eq!(
                answerers(&topology.pod(CLIENT).netns, tcp, target, REQUESTS),
                expected(family),
                "{target}"
            );
        }
    }

    // From outside through XDP: the node port on the node's IPv6 address, to this node's
    // (local, so not masqueraded) IPv6 backends.
    for (tcp, port) in [(true, 30080), (false, 30053)] {
        let target = SocketAddr::new(node_ip6.into(), port);
        assert_eq!(
            answerers(&topology.outside().netns, tcp, target, REQUESTS),
            expected("v6"),
            "{target}"
        );
    }

    let empty: SocketAddr = SocketAddrV6::new(EMPTY_VIP6.parse().unwrap(), 80, 0, 0).into();
    let refused = topology
        .pod(CLIENT)
        .netns
        .run(|| tcp_request(empty, Duration::from_secs(5)))
        .unwrap();
    // Refused (the ICMPv6 port unreachable), not timed out.
    let error = refused.expect_err("a Service without endpoints must not answer");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");

    let inspect = agent.inspect().unwrap();
    for needle in [
        format!("[{VIP6}]:80/TCP"),
        format!("[{VIP6}]:53/UDP"),
        format!("[{}]:8080", ipv6_of(topology.pod(&backend_name(0)).addr)),
    ] {
        assert!(inspect.contains(&needle), "{needle} not in:\n{inspect}");
    }
    drop(servers);
}

/// Node ports of `web6` (a pod on each node) and of `remote6` (node B's pod only).
const WEB6_PORTS: [(Protocol, u16); 2] = [(Protocol::Tcp, 30080), (Protocol::Udp, 30053)];
const REMOTE6_PORTS: [(Protocol, u16); 2] = [(Protocol::Tcp, 30081), (Protocol::Udp, 30054)];

/// An IPv6 NodePort Service (eTP Cluster) at `vip` on `node_ports` with the pods of `nodes`.
fn ipv6_service(name: &str, vip: &str, node_ports: [(Protocol, u16); 2], nodes: &[Node]) -> String {
    let vip: IpAddr = vip.parse().unwrap();
    let pods: Vec<(IpAddr, Node)> = nodes
        .iter()
        .map(|&node| (ipv6_of(node.pod_addr()).into(), node))
        .collect();
    node_port_service(name, vip, "Cluster", node_ports, "", &pods)
}

/// Starts both nodes with IPv6 on the two Services, node A masquerading to ports
/// 62000-62999 and serving node ports on its IPv6 address too, and IPv6 servers in both pods.
fn two_nodes_with_ipv6(dir: &std::path::Path) -> (TwoNodes, Vec<Server>) {
    let web6 = ipv6_service("web6", VIP6, WEB6_PORTS, &Node::ALL);
    let remote6 = ipv6_service("remote6", REMOTE_VIP6, REMOTE6_PORTS, &[Node::B]);
    fs::write(dir.join("services.yaml"), format!("{web6}---\n{remote6}")).unwrap();
    let node_a6 = Node::A.addr6().to_string();
    let setup = Setup {
        ipv6: true,
        node_a_args: [
            "--node-address",
            &node_a6,
            "--masquerade-ports",
            "62000-62999",
        ]
        .map(String::from)
        .into(),
        ..Setup::default()
    };
    let cluster = TwoNodes::start_with(dir, &setup).unwrap();
    let mut servers = Vec::new();
    for node in Node::ALL {
        let pod = cluster.pod(node);
        let addr = IpAddr::from(ipv6_of(pod.addr));
        servers.push(Server::tcp(&pod.netns, (addr, 8080), &pod.name).unwrap());
        servers.push(Server::udp(&pod.netns, (addr, 8053), &pod.name).unwrap());
    }
    (cluster, servers)
}

#[test]
fn an_ipv6_node_port_masquerades_flows_to_the_other_nodes_pod() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (cluster, servers) = two_nodes_with_ipv6(dir.path());
    let node_a6 = Node::A.addr6();
    let log = cluster.agent(Node::A).log();
    assert!(
        log.contains(&format!("leave as {} or {node_a6}", Node::A.addr())),
        "{log}"
    );

    // Every request from outside to node A's IPv6 node port is answered from it, by both
    // pods: node B reaches the client directly, so its pod's answers only come back through
    // node A because node A masqueraded those flows.
    for (protocol, port) in WEB6_PORTS {
        let tcp = protocol == Protocol::Tcp;
        let target = SocketAddr::new(node_a6.into(), port);
        let answered = answerers(cluster.client(), tcp, target, REQUESTS);
        let both: BTreeSet<String> = Node::ALL.map(|n| n.pod_name().to_string()).into();
        assert_eq!(answered, both, "{target}");
    }
    // Node B's pod saw node A's IPv6 address and masquerading ports; node A's pod the client.
    let client6 = IpAddr::from(ipv6_of(CLIENT_ADDR));
    for (i, server) in servers.iter().enumerate() {
        let node = Node::ALL[i / 2];
        for peer in server.peers() {
            match node {
                Node::A => assert_eq!(peer.ip(), client6, "pod-a saw {peer}"),
                Node::B => assert!(
                    peer.ip() == IpAddr::from(node_a6) && (62000..=62999).contains(&peer.port()),
                    "pod-b saw {peer}"
                ),
            }
        }
    }
    let inspect = cluster.agent(Node::A).inspect().unwrap();
    let masqueraded = inspect_output::counter(&inspect, "masqueraded").unwrap_or(0);
    assert!(masqueraded > 0, "node A masqueraded nothing:\n{inspect}");
}

/// Sends one request line of `size` bytes over a new TCP connection to `target` and reads the
/// answer line.
fn big_request(target: SocketAddr, size: usize, timeout: Duration) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = vec![b'x'; size];
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim_end().to_string())
}

#[test]
fn a_routers_packet_too_big_reaches_the_client_through_a_masqueraded_flow() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _servers) = two_nodes_with_ipv6(dir.path());
    // Node B forwards to its pod over a link of IPv6's minimum MTU; the pod's own end keeps
    // 1500, so TCP agrees on segments node B cannot forward and must answer Packet Too Big
    // to their source, node A's IPv6 address (the flow is masqueraded).
    let pod_b = cluster.pod(Node::B);
    let narrow = ["link", "set", &pod_b.host_iface, "mtu", "1280"];
    cluster.node(Node::B).ip(&narrow).unwrap();
    let target = SocketAddr::new(Node::A.addr6().into(), REMOTE6_PORTS[0].1);
    let answer = cluster
        .client()
        .run(|| big_request(target, 4000, Duration::from_secs(5)))
        .unwrap();
    // Only a translated Packet Too Big lets the client's segments shrink and get through.
    assert_eq!(answer.unwrap(), "pod-b");
    let inspect = cluster.agent(Node::A).inspect().unwrap();
    let translated = inspect_output::counter(&inspect, "icmp_error_translated").unwrap_or(0);
    assert!(
        translated > 0,
        "node A translated no ICMPv6 error:\n{inspect}"
    );
}

#[test]
fn in_kubernetes_mode_each_family_follows_its_own_endpoint_slices() {
    require_root!();
    let cluster = KubeCluster::start_configured(
        BACKENDS,
        Options::default(),
        AgentWait::Ready,
        |topology, _, _| topology.add_ipv6(),
    )
    .unwrap();
    let mut servers = Vec::new();
    for i in 0..BACKENDS {
        let pod = cluster.backend(i);
        let addr = IpAddr::from(ipv6_of(pod.addr));
        servers.push(Server::tcp(&pod.netns, (addr, 8080), &pod.name).unwrap());
        servers.push(Server::udp(&pod.netns, (addr, 8053), &pod.name).unwrap());
    }
    let (vip4, vip6): (IpAddr, IpAddr) = (VIP4.parse().unwrap(), VIP6.parse().unwrap());
    let mut dual = objects::service(NAMESPACE, "dual", VIP4.parse().unwrap(), web_ports());
    let spec = objects::spec_mut(&mut dual);
    spec.cluster_ips = Some(vec![VIP4.into(), VIP6.into()]);
    spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    spec.ip_family_policy = Some("RequireDualStack".into());
    let api = cluster.api();
    api.create(&dual).unwrap();
    api.create(&cluster.web_slice("dual", &[0, 1])).unwrap();
    let client = &cluster.client().netns;
    let all = [0, 1];
    wait_for_backends("IPv4 served", client, Protocol::Tcp, (vip4, 80), &all);

    // No IPv6 slice yet: that family alone refuses, as kube-proxy rejects it.
    let http6 = SocketAddr::new(vip6, 80);
    let refused = client.run(|| tcp_request(http6, TIMEOUT)).unwrap();
    let error = refused.expect_err("the IPv6 family has no endpoints yet");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");

    // The IPv6 slice arrives through the watch and serves the IPv6 ClusterIP alone.
    let endpoints = all
        .map(|i| objects::endpoint(ipv6_of(cluster.backend(i).addr), NODE_NAME))
        .to_vec();
    let mut slice6 = web_slice("dual", endpoints);
    slice6.metadata.name = Some("dual-v6".into());
    slice6.address_type = "IPv6".into();
    api.create(&slice6).unwrap();
    wait_for_backends("IPv6 served", client, Protocol::Tcp, http6, &all);
    wait_for_backends("IPv6 UDP served", client, Protocol::Udp, (vip6, 53), &all);
    wait_for_backends("IPv4 still served", client, Protocol::Udp, (vip4, 53), &all);
    drop(servers);
}
