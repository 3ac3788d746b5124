//! End to end: socket-level translation for the node's own processes, and with
//! `--socket-lb-pods` for pods' too. The real `lb-agent` attaches its cgroup socket programs
//! to a test cgroup (`--cgroup-path`); `lb-sock-client` processes in the node namespace or a
//! pod's, moved into that cgroup, reach the example ClusterIP over TCP, connected UDP and
//! unconnected UDP, and see the Service address as their peer. A client outside the cgroup
//! (same namespace) is not translated by the socket programs. `lb-agent monitor` sees the
//! translations and refusals as `socket` events. The cgroup is removed on drop, also when a
//! test fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_tests::{
    agent::{AgentOptions, READY_MARKER},
    cgroup::{SockClient, SockResult, TestCgroup},
    cluster::{Cluster, Protocol},
    example::{self, ENDPOINTSLICE_FILE, SERVICE_FILE},
    inspect_output::{counter, table_rows},
    netns::{unique_prefix, NetNs},
    require_root,
    topology::{backend_name, CLIENT as CLIENT_POD},
};
use lb_userspace::monitor::record::{Line, Record};

const REQUESTS: usize = 30;
/// How long the agent may take to program an edited manifest.
const PROGRAMMED: Duration = Duration::from_secs(10);
const CLIENT: &str = env!("CARGO_BIN_EXE_lb-sock-client");

/// The cgroup v2 root, found as the agent finds it.
fn cgroup_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    lb_userspace::agent::cgroup2_root(&mountinfo).expect("a cgroup v2 mount")
}

/// A test cgroup, the example cluster whose agent translates that cgroup's sockets, and the
/// manifests directory. Declared in reverse drop order by the callers: clients, cluster,
/// cgroup.
fn start() -> (TestCgroup, tempfile::TempDir, Cluster) {
    start_with(|_| {}, |_| {})
}

