//! End to end: the agent reaches its API server through the `kubernetes` Service once its
//! pinned maps translate it. The agent starts as a pod does (service account,
//! `KUBERNETES_SERVICE_HOST`/`_PORT` at the Service's ClusterIP) with an explicit address
//! (`LB_K8S_API_SERVER`), inside the test cgroup its socket programs attach to, as a deployed
//! agent runs below the node's root cgroup. The in-memory API server listens on every address
//! of the node namespace; its certificate names the explicit address, the node's address and
//! the ClusterIP, as a real API server's does. The explicit address is an address of the
//! node's loopback that the test removes; the `kubernetes` Service's endpoint is the node's
//! own address. Every request records the server address it came in at.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use lb_tests::{
    agent::READY_MARKER,
    apiserver::{objects, Options, RequestRecord},
    cgroup::TestCgroup,
    cluster::{
        kube::{
            in_cluster, wait_for_backends, wait_until, web_ports, AgentWait, KubeCluster,
            APPLY_TIMEOUT, NAMESPACE, NODE_NAME,
        },
        Protocol,
    },
    netns::unique_prefix,
    require_root,
    topology::NODE_IP,
};

/// The `kubernetes` Service's ClusterIP and port, as the kubelet passes them to every pod.
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
const CLUSTER_PORT: u16 = 443;
/// The API server's explicit address (`LB_K8S_API_SERVER`): on the node namespace's loopback
/// until the test removes it.
const EXPLICIT: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);

/// The cgroup v2 root, found as the agent finds it.
fn cgroup_root() -> std::path::PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    lb_userspace::agent::cgroup2_root(&mountinfo).expect("a cgroup v2 mount")
}

/// Whether every one of `requests` came in at `ip`.
fn all_at(requests: &[RequestRecord], ip: Ipv4Addr) -> bool {
    requests.iter().all(|r| r.local_addr.ip() == IpAddr::V4(ip))
}

#[test]
fn a_restarted_agent_reaches_its_api_server_through_the_kubernetes_service() {
    require_root!();
    let cgroup = TestCgroup::create(&cgroup_root(), &unique_prefix()).unwrap();
    let account = tempfile::tempdir().unwrap();
    let api_options = Options {
        listen: Ipv4Addr::UNSPECIFIED,
        alt_names: [EXPLICIT, NODE_IP, CLUSTER_IP].map(IpAddr::V4).to_vec(),
        ..Options::default()
    };
    let cgroup_path = cgroup.path().to_path_buf();
    let mut cluster =
        KubeCluster::start_configured(2, api_options, AgentWait::Ready, |topology, api, agent| {
            let node = topology.node();
            // The ClusterIP answers too at the first start (an address of the node for now):
            // with nothing pinned the agent must not use it all the same.
            for ip in [EXPLICIT, CLUSTER_IP] {
                node.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
            }
            api.write_service_account(account.path())?;
            let explicit = api.url_at(EXPLICIT.into());
            let env = [
                ("KUBERNETES_SERVICE_HOST", CLUSTER_IP.to_string()),
                ("KUBERNETES_SERVICE_PORT", CLUSTER_PORT.to_string()),
                ("LB_K8S_API_SERVER", explicit),
            ];
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            in_cluster(agent, account.path(), &env);
            agent.cgroup = Some(cgroup_path);
            Ok(())
        })
        .unwrap();
    let node = cluster.topology().node();
    node.ip(&["addr", "del", &format!("{CLUSTER_IP}/32"), "dev", "lo"])
        .unwrap();
    let explicit = cluster.api().url_at(EXPLICIT.into());
    let log = cluster.agent().log();
    assert!(
        log.contains(&format!(
            "kubernetes API server: {explicit}/ (the explicit address; not the kubernetes \
             Service {CLUSTER_IP}:{CLUSTER_PORT}: this node's maps do not hold it yet)"
        )),
        "{log}"
    );
    let first_start = cluster.api().requests();
    assert!(!first_start.is_empty());
    assert!(all_at(&first_start, EXPLICIT), "{first_start:#?}");

    // The cluster's `kubernetes` Service: its endpoint is the API server on the node's address.
    let port = cluster.api().addr().port();
    let ports = vec![objects::service_port(
        "https",
        Protocol::Tcp,
        CLUSTER_PORT,
        port,
    )];
    let service = objects::service("default", "kubernetes", CLUSTER_IP, ports);
    cluster.api().create(&service).unwrap();
    let slice = objects::endpoint_slice(
        "default",
        "kubernetes",
        "kubernetes",
        vec![objects::endpoint_port("https", Protocol::Tcp, port)],
        vec![objects::endpoint(NODE_IP, NODE_NAME)],
    );
    cluster.api().create(&slice).unwrap();
    let frontend = format!("{CLUSTER_IP}:{CLUSTER_PORT}/TCP");
    wait_until(
        "the kubernetes Service is programmed",
        APPLY_TIMEOUT,
        || {
            let inspect = cluster.inspect().map_err(|e| e.to_string())?;
            let rows = inspect.frontend(&frontend);
            match rows.iter().any(|row| row.backends > 0) {
                true => Ok(()),
                false => Err(format!("{rows:?}")),
            }
        },
    );

    // The explicit address stops answering; the agent restarts (SIGKILL, as a crash).
    node.ip(&["addr", "del", &format!("{EXPLICIT}/32"), "dev", "lo"])
        .unwrap();
    let before = cluster.api().requests().len();
    cluster.restart_agent_with(|_| {}).unwrap();
    let log = cluster.agent().log();
    assert!(
        log.contains(&format!(
            "kubernetes API server: https://{CLUSTER_IP}:{CLUSTER_PORT}/ (the kubernetes \
             Service, which this node's maps translate"
        )),
        "{log}"
    );
    assert!(log.contains(READY_MARKER), "{log}");

    // It keeps syncing: a Service created after the restart reaches the pods.
    let api = cluster.api();
    let vip = Ipv4Addr::new(198, 19, 0, 10);
    api.create(&objects::service(NAMESPACE, "web", vip, web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("web", &[0, 1])).unwrap();
    let client = &cluster.client().netns;
    let http = SocketAddrV4::new(vip, 80);
    wait_for_backends("web is programmed", client, Protocol::Tcp, http, &[0, 1]);
    let after_restart = &cluster.api().requests()[before..];
    assert!(
        after_restart.iter().any(RequestRecord::is_watch),
        "{after_restart:#?}"
    );
    // Through the ClusterIP, translated to the Service's endpoint by the socket programs.
    assert!(all_at(after_restart, NODE_IP), "{after_restart:#?}");
    eprintln!(
        "{} requests at {EXPLICIT} before the restart, {} through {CLUSTER_IP} after",
        first_start.len(),
        after_restart.len()
    );
}
