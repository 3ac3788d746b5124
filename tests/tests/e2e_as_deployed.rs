//! As deployed: the agent runs the way a kubelet runs the DaemonSet's pod, from the YAML of
//! `manifests/deploy/` (parsed, not restated), in an image assembled from the build output,
//! under podman with runc: host network as node A's namespace, only the listed
//! capabilities, no privilege escalation, a read-only root filesystem, the runtime's
//! read-only `/proc/sys` (the agent writes no sysctl) and masked paths, containerd's
//! `RuntimeDefault` seccomp rules, the hostPath mounts (a bpffs directory of this test's own
//! for `/sys/fs/bpf`; for the node's `/sys/fs/cgroup` a directory laid out as this hybrid
//! machine's, whose `unified` is a test cgroup, never the machine's root cgroup), and the
//! service account of the in-memory API server, reached over HTTPS with its token at the
//! address the ConfigMap's `LB_K8S_API_SERVER` gives. Topology:
//! [`lb_tests::cluster::two_node`], node A with a client pod; node B runs no agent (its pod is
//! only a backend).
//!
//! The test fails, rather than skips, when podman is missing: `cargo xtask setup` installs it.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Service;
use lb_tests::{
    agent::{remove_pins, untranslated_after_cleanup, READY_MARKER},
    apiserver::{objects, ApiServer, Options},
    cgroup::{HybridCgroupDir, SockClient, TestCgroup},
    cluster::{
        kube::{tally, web_ports, web_slice, NAMESPACE},
        two_node::{Node, TwoNodes, CLIENT_ADDR, LAN_IFACE},
        Protocol,
    },
    deploy::Deployment,
    load::{client_traffic, Traffic},
    netns::{unique_prefix, NetNs},
    podman::{pod_args, write_runtime_default_seccomp, Container, Kubelet, Podman, IMAGE_BINARY},
    require_root, scrape,
    servers::tcp_request,
};

/// The client pod on node A.
const CLIENT_POD: &str = "client-a";
const CLIENT_POD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 20);
/// Service `web`: ClusterIP, endpoints on both nodes.
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// Service `empty`: ClusterIP, no endpoints.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 12);
/// Sends [`REQUESTS`] `protocol` requests from the outside client to the node port `target`;
/// asserts that `server`'s pod answered each from `target` and saw each come from `source`.
fn assert_node_port_served(
    deployed: &Deployed,
    protocol: Protocol,
    target: SocketAddrV4,
    server: Node,
    source: IpAddr,
) {
    let before = deployed.cluster.peers(server, protocol).len();
    let replies = deployed
        .cluster
        .requests(protocol, target, REQUESTS)
        .unwrap();
    let failed: Vec<_> = replies
        .iter()
        .filter(|r| {
            !r.as_ref()
                .is_ok_and(|r| r.from == server.pod_name() && r.peer == SocketAddr::V4(target))
        })
        .collect();
    eprintln!(
        "{protocol} to {target} ({server:?}'s pod): {REQUESTS} requests, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    let peers = deployed.cluster.peers(server, protocol).split_off(before);
    assert!(peers.iter().all(|p| p.ip() == source), "{peers:?}");
}

/// Service `remote`: NodePort (externalTrafficPolicy Cluster), its one endpoint on node B.
const REMOTE_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const REMOTE_NODE_PORTS: [(Protocol, u16); 2] = [(Protocol::Tcp, 30080), (Protocol::Udp, 30053)];
/// Service `local`: NodePort (externalTrafficPolicy Cluster), its one endpoint on node A.
const LOCAL_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 12);
const LOCAL_NODE_PORTS: [(Protocol, u16); 2] = [(Protocol::Tcp, 30081), (Protocol::Udp, 30054)];
/// Where `KUBERNETES_SERVICE_HOST` points, as in a cluster whose `kubernetes` Service nothing
/// translates yet: the agent must not depend on it.
const UNPROGRAMMED_CLUSTER_IP: &str = "198.19.255.1";
/// The kubelet's probes reach a host-network pod at the node's address.
const HEALTH_PORT: u16 = 10256;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `lb-agent monitor` in the container may take to see a new flow.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(20);
const REQUESTS: usize = 20;
/// Kills and restarts of the container under load.
const RESTARTS: usize = 3;
/// Traffic before the first kill, between restarts and after the last.
const BETWEEN_RESTARTS: Duration = Duration::from_millis(500);
/// The DaemonSet's host cgroup hierarchy, which the test replaces by a test cgroup.
const HOST_CGROUP: &str = "/sys/fs/cgroup";
const SOCK_CLIENT: &str = env!("CARGO_BIN_EXE_lb-sock-client");