/// [`start`] with the manifests directory and the agent's options changed first.
fn start_with(
    edit_manifests: impl FnOnce(&Path),
    configure: impl FnOnce(&mut AgentOptions),
) -> (TestCgroup, tempfile::TempDir, Cluster) {
    let cgroup = TestCgroup::create(&cgroup_root(), &unique_prefix()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    edit_manifests(dir.path());
    let path = cgroup.path().to_path_buf();
    let cluster = Cluster::start_configured(dir.path(), |options| {
        options.cgroup = Some(path);
        configure(options);
    })
    .unwrap();
    (cgroup, dir, cluster)
}

fn client(cluster: &Cluster, cgroup: Option<&TestCgroup>) -> SockClient {
    client_in(cluster.topology().node(), cgroup)
}

/// A client in pod `pod`'s namespace (a process of that pod), in `cgroup` if given.
fn pod_client(cluster: &Cluster, pod: &str, cgroup: Option<&TestCgroup>) -> SockClient {
    client_in(&cluster.topology().pod(pod).netns, cgroup)
}

fn client_in(netns: &NetNs, cgroup: Option<&TestCgroup>) -> SockClient {
    let client = SockClient::start(Path::new(CLIENT), netns, cgroup).unwrap();
    if let Some(cgroup) = cgroup {
        assert!(cgroup.procs().contains(&client.pid()));
    }
    client
}

/// The agent's options for pods' sockets too.
fn pods(options: &mut AgentOptions) {
    options.extra_args.push("--socket-lb-pods".into());
}

/// The three ways a client asks: a TCP connection, a connected UDP socket, an unconnected
/// UDP socket (`sendto`/`recvfrom`).
const KINDS: [(&str, Protocol); 3] = [
    ("tcp", Protocol::Tcp),
    ("udp", Protocol::Udp),
    ("udpu", Protocol::Udp),
];

fn vip(protocol: Protocol) -> SocketAddrV4 {
    match protocol {
        Protocol::Tcp => example::tcp_vip(),
        Protocol::Udp => example::udp_vip(),
    }
}

/// `count` requests of `kind` to `target`; panics unless each is answered with `target` as
/// the peer; the answering pods.
fn answerers(
    client: &mut SockClient,
    kind: &str,
    target: SocketAddrV4,
    count: usize,
) -> Vec<String> {
    (0..count)
        .map(|i| {
            let reply = client
                .ask(&format!("{kind} {target}"))
                .unwrap_or_else(|e| panic!("{kind} request {i} to {target} failed: {e}"));
            assert_eq!(reply.peer, SocketAddr::V4(target), "{kind} request {i}");
            reply.from
        })
        .collect()
}

fn names(backends: &[usize]) -> BTreeSet<String> {
    backends.iter().map(|&i| backend_name(i)).collect()
}

fn set_endpoints(dir: &Path, cluster: &mut Cluster, backends: &[usize], applied: usize) {
    let slice = example::endpointslice_yaml(backends);
    example::replace_manifest(dir, ENDPOINTSLICE_FILE, &slice).unwrap();
    cluster
        .agent_mut()
        .wait_for_log(READY_MARKER, applied, PROGRAMMED)
        .unwrap();
}

fn refused(result: &SockResult) -> bool {
    matches!(result, Err(e) if e.starts_with("ConnectionRefused"))
}

/// The node-wide counter `name` now.
fn counter_now(cluster: &Cluster, name: &str) -> u64 {
    let inspect = cluster.agent().inspect().unwrap();
    counter(&inspect, name).unwrap_or_else(|| panic!("no counter {name}:\n{inspect}"))
}

/// The conntrack table's rows now.
fn conntrack_rows(cluster: &Cluster) -> Vec<Vec<String>> {
    table_rows(&cluster.agent().inspect().unwrap(), "CONNTRACK")
}

/// Panics unless conntrack is empty: the TC program tracked no flow.
fn assert_no_conntrack(cluster: &Cluster) {
    let rows = conntrack_rows(cluster);
    assert!(
        rows.is_empty(),
        "{} conntrack entries, first {:?}",
        rows.len(),
        rows[0]
    );
}

/// The example Service's manifest `service` with node ports 30080 (TCP) and 30053 (UDP).
fn with_node_ports(service: String) -> String {
    service
        .replace(
            "targetPort: 8080",
            "targetPort: 8080\n      nodePort: 30080",
        )
        .replace(
            "targetPort: 8053",
            "targetPort: 8053\n      nodePort: 30053",
        )
}

/// The example Service with `edit` applied to its manifest.
fn edit_service(dir: &Path, edit: impl FnOnce(String) -> String) {
    let service = edit(fs::read_to_string(dir.join(SERVICE_FILE)).unwrap());
    example::replace_manifest(dir, SERVICE_FILE, &service).unwrap();
}

#[test]
fn node_processes_in_the_cgroup_reach_a_cluster_ip_and_see_the_service_as_peer() {
    require_root!();
    let (cgroup, _dir, cluster) = start();
    let mut inside = client(&cluster, Some(&cgroup));

    for (kind, protocol) in KINDS {
        let served_before: Vec<usize> = (0..example::BACKENDS)
            .map(|i| cluster.served(i, protocol))
            .collect();
        let mut counts = BTreeMap::new();
        for from in answerers(&mut inside, kind, vip(protocol), REQUESTS) {
            *counts.entry(from).or_insert(0) += 1;
        }
        assert_eq!(
            counts.keys().cloned().collect::<BTreeSet<_>>(),
            names(&[0, 1, 2]),
            "{kind}: {counts:?}"
        );
        for i in 0..example::BACKENDS {
            assert_eq!(
                cluster.served(i, protocol) - served_before[i],
                counts[&backend_name(i)],
                "{kind}: backend {i} saw other requests than answered"
            );
        }
    }

    // One TCP connection stays with its backend.
    let first = inside.ask(&format!("hold {}", example::tcp_vip())).unwrap();
    for _ in 0..5 {
        assert_eq!(inside.ask("ask").unwrap(), first);
    }

    // A process of the same namespace outside the cgroup is not translated: nothing routes the
    // Service address from the node, and no backend sees its requests.
    let mut outside = client(&cluster, None);
    let served: Vec<(usize, usize)> = (0..example::BACKENDS)
        .map(|i| {
            (
                cluster.served(i, Protocol::Tcp),
                cluster.served(i, Protocol::Udp),
            )
        })
        .collect();
    for (kind, protocol) in KINDS {
        let result = outside.ask(&format!("{kind} {}", vip(protocol)));
        assert!(
            result.is_err(),
            "{kind} from outside the cgroup: {result:?}"
        );
    }
    let after: Vec<(usize, usize)> = (0..example::BACKENDS)
        .map(|i| {
            (
                cluster.served(i, Protocol::Tcp),
                cluster.served(i, Protocol::Udp),
            )
        })
        .collect();
    assert_eq!(served, after);
}

#[test]
fn a_monitor_sees_the_nodes_translated_connect_and_its_refused_one_as_socket_events() {
    require_root!();
    let empty = |dir: &Path| fs::write(dir.join("empty.yaml"), example::EMPTY_SERVICE).unwrap();
    let (cgroup, _dir, cluster) = start_with(empty, |_| {});
    let mut inside = client(&cluster, Some(&cgroup));
    let agent = cluster.agent();
    let timeout = Duration::from_secs(10);
    let json = agent
        .monitor(&["--json", "--count", "2", "--hook", "socket"])
        .unwrap();
    let text = agent
        .monitor(&["--count", "2", "--hook", "socket"])
        .unwrap();
    agent
        .wait_for_monitor_clients(2, timeout)
        .unwrap_or_else(|e| panic!("{e}; monitor stderr: {}", json.stderr()));

    let reply = inside.ask(&format!("tcp {}", example::tcp_vip())).unwrap();
    let empty_vip = SocketAddrV4::new(example::EMPTY_VIP, 80);
    let result = inside.ask(&format!("tcp {empty_vip}"));
    assert!(refused(&result), "{result:?}");

    let (status, lines) = json.wait(timeout).unwrap();
    assert!(status.success(), "{status}");
    for line in &lines {
        eprintln!("monitor --json: {line}");
    }
    let records: Vec<Record> = lines
        .iter()
        .map(|line| match serde_json::from_str(line) {
            Ok(Line::Event(record)) => *record,
            other => panic!("not an event: {line} ({other:?})"),
        })
        .collect();
    let [new_flow, reject] = &records[..] else {
        panic!("{lines:?}")
    };
    // connect() of an unbound socket: the kernel has not picked its address and port yet.
    let unbound = Some("0.0.0.0:0".parse().unwrap());
    let answered = cluster.topology().pod(&reply.from).addr;
    assert_eq!(new_flow.kind, "new-flow");
    assert_eq!(new_flow.reason, "new_flows");
    assert_eq!(new_flow.service.as_deref(), Some("default/demo:http"));
    assert_eq!(new_flow.protocol.as_deref(), Some("tcp"));
    assert_eq!(new_flow.source, unbound);
    assert_eq!(
        new_flow.destination,
        Some(SocketAddr::V4(example::tcp_vip()))
    );
    assert_eq!(
        new_flow.backend,
        Some(SocketAddr::new(
            IpAddr::V4(answered),
            example::TCP_TARGET_PORT
        )),
        "the backend that answered"
    );
    assert_eq!((new_flow.iface.as_deref(), new_flow.ifindex), (None, 0));
    assert_eq!(new_flow.hook, "socket");

    assert_eq!(reject.kind, "reject");
    assert_eq!(reject.reason, "reject_no_backend");
    assert_eq!(reject.service.as_deref(), Some("default/empty:web"));
    assert_eq!(reject.source, unbound);
    assert_eq!(reject.destination, Some(SocketAddr::V4(empty_vip)));
    assert_eq!(reject.backend, None);
    assert_eq!(reject.hook, "socket");

    let (status, lines) = text.wait(timeout).unwrap();
    assert!(status.success(), "{status}");
    for line in &lines {
        eprintln!("monitor: {line}");
    }
    let [new_flow, reject] = &lines[..] else {
        panic!("{lines:?}")
    };
    let backend = SocketAddr::new(IpAddr::V4(answered), example::TCP_TARGET_PORT);
    let vip = example::tcp_vip();
    assert!(
        new_flow.ends_with(&format!(
            " new-flow tcp 0.0.0.0:0 -> {vip} => {backend} svc default/demo:http socket"
        )),
        "{new_flow}"
    );
    assert!(
        reject.ends_with(&format!(
            " reject tcp 0.0.0.0:0 -> {empty_vip} reason reject_no_backend svc \
             default/empty:web socket"
        )),
        "{reject}"
    );
    agent.wait_for_monitor_clients(0, timeout).unwrap();
}

#[test]
fn node_ports_external_ips_and_load_balancer_ips_are_reached_from_the_node() {
    require_root!();
    const NODE_ADDR: &str = "198.18.1.1";
    const EXTERNAL_IP: &str = "198.19.5.1";
    const LB_IP: &str = "198.19.5.2";
    let (cgroup, _dir, cluster) = start_with(
        |dir| {
            edit_service(dir, |service| {
                with_node_ports(service.replace(
                    "type: ClusterIP",
                    &format!("type: LoadBalancer\n  externalIPs: [{EXTERNAL_IP}]"),
                )) + &format!("status:\n  loadBalancer:\n    ingress:\n      - ip: {LB_IP}\n")
            });
        },
        |options| {
            options.extra_args = vec!["--node-address".into(), NODE_ADDR.into()];
        },
    );
    let node = cluster.topology().node();
    node.ip(&["addr", "add", &format!("{NODE_ADDR}/32"), "dev", "lo"])
        .unwrap();
    let mut inside = client(&cluster, Some(&cgroup));
    let node_port = |protocol| match protocol {
        Protocol::Tcp => 30080,
        Protocol::Udp => 30053,
    };
    for (kind, protocol) in KINDS {
        let port = vip(protocol).port();
        let targets = [
            SocketAddrV4::new(NODE_ADDR.parse().unwrap(), node_port(protocol)),
            SocketAddrV4::new(EXTERNAL_IP.parse().unwrap(), port),
            SocketAddrV4::new(LB_IP.parse().unwrap(), port),
        ];
        for target in targets {
            let from: BTreeSet<String> = answerers(&mut inside, kind, target, REQUESTS)
                .into_iter()
                .collect();
            assert_eq!(from, names(&[0, 1, 2]), "{kind} to {target}");
        }
    }
    // Untranslated, the node port is a closed port of the node itself.
    let mut outside = client(&cluster, None);
    let result = outside.ask(&format!(
        "tcp {}",
        SocketAddrV4::new(NODE_ADDR.parse().unwrap(), node_port(Protocol::Tcp))
    ));
    assert!(refused(&result), "{result:?}");
}

#[test]
fn session_affinity_keeps_the_nodes_sockets_on_one_backend() {
    require_root!();
    let (cgroup, _dir, cluster) = start_with(
        |dir| {
            let service = fs::read_to_string(dir.join(SERVICE_FILE)).unwrap().replace(
                "type: ClusterIP",
                "type: ClusterIP\n  sessionAffinity: ClientIP",
            );
            example::replace_manifest(dir, SERVICE_FILE, &service).unwrap();
        },
        |_| {},
    );
    let mut inside = client(&cluster, Some(&cgroup));
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let from: BTreeSet<String> = KINDS
            .iter()
            .filter(|(_, p)| *p == protocol)
            .flat_map(|(kind, _)| answerers(&mut inside, kind, vip(protocol), REQUESTS))
            .collect();
        assert_eq!(from.len(), 1, "{protocol}: {from:?}");
    }
}

