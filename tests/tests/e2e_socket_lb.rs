//! End to end: socket-level translation for the node's own processes. The real `lb-agent`
//! attaches its cgroup socket programs to a test cgroup (`--cgroup-path`); `lb-sock-client`
//! processes in the node namespace, moved into that cgroup, reach the example ClusterIP over
//! TCP, connected UDP and unconnected UDP, and see the Service address as their peer. A
//! client outside the cgroup (same namespace) is not translated. The cgroup is removed on
//! drop, also when a test fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_tests::{
    agent::READY_MARKER,
    cgroup::{SockClient, SockResult, TestCgroup},
    cluster::{Cluster, Protocol},
    example::{self, ENDPOINTSLICE_FILE},
    netns::unique_prefix,
    require_root,
    topology::backend_name,
};

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
    let cgroup = TestCgroup::create(&cgroup_root(), &unique_prefix()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let path = cgroup.path().to_path_buf();
    let cluster =
        Cluster::start_configured(dir.path(), |options| options.cgroup = Some(path)).unwrap();
    (cgroup, dir, cluster)
}

fn client(cluster: &Cluster, cgroup: Option<&TestCgroup>) -> SockClient {
    let client = SockClient::start(Path::new(CLIENT), cluster.topology().node(), cgroup).unwrap();
    if let Some(cgroup) = cgroup {
        assert!(cgroup.procs().contains(&client.pid()));
    }
    client
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

/// `count` requests of `kind`; panics unless each is answered with the Service address as
/// the peer; the answering pods.
fn answerers(client: &mut SockClient, kind: &str, protocol: Protocol, count: usize) -> Vec<String> {
    let target = vip(protocol);
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
        for from in answerers(&mut inside, kind, protocol, REQUESTS) {
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
fn new_sockets_follow_the_endpoints_and_a_service_without_any_refuses_at_once() {
    require_root!();
    let (cgroup, dir, mut cluster) = start();
    let mut inside = client(&cluster, Some(&cgroup));

    set_endpoints(dir.path(), &mut cluster, &[1], 2);
    for (kind, protocol) in KINDS {
        let from: BTreeSet<String> = answerers(&mut inside, kind, protocol, 10)
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
        let from: BTreeSet<String> = answerers(&mut inside, kind, protocol, REQUESTS)
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
    let mut untranslated = false;
    for _ in 0..20 {
        if inside.ask(&format!("tcp {}", example::tcp_vip())).is_err() {
            untranslated = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(untranslated, "still translated after cleanup");
}