/// Everything the pod needs on this machine; dropped in field order: containers and images,
/// then the bpffs directory (detaching whatever is still pinned), the node's cgroup stand-in
/// and the test cgroup, the API server, the namespaces.
struct Deployed {
    podman: Podman,
    bpffs: BpffsDir,
    _host_cgroup: HybridCgroupDir,
    cgroup: TestCgroup,
    api: ApiServer,
    cluster: TwoNodes,
    deployment: Deployment,
    kubelet: Kubelet,
    _account: tempfile::TempDir,
}

/// A bpffs directory of this test's own, standing for the node's `/sys/fs/bpf`.
struct BpffsDir(PathBuf);

impl Drop for BpffsDir {
    fn drop(&mut self) {
        remove_pins(&self.0);
    }
}

impl Deployed {
    /// Builds both nodes (no agents), the API server in node A's namespace with the Nodes and
    /// Services, podman with the agent's image, and the kubelet's view of node A.
    fn new() -> Deployed {
        let podman = Podman::new().expect("podman + runc (`cargo xtask setup` installs them)");
        let mut cluster = TwoNodes::without_agents().unwrap();
        cluster
            .add_pod(Node::A, CLIENT_POD, CLIENT_POD_ADDR)
            .unwrap();
        let bpffs = BpffsDir(Path::new("/sys/fs/bpf").join(cluster.id(Node::A)));
        fs::create_dir(&bpffs.0).unwrap();
        let cgroup = TestCgroup::create(&cgroup_root(), &unique_prefix()).unwrap();
        let host_cgroup = HybridCgroupDir::new(&cgroup, &unique_prefix()).unwrap();

        let api = ApiServer::start_in(cluster.node(Node::A), Options::default()).unwrap();
        for node in Node::ALL {
            api.create(&objects::node(node.name(), node.addr()))
                .unwrap();
        }
        let endpoint = |node: Node| objects::endpoint(node.pod_addr(), node.name());
        api.create(&objects::service(NAMESPACE, "web", WEB_VIP, web_ports()))
            .unwrap();
        api.create(&web_slice("web", Node::ALL.map(endpoint).to_vec()))
            .unwrap();
        let remote = node_port_service("remote", REMOTE_VIP, REMOTE_NODE_PORTS);
        api.create(&remote).unwrap();
        api.create(&objects::service(
            NAMESPACE,
            "empty",
            EMPTY_VIP,
            web_ports(),
        ))
        .unwrap();
        api.create(&web_slice("remote", vec![endpoint(Node::B)]))
            .unwrap();
        let local = node_port_service("local", LOCAL_VIP, LOCAL_NODE_PORTS);
        api.create(&local).unwrap();
        api.create(&web_slice("local", vec![endpoint(Node::A)]))
            .unwrap();
        let account = tempfile::tempdir().unwrap();
        api.write_service_account(account.path()).unwrap();

        let mut deployment = Deployment::load();
        deployment.set_config("LB_K8S_API_SERVER", &api.url());
        let image = deployment.agent_container().image.clone().unwrap();
        podman.import_agent_image(&image).unwrap();
        let seccomp = podman.dir().join("runtime-default.json");
        write_runtime_default_seccomp(&seccomp).unwrap();
        let kubelet = Kubelet {
            node_name: Node::A.name().into(),
            netns: cluster.node(Node::A).path(),
            host_paths: BTreeMap::from([
                ("/sys/fs/bpf".into(), bpffs.0.clone()),
                // The node's cgroups: the socket programs attach to the test cgroup only.
                (HOST_CGROUP.into(), host_cgroup.path().to_path_buf()),
            ]),
            service_account: account.path().to_path_buf(),
            env: BTreeMap::from([
                (
                    "KUBERNETES_SERVICE_HOST".into(),
                    UNPROGRAMMED_CLUSTER_IP.into(),
                ),
                ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
            ]),
            runtime_default_seccomp: seccomp,
        };
        Deployed {
            podman,
            bpffs,
            _host_cgroup: host_cgroup,
            cgroup,
            api,
            cluster,
            deployment,
            kubelet,
            _account: account,
        }
    }