#[test]
fn new_sockets_follow_the_endpoints_and_a_service_without_any_refuses_at_once() {
    require_root!();
    let (cgroup, dir, mut cluster) = start();
    let mut inside = client(&cluster, Some(&cgroup));

    set_endpoints(dir.path(), &mut cluster, &[1], 2);
    for (kind, protocol) in KINDS {
        let from: BTreeSet<String> = answerers(&mut inside, kind, vip(protocol), 10)
            .into_iter()
            .collect();
        assert_eq!(from, names(&[1]), "{kind}");
    }

    // No endpoints: refused at once (ECONNREFUSED), not timed out, for every kind of socket.
    set_endpoints(dir.path(), &mut cluster, &[], 3);
    for (kind, protocol) in KINDS {
        for _ in 0..5 {
            let result = inside.ask(&format!("{kind} {}", vip(protocol)));
            assert!(refused(&result), "{kind}: {result:?}");
        }
    }

    set_endpoints(dir.path(), &mut cluster, &[0, 2], 4);
    for (kind, protocol) in KINDS {
        let from: BTreeSet<String> = answerers(&mut inside, kind, vip(protocol), REQUESTS)
            .into_iter()
            .collect();
        assert_eq!(from, names(&[0, 2]), "{kind}");
    }
}

#[test]
fn a_restarted_agent_keeps_translating_open_and_new_sockets_and_cleanup_detaches() {
    require_root!();
    const RESTARTS: usize = 5;
    const ROUNDS: usize = 5;
    let (cgroup, _dir, mut cluster) = start();
    let mut inside = client(&cluster, Some(&cgroup));
    let held = inside.ask(&format!("hold {}", example::tcp_vip())).unwrap();

    let mut failures = Vec::new();
    let mut round = |inside: &mut SockClient, phase: &str| {
        for i in 0..ROUNDS {
            match inside.ask("ask") {
                Ok(reply) if reply == held => {}
                other => failures.push(format!("{phase} {i} held: {other:?}")),
            }
            for (kind, protocol) in KINDS {
                let target = vip(protocol);
                match inside.ask(&format!("{kind} {target}")) {
                    Ok(reply) if reply.peer == SocketAddr::V4(target) => {}
                    other => failures.push(format!("{phase} {i} {kind}: {other:?}")),
                }
            }
        }
    };
    for restart in 0..RESTARTS {
        cluster.agent_mut().kill().unwrap();
        round(&mut inside, &format!("restart {restart}, no agent"));
        cluster.restart_agent_after_kill().unwrap();
        round(&mut inside, &format!("restart {restart}, new agent"));
    }
    println!(
        "restarts: {RESTARTS}, requests: {}, failed: {}",
        RESTARTS * 2 * ROUNDS * (1 + KINDS.len()),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    let log = cluster.agent().log();
    for hook in ["connect4", "sendmsg4", "recvmsg4", "getpeername4"] {
        assert!(
            log.contains(&format!("replaced the program in the pinned {hook} link")),
            "{hook} was not adopted:\n{log}"
        );
    }

    // `lb-agent cleanup` removes the socket links with the others: new sockets are no longer
    // translated.
    cluster.agent_mut().stop_keeping_pins().unwrap();
    let links = cluster.agent().options().bpffs_dir.join("links");
    assert!(links.join("sock-connect4").exists());
    cluster.agent().cleanup().unwrap();
    assert!(!links.join("sock-connect4").exists());
    assert!(
        untranslated_soon(&mut inside),
        "still translated after cleanup"
    );
}

#[test]
fn a_restart_with_another_cgroup_moves_the_links_and_no_socket_lb_removes_them() {
    require_root!();
    let (first, _dir, mut cluster) = start();
    let second = TestCgroup::create(&cgroup_root(), &unique_prefix()).unwrap();
    let mut in_first = client(&cluster, Some(&first));
    let mut in_second = client(&cluster, Some(&second));
    let target = format!("tcp {}", example::tcp_vip());
    assert!(in_first.ask(&target).is_ok());
    assert!(in_second.ask(&target).is_err());

    let path = second.path().to_path_buf();
    cluster
        .restart_agent_with(|options| options.cgroup = Some(path))
        .unwrap();
    assert!(
        cluster
            .agent()
            .log()
            .contains("cannot be reused (it is attached to cgroup id"),
        "{}",
        cluster.agent().log()
    );
    assert!(in_second.ask(&target).is_ok());
    assert!(
        untranslated_soon(&mut in_first),
        "the first cgroup is still translated"
    );

    cluster
        .restart_agent_with(|options| options.cgroup = None)
        .unwrap();
    let links = cluster.agent().options().bpffs_dir.join("links");
    assert!(!links.join("sock-connect4").exists());
    assert!(
        untranslated_soon(&mut in_second),
        "still translated with --no-socket-lb"
    );
}

/// Whether a new TCP connection of `client` to the ClusterIP fails within about 2 s: a link
/// whose pin is removed is released by the kernel a moment later.
fn untranslated_soon(client: &mut SockClient) -> bool {
    (0..20).any(|_| {
        client.ask(&format!("tcp {}", example::tcp_vip())).is_err() || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    })
}

#[test]
fn with_socket_lb_pods_a_pods_sockets_go_to_backends_and_tc_passes_their_packets_untouched() {
    require_root!();
    let (cgroup, _dir, cluster) = start_with(|_| {}, pods);
    let mut inside = pod_client(&cluster, CLIENT_POD, Some(&cgroup));
    let counters = [
        "new_flows",
        "not_service",
        "forward_translated",
        "reply_translated",
    ];
    let before = counters.map(|name| counter_now(&cluster, name));

    for (kind, protocol) in KINDS {
        let from: BTreeSet<String> = answerers(&mut inside, kind, vip(protocol), REQUESTS)
            .into_iter()
            .collect();
        assert_eq!(from, names(&[0, 1, 2]), "{kind}");
    }
    let first = inside.ask(&format!("hold {}", example::tcp_vip())).unwrap();
    for _ in 0..5 {
        assert_eq!(inside.ask("ask").unwrap(), first);
    }

    // Each socket was translated once, at connect() or sendmsg(); the TC program on the pods'
    // veths saw their packets addressed to pods, passed them untouched and tracked nothing.
    let [new_flows, not_service, forward, reply] = counters.map(|name| counter_now(&cluster, name));
    assert_eq!(new_flows - before[0], (KINDS.len() * REQUESTS + 1) as u64);
    assert!(not_service - before[1] >= (KINDS.len() * REQUESTS) as u64);
    assert_eq!((forward, reply), (before[2], before[3]));
    assert_no_conntrack(&cluster);

    // A process of the pod outside the cgroup is left to the TC program, which translates
    // its packets and tracks them.
    let mut outside = pod_client(&cluster, CLIENT_POD, None);
    answerers(&mut outside, "tcp", example::tcp_vip(), 5);
    assert!(counter_now(&cluster, "forward_translated") > forward);
    assert!(!conntrack_rows(&cluster).is_empty());
}

#[test]
fn without_socket_lb_pods_a_pods_sockets_are_left_to_the_tc_program() {
    require_root!();
    let (cgroup, _dir, cluster) = start();
    let mut inside = pod_client(&cluster, CLIENT_POD, Some(&cgroup));
    let new_flows = counter_now(&cluster, "new_flows");
    let mut flows = BTreeSet::new();
    for (kind, protocol) in KINDS {
        for i in 0..10 {
            let target = vip(protocol);
            let reply = inside
                .ask(&format!("{kind} {target}"))
                .unwrap_or_else(|e| panic!("{kind} request {i} to {target} failed: {e}"));
            assert_eq!(reply.peer, SocketAddr::V4(target), "{kind} request {i}");
            flows.insert((protocol, reply.local_port));
        }
    }
    // Translated per packet: every request is a new flow of the TC program, with conntrack
    // entries, and its packets are translated both ways. A fresh UDP socket may get the port
    // of an earlier one, whose flow it then continues: flows are counted by protocol and port.
    assert_eq!(
        counter_now(&cluster, "new_flows") - new_flows,
        flows.len() as u64
    );
    assert!(flows.len() >= KINDS.len() * 10 - 2, "{flows:?}");
    assert!(counter_now(&cluster, "forward_translated") > 0);
    assert!(counter_now(&cluster, "reply_translated") > 0);
    assert!(!conntrack_rows(&cluster).is_empty());
}

#[test]
fn a_pods_sockets_are_refused_without_endpoints_and_reach_the_pod_itself_as_backend() {
    require_root!();
    let (cgroup, dir, mut cluster) = start_with(|_| {}, pods);
    set_endpoints(dir.path(), &mut cluster, &[], 2);
    let mut client = pod_client(&cluster, CLIENT_POD, Some(&cgroup));
    for (kind, protocol) in KINDS {
        let result = client.ask(&format!("{kind} {}", vip(protocol)));
        assert!(refused(&result), "{kind}: {result:?}");
    }

    // backend-1 is the Service's only endpoint and asks it: its sockets connect to its own
    // address (over its loopback), no hairpin translation, no conntrack entry.
    set_endpoints(dir.path(), &mut cluster, &[1], 3);
    let mut itself = pod_client(&cluster, &backend_name(1), Some(&cgroup));
    for (kind, protocol) in KINDS {
        let from: BTreeSet<String> = answerers(&mut itself, kind, vip(protocol), 5)
            .into_iter()
            .collect();
        assert_eq!(from, names(&[1]), "{kind}");
    }
    assert_eq!(counter_now(&cluster, "hairpinned"), 0);
    assert_no_conntrack(&cluster);
}

#[test]
fn a_pod_reaches_a_node_port_and_keeps_session_affinity() {
    require_root!();
    const NODE_ADDR: &str = "198.18.1.1";
    let node_port = |protocol| match protocol {
        Protocol::Tcp => SocketAddrV4::new(NODE_ADDR.parse().unwrap(), 30080),
        Protocol::Udp => SocketAddrV4::new(NODE_ADDR.parse().unwrap(), 30053),
    };
    let (cgroup, _dir, cluster) = start_with(
        |dir| {
            edit_service(dir, |service| {
                with_node_ports(service.replace(
                    "type: ClusterIP",
                    "type: NodePort\n  sessionAffinity: ClientIP",
                ))
            })
        },
        |options| {
            pods(options);
            options
                .extra_args
                .extend(["--node-address".into(), NODE_ADDR.into()]);
        },
    );
    cluster
        .topology()
        .node()
        .ip(&["addr", "add", &format!("{NODE_ADDR}/32"), "dev", "lo"])
        .unwrap();
    let mut client = pod_client(&cluster, CLIENT_POD, Some(&cgroup));
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for target in [vip(protocol), node_port(protocol)] {
            let from: BTreeSet<String> = KINDS
                .iter()
                .filter(|(_, p)| *p == protocol)
                .flat_map(|(kind, _)| answerers(&mut client, kind, target, 10))
                .collect();
            assert_eq!(from.len(), 1, "{target}: {from:?}");
        }
    }
    assert_no_conntrack(&cluster);
}