    /// Starts the DaemonSet's container as `name` and waits for `marker` in its log.
    fn start(&self, name: &str, marker: &str) -> Container<'_> {
        let args = pod_args(&self.deployment, &self.kubelet, None);
        let container = self.podman.start(name, &args).unwrap();
        if let Err(e) = container.wait_for_log(marker, READY_TIMEOUT) {
            panic!("{e}");
        }
        container
    }

    /// The value of the DaemonSet's argument that starts with `prefix` (`--flag=`).
    fn agent_arg(&self, prefix: &str) -> Option<String> {
        let nodes = BTreeMap::from([("spec.nodeName", Node::A.name())]);
        let args = self.deployment.agent_args(&nodes);
        args.iter()
            .find_map(|a| Some(a.strip_prefix(prefix)?.to_string()))
    }

    /// Node A's address and service `remote`'s NodePort of `protocol`.
    fn node_port(protocol: Protocol) -> SocketAddrV4 {
        Self::node_port_of(REMOTE_NODE_PORTS, protocol)
    }

    /// Node A's address and the NodePort of `protocol` among `node_ports`.
    fn node_port_of(node_ports: [(Protocol, u16); 2], protocol: Protocol) -> SocketAddrV4 {
        let port = node_ports
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, port)| *port)
            .unwrap();
        SocketAddrV4::new(Node::A.addr(), port)
    }
}

/// A NodePort Service `name` at `vip`, [`web_ports`] on `node_ports`, eTP Cluster.
fn node_port_service(name: &str, vip: Ipv4Addr, node_ports: [(Protocol, u16); 2]) -> Service {
    let mut service = objects::service(NAMESPACE, name, vip, web_ports());
    let spec = objects::spec_mut(&mut service);
    spec.type_ = Some("NodePort".into());
    spec.external_traffic_policy = Some("Cluster".into());
    for (port, (_, node_port)) in spec.ports.iter_mut().flatten().zip(node_ports) {
        port.node_port = Some(node_port.into());
    }
    service
}

/// The effective capabilities, no-new-privileges and seccomp mode of the container's process,
/// from `/proc/<pid>/status` on the host.
fn process_security(deployed: &Deployed, name: &str) -> BTreeMap<String, String> {
    let pid = deployed
        .podman
        .run(&["inspect", "--format", "{{.State.Pid}}", name])
        .unwrap();
    let status = fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    status
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| ["CapEff", "CapBnd", "NoNewPrivs", "Seccomp"].contains(key))
        .map(|(key, value)| (key.to_string(), value.trim().to_string()))
        .collect()
}

/// Capability names by number (linux/capability.h).
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability mask of exactly those the DaemonSet adds (it drops ALL), as
/// `/proc/<pid>/status` prints it.
fn declared_capabilities(deployment: &Deployment) -> String {
    let security = deployment.agent_container().security_context.as_ref();
    let capabilities = security.and_then(|s| s.capabilities.as_ref()).unwrap();
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let mask = capabilities
        .add
        .iter()
        .flatten()
        .map(|name| {
            let bit = CAPABILITIES.iter().position(|c| c == name);
            1u64 << bit.unwrap_or_else(|| panic!("unknown capability {name}"))
        })
        .fold(0, |mask, bit| mask | bit);
    format!("{mask:016x}")
}