#[test]
fn internal_traffic_policy_local_keeps_a_pods_sockets_on_this_nodes_endpoints() {
    require_root!();
    const NODE: &str = "node-a";
    // Backends 0 and 2 run on this node, backend 1 on another.
    let slice = |backends: &[usize]| {
        let mut yaml = example::endpointslice_yaml(backends);
        for &i in backends {
            let node = if i == 1 { "node-b" } else { NODE };
            let name = format!("      name: {}\n", backend_name(i));
            yaml = yaml.replace(&name, &format!("{name}    nodeName: {node}\n"));
        }
        yaml
    };
    let (cgroup, dir, mut cluster) = start_with(
        |dir| {
            edit_service(dir, |service| {
                service.replace(
                    "type: ClusterIP",
                    "type: ClusterIP\n  internalTrafficPolicy: Local",
                )
            });
            example::replace_manifest(dir, ENDPOINTSLICE_FILE, &slice(&[0, 1, 2])).unwrap();
        },
        |options| {
            pods(options);
            options
                .extra_args
                .extend(["--node-name".into(), NODE.into()]);
        },
    );
    let mut client = pod_client(&cluster, CLIENT_POD, Some(&cgroup));
    for (kind, protocol) in KINDS {
        let from: BTreeSet<String> = answerers(&mut client, kind, vip(protocol), REQUESTS)
            .into_iter()
            .collect();
        assert_eq!(from, names(&[0, 2]), "{kind}");
    }

    // Only a remote endpoint: kube-proxy drops, the socket call fails at once.
    example::replace_manifest(dir.path(), ENDPOINTSLICE_FILE, &slice(&[1])).unwrap();
    cluster
        .agent_mut()
        .wait_for_log(READY_MARKER, 2, PROGRAMMED)
        .unwrap();
    for (kind, protocol) in KINDS {
        let result = client.ask(&format!("{kind} {}", vip(protocol)));
        assert!(
            matches!(&result, Err(e) if e.starts_with("HostUnreachable")),
            "{kind}: {result:?}"
        );
    }
}