#[test]
fn the_daemonset_as_a_kubelet_runs_it_serves_the_node_survives_kills_and_cleans_up() {
    require_root!();
    let deployed = Deployed::new();
    let started = Instant::now();
    let container = deployed.start("lb-agent-0", READY_MARKER);
    eprintln!("ready {:?} after `podman run`", started.elapsed());
    let log = container.log();
    assert!(
        log.contains(&format!("kubernetes API server: {}/", deployed.api.url())),
        "{log}"
    );
    assert!(
        log.contains(&format!("external interface (default route): {LAN_IFACE}")),
        "{log}"
    );
    assert!(!log.contains("accept_local"), "{log}");
    // The socket programs at the node's cgroup v2 root, through the DaemonSet's mount: its
    // `unified` on a hybrid node.
    let cgroup_arg = deployed
        .agent_arg("--cgroup-path=")
        .expect("the DaemonSet's --cgroup-path");
    assert!(
        log.contains(&format!(
            "attached lb_sock_connect4 to cgroup {cgroup_arg}/unified"
        )),
        "{log}"
    );

    // Only the listed capabilities, no privilege escalation, a seccomp filter.
    let security = process_security(&deployed, "lb-agent-0");
    let caps = declared_capabilities(&deployed.deployment);
    assert_eq!(security["CapEff"], caps, "{security:?}");
    assert_eq!(security["CapBnd"], caps, "{security:?}");
    assert_eq!(security["NoNewPrivs"], "1", "{security:?}");
    assert_eq!(security["Seccomp"], "2", "{security:?}");

    // The kubelet's readiness probe.
    let health = SocketAddr::new(Node::A.addr().into(), HEALTH_PORT).to_string();
    let node_a = deployed.cluster.node(Node::A);
    let readyz = node_a.run(|| scrape::get(&health, "/readyz")).unwrap();
    assert_eq!(readyz.unwrap().status, 200);

    // A pod on node A reaches the ClusterIP, answered by the pods of both nodes.
    let client_ns = client_pod_netns(&deployed);
    for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53)] {
        let target = SocketAddrV4::new(WEB_VIP, port);
        let counts = tally(client_ns, protocol, target, REQUESTS).unwrap();
        eprintln!("{protocol} from {CLIENT_POD} to {target}: {counts:?}");
        assert_eq!(counts.values().sum::<usize>(), REQUESTS, "{counts:?}");
        for node in Node::ALL {
            assert!(counts.contains_key(node.pod_name()), "{counts:?}");
        }
    }

    // `kubectl exec ds/lb-agent -- lb-agent monitor`: the agent's socket is in the
    // DaemonSet's emptyDir, where the command finds it by default. The pod connects until the
    // monitor has seen one of its new flows.
    let monitor = thread::scope(|scope| {
        let exec = scope.spawn(|| {
            deployed.podman.run(&[
                "exec",
                "lb-agent-0",
                IMAGE_BINARY,
                "monitor",
                "--json",
                "--count",
                "1",
                "--kind",
                "new-flow",
                "--address",
                &CLIENT_POD_ADDR.to_string(),
            ])
        });
        let deadline = Instant::now() + MONITOR_TIMEOUT;
        while !exec.is_finished() && Instant::now() < deadline {
            let target = SocketAddrV4::new(WEB_VIP, 80);
            let _ = client_ns.run(|| tcp_request(target, Duration::from_secs(1)));
            thread::sleep(Duration::from_millis(100));
        }
        exec.join().expect("podman exec")
    });
    let monitor = monitor.unwrap_or_else(|e| panic!("lb-agent monitor in the container: {e}"));
    eprintln!("lb-agent monitor in the container: {monitor}");
    assert!(
        monitor.contains(r#""kind":"new-flow""#)
            && monitor.contains(&format!(r#""destination":"{WEB_VIP}:80""#)),
        "{monitor}"
    );

    // The node's own processes (host network) in the cgroup reach the ClusterIP, and a Service
    // without endpoints refuses at once; a process outside the cgroup is not translated.
    let mut in_cgroup =
        SockClient::start(Path::new(SOCK_CLIENT), node_a, Some(&deployed.cgroup)).unwrap();
    let mut outside_cgroup = SockClient::start(Path::new(SOCK_CLIENT), node_a, None).unwrap();
    for (kind, port) in [("tcp", 80), ("udp", 53), ("udpu", 53)] {
        let target = SocketAddrV4::new(WEB_VIP, port);
        let mut answered = BTreeMap::new();
        for i in 0..REQUESTS {
            let reply = in_cgroup
                .ask(&format!("{kind} {target}"))
                .unwrap_or_else(|e| panic!("node process, {kind} request {i} to {target}: {e}"));
            assert_eq!(reply.peer, SocketAddr::V4(target), "{kind} request {i}");
            *answered.entry(reply.from).or_insert(0) += 1;
        }
        eprintln!("{kind} from node A's namespace to {target}: {answered:?}");
        for node in Node::ALL {
            assert!(answered.contains_key(node.pod_name()), "{answered:?}");
        }
    }
    let empty = in_cgroup.ask(&format!("tcp {}", SocketAddrV4::new(EMPTY_VIP, 80)));
    assert!(
        matches!(&empty, Err(e) if e.starts_with("ConnectionRefused")),
        "{empty:?}"
    );
    let untranslated = outside_cgroup.ask(&format!("tcp {}", SocketAddrV4::new(WEB_VIP, 80)));
    assert!(untranslated.is_err(), "{untranslated:?}");

    // An outside client reaches the NodePort on node A whose endpoint is on node B; pod-b sees
    // node A's address (masqueraded), so its replies go back through node A.
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let target = Deployed::node_port(protocol);
        assert_node_port_served(&deployed, protocol, target, Node::B, Node::A.addr().into());
    }

    // `podman kill` and a new container, as the kubelet restarts a crashed one, under load.
    let (container, pod_traffic, outside_traffic) = under_load(&deployed, || {
        let mut current = container;
        for restart in 1..=RESTARTS {
            thread::sleep(BETWEEN_RESTARTS);
            current.kill().unwrap();
            drop(current);
            let name = format!("lb-agent-{restart}");
            let started = Instant::now();
            current = deployed.start(&name, READY_MARKER);
            eprintln!(
                "restart {restart}: ready {:?} after `podman run`",
                started.elapsed()
            );
            let log = current.log();
            for link in ["tcx", "connect4"] {
                assert!(
                    log.contains(&format!("replaced the program in the pinned {link} link")),
                    "restart {restart} did not adopt the pinned {link} link:\n{log}"
                );
            }
        }
        thread::sleep(BETWEEN_RESTARTS);
        current
    });
    pod_traffic.assert_nothing_lost("pod to ClusterIP: ", RESTARTS, RESTARTS * 20);
    outside_traffic.assert_nothing_lost("outside to NodePort: ", RESTARTS, RESTARTS * 20);

    // The DaemonSet is deleted: SIGTERM, a clean exit that leaves the pins. Then `lb-agent
    // cleanup` through the same image, mounts and security context removes everything.
    let name = container.name().to_string();
    deployed
        .podman
        .run(&["stop", "--time", "10", &name])
        .unwrap();
    let exit = deployed
        .podman
        .run(&["inspect", "--format", "{{.State.ExitCode}}", &name])
        .unwrap();
    assert_eq!(exit.trim(), "0", "{}", container.log());
    drop(container);
    let bpffs_dir = deployed
        .agent_arg("--bpffs-dir=")
        .expect("the DaemonSet's --bpffs-dir");
    let cleanup = ["cleanup".to_string(), format!("--bpffs-dir={bpffs_dir}")];
    let mut run = vec!["run".to_string(), "--rm".into()];
    run.extend(pod_args(
        &deployed.deployment,
        &deployed.kubelet,
        Some(&cleanup),
    ));
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let output = deployed.podman.run_with_stderr(&run).unwrap();
    eprintln!("{}", output.trim());
    assert!(output.contains("removed"), "{output}");
    let left = pins_under(&deployed.bpffs.0);
    assert!(left.is_empty(), "pins left after cleanup: {left:?}");
    assert!(untranslated_after_cleanup(
        client_ns,
        SocketAddrV4::new(WEB_VIP, 80)
    ));
    let link = node_a.ip(&["-d", "link", "show", LAN_IFACE]).unwrap();
    assert!(!link.contains("xdp"), "XDP still attached: {link}");
    // The cgroup links went with their pins: the node's processes are no longer translated.
    let web = format!("tcp {}", SocketAddrV4::new(WEB_VIP, 80));
    let detached = (0..20).any(|_| {
        in_cgroup.ask(&web).is_err() || {
            thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(
        detached,
        "the node's processes are still translated after cleanup"
    );
}

#[test]
fn with_the_runtimes_read_only_proc_sys_node_ports_to_local_and_remote_pods_answer() {
    require_root!();
    let deployed = Deployed::new();
    let _container = deployed.start("lb-agent-ro-sysctls", READY_MARKER);
    // The runtime mounts the container's /proc/sys read-only and the DaemonSet mounts no
    // sysctls: the agent can write none.
    let pid = deployed
        .podman
        .run(&[
            "inspect",
            "--format",
            "{{.State.Pid}}",
            "lb-agent-ro-sysctls",
        ])
        .unwrap();
    let mounts = fs::read_to_string(format!("/proc/{}/mountinfo", pid.trim())).unwrap();
    let proc_sys = mounts
        .lines()
        .find(|line| line.split_whitespace().nth(4) == Some("/proc/sys"))
        .unwrap_or_else(|| panic!("no /proc/sys mount: {mounts}"));
    let options = proc_sys.split_whitespace().nth(5).unwrap_or_default();
    assert!(options.split(',').any(|o| o == "ro"), "{proc_sys}");

    // Replies from node A's pod leave with node A's address, and masqueraded packets carry
    // it both ways: the packets the kernel's routing would drop without accept_local.
    let client = IpAddr::V4(CLIENT_ADDR);
    for (node_ports, server, source) in [
        (LOCAL_NODE_PORTS, Node::A, client),
        (REMOTE_NODE_PORTS, Node::B, IpAddr::V4(Node::A.addr())),
    ] {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let target = Deployed::node_port_of(node_ports, protocol);
            assert_node_port_served(&deployed, protocol, target, server, source);
        }
    }
    let node_a = deployed.cluster.node(Node::A);
    assert_eq!(node_a.accept_local_on().unwrap(), [] as [String; 0]);
}

#[test]
fn without_any_one_of_its_capabilities_the_agent_stops_with_one_line_naming_it() {
    require_root!();
    let mut deployed = Deployed::new();
    let granted = deployed
        .deployment
        .agent_container()
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap();
    for cap in &granted {
        let container = deployed
            .deployment
            .daemonset
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .map(|pod| &mut pod.containers[0])
            .unwrap();
        let capabilities = container
            .security_context
            .as_mut()
            .and_then(|s| s.capabilities.as_mut())
            .unwrap();
        capabilities.add = Some(granted.iter().filter(|c| *c != cap).cloned().collect());
        let name = format!("lb-agent-without-{}", cap.to_lowercase());
        let needle = format!("lacks CAP_{cap}:");
        let container = deployed.start(&name, &needle);
        let deadline = Instant::now() + Duration::from_secs(10);
        while container.running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !container.running(),
            "the agent keeps running without {cap}"
        );
        let log = container.log();
        let line = log.lines().find(|l| l.contains(&needle)).unwrap();
        eprintln!("{line}");
        // Nothing was loaded or attached.
        assert!(pins_under(&deployed.bpffs.0).is_empty(), "{log}");
    }
}

/// The cgroup v2 root, found as the agent finds it: where the test cgroup goes.
fn cgroup_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    lb_userspace::agent::cgroup2_root(&mountinfo).expect("a cgroup v2 mount")
}

/// Files (pins) anywhere under `dir`.
fn pins_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// The namespace of the client pod on node A.
fn client_pod_netns(deployed: &Deployed) -> &NetNs {
    &deployed.cluster.pod_named(Node::A, CLIENT_POD).netns
}

/// Runs `disturb` while the client pod loads the ClusterIP and the outside client the
/// NodePort ([`client_traffic`]); returns what `disturb` returned and what each client saw.
fn under_load<T: Send>(
    deployed: &Deployed,
    disturb: impl FnOnce() -> T + Send,
) -> (T, Traffic, Traffic) {
    let pod = client_pod_netns(deployed).open().unwrap();
    let outside = deployed.cluster.client().open().unwrap();
    let stop = &AtomicBool::new(false);
    thread::scope(|scope| {
        let web = |port| SocketAddrV4::new(WEB_VIP, port);
        let (tcp, udp) = (web(80), web(53));
        let pod_worker = scope.spawn(move || client_traffic(pod, tcp, udp, stop));
        let outside_worker = scope.spawn(move || {
            let tcp = Deployed::node_port(Protocol::Tcp);
            let udp = Deployed::node_port(Protocol::Udp);
            client_traffic(outside, tcp, udp, stop)
        });
        let disturbed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(disturb));
        stop.store(true, Ordering::Relaxed);
        let pod_traffic = pod_worker.join().expect("pod traffic panicked");
        let outside_traffic = outside_worker.join().expect("outside traffic panicked");
        match disturbed {
            Ok(value) => (value, pod_traffic, outside_traffic),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
