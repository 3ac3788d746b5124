//! End to end: the real `lb-agent`'s `/metrics` counts exactly the flows a client pod opened
//! and the connections it refused, and `/healthz`, `/livez` and `/readyz` answer as
//! kube-proxy's health port does, before and after the first sync and while the Node is
//! tainted for deletion or being deleted.

use std::{
    fs,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::{Node, Taint};
use lb_tests::{
    agent::{Agent, AgentOptions},
    apiserver::objects::service,
    cluster::{
        kube::{wait_for_backends, web_ports, KubeCluster, APPLY_TIMEOUT, NAMESPACE, NODE_NAME},
        Cluster, Protocol,
    },
    example, require_root,
    scrape::{self, HEALTHZ_ADDR},
    servers::tcp_request,
    topology::{Topology, GATEWAY},
};

const TCP_REQUESTS: usize = 12;
const UDP_REQUESTS: usize = 9;
const REFUSED: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(2);
/// A garbage collector walk every 500 ms, under load.
const WALK_TIMEOUT: Duration = Duration::from_secs(5);

/// Labels of the example Service's TCP and UDP series and of the empty one's.
const DEMO_TCP: [(&str, &str); 4] = [
    ("service", "default/demo:http"),
    ("frontend", "198.19.0.10:80"),
    ("protocol", "tcp"),
    ("scope", "all"),
];
const DEMO_UDP: [(&str, &str); 4] = [
    ("service", "default/demo:dns"),
    ("frontend", "198.19.0.10:53"),
    ("protocol", "udp"),
    ("scope", "all"),
];
const EMPTY_TCP: [(&str, &str); 2] = [("service", "default/empty:web"), ("protocol", "tcp")];

/// `count` UDP requests, each from its own socket; the sockets stay open until all are
/// answered, so no two requests share a source port (and a conntrack entry).
fn udp_requests(cluster: &Cluster, count: usize) -> usize {
    cluster
        .client()
        .netns
        .run(|| {
            let sockets: Vec<UdpSocket> = (0..count)
                .map(|_| UdpSocket::bind("0.0.0.0:0").unwrap())
                .collect();
            let mut answered = 0;
            for socket in &sockets {
                socket.set_read_timeout(Some(TIMEOUT)).unwrap();
                socket.send_to(b"hello\n", example::udp_vip()).unwrap();
                let mut buf = [0u8; 256];
                if socket.recv_from(&mut buf).is_ok() {
                    answered += 1;
                }
            }
            answered
        })
        .unwrap()
}

/// A Service with only an SCTP port, programmed as TCP and UDP ports are.
const SCTP_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: diameter, namespace: default}
spec:
  clusterIP: 198.19.0.90
  ports: [{name: diameter, protocol: SCTP, port: 3868}]
";

#[test]
fn metrics_count_the_flows_and_rejects_a_client_caused() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    fs::write(dir.path().join("empty.yaml"), example::EMPTY_SERVICE).unwrap();
    fs::write(dir.path().join("sctp.yaml"), SCTP_SERVICE).unwrap();
    // lbagent_conntrack_entries is the count of the garbage collector's last walk.
    let cluster = Cluster::start_configured(dir.path(), |options| {
        options.extra_args = ["--conntrack-gc-interval", "500ms"]
            .map(String::from)
            .to_vec();
    })
    .unwrap();

    // The walk at start.
    let before = cluster.scrape_after_conntrack_walk(UNIX_EPOCH, WALK_TIMEOUT);
    assert_eq!(
        before.value("lbagent_service_new_flows_total", &DEMO_TCP),
        Some(0.0)
    );
    // The demo's two frontends, the empty Service's and the SCTP Service's.
    assert_eq!(before.value("lbagent_programmed_services", &[]), Some(4.0));
    assert_eq!(before.value("lbagent_invalid_objects", &[]), Some(0.0));
    assert!(before.value("lbagent_sync_proxy_rules_duration_seconds_count", &[]) >= Some(1.0));
    assert!(before.value("lbagent_network_programming_duration_seconds_count", &[]) >= Some(1.0));
    assert!(before.value("lbagent_sync_proxy_rules_last_timestamp_seconds", &[]) > Some(0.0));
    assert_eq!(before.value("lbagent_conntrack_entries", &[]), Some(0.0));
    // kube-proxy's names for the same measurements (nothing changes between the two reads of
    // one scrape: the manifests stay as they are).
    for name in [
        "sync_proxy_rules_duration_seconds_count",
        "sync_proxy_rules_duration_seconds_sum",
        "network_programming_duration_seconds_count",
        "sync_proxy_rules_last_timestamp_seconds",
    ] {
        let ours = before.value(&format!("lbagent_{name}"), &[]);
        assert_eq!(
            before.value(&format!("kubeproxy_{name}"), &[]),
            ours,
            "{name}"
        );
    }
    // In kube-proxy's buckets.
    let programming = "kubeproxy_network_programming_duration_seconds_bucket";
    for le in ["0.25", "59.0", "300.0"] {
        assert!(before.value(programming, &[("le", le)]).is_some(), "{le}");
    }
    let queued = before.value(
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        &[],
    );
    assert!(queued > Some(0.0), "{queued:?}");
    assert!(queued <= before.value("kubeproxy_sync_proxy_rules_last_timestamp_seconds", &[]));

    let replies = cluster
        .requests(Protocol::Tcp, TCP_REQUESTS, TIMEOUT)
        .unwrap();
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    assert_eq!(udp_requests(&cluster, UDP_REQUESTS), UDP_REQUESTS);
    let refused = cluster
        .client()
        .netns
        .run(|| {
            (0..REFUSED)
                .map(|_| tcp_request(SocketAddrV4::new(example::EMPTY_VIP, 80), TIMEOUT))
                .collect::<Vec<_>>()
        })
        .unwrap();
    for result in &refused {
        let kind = result.as_ref().map(|_| ()).unwrap_err().kind();
        assert_eq!(kind, ErrorKind::ConnectionRefused, "{refused:?}");
    }

    // TCP flows closed here expire after 10 s (--conntrack-tcp-timeout-close-wait), answered
    // UDP ones after 120 s: a walk started now keeps them all.
    let after = cluster.scrape_after_conntrack_walk(SystemTime::now(), WALK_TIMEOUT);
    let value = |name: &str, labels: &[(&str, &str)]| {
        after
            .value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", after.0))
    };
    let flows = (TCP_REQUESTS + UDP_REQUESTS) as f64;
    assert_eq!(
        value("lbagent_service_new_flows_total", &DEMO_TCP),
        TCP_REQUESTS as f64
    );
    assert_eq!(
        value("lbagent_service_new_flows_total", &DEMO_UDP),
        UDP_REQUESTS as f64
    );
    // Each TCP request is at least SYN, ACK and the request from the client plus SYN-ACK and
    // the answer; each UDP request one datagram each way.
    assert!(value("lbagent_service_packets_total", &DEMO_TCP) >= 5.0 * TCP_REQUESTS as f64);
    assert!(value("lbagent_service_packets_total", &DEMO_UDP) >= 2.0 * UDP_REQUESTS as f64);
    assert!(value("lbagent_service_bytes_total", &DEMO_UDP) >= 2.0 * 42.0 * UDP_REQUESTS as f64);
    assert_eq!(value("lbagent_service_rejects_total", &DEMO_TCP), 0.0);
    assert_eq!(value("lbagent_service_drops_total", &DEMO_TCP), 0.0);

    assert_eq!(
        value("lbagent_service_rejects_total", &EMPTY_TCP),
        REFUSED as f64
    );
    assert_eq!(value("lbagent_service_new_flows_total", &EMPTY_TCP), 0.0);
    let reason = [("reason", "reject_no_backend")];
    assert_eq!(value("lbagent_drop_count_total", &reason), REFUSED as f64);
    assert_eq!(
        value("lbagent_drop_count_total", &[("reason", "drop_no_backend")]),
        0.0
    );

    let node_wide =
        |counter: &str| value("lbagent_datapath_packets_total", &[("counter", counter)]);
    assert_eq!(node_wide("new_flows"), flows);
    assert!(
        node_wide("packets") >= node_wide("forward_translated") + node_wide("reply_translated")
    );
    // A flow has a forward and a reply entry.
    assert_eq!(value("lbagent_conntrack_entries", &[]), 2.0 * flows);
    assert!(value("lbagent_conntrack_capacity", &[]) >= 2.0 * flows);
}

#[test]
fn health_is_ready_only_after_the_first_sync_like_kube_proxy() {
    require_root!();
    // Kubernetes mode against an API server that is not there: the agent serves its ports
    // but never gets a complete state to program.
    let topology = Topology::client_and_backends(0).unwrap();
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        kubeconfig.path(),
        "apiVersion: v1\nkind: Config\nclusters:\n  - name: none\n    cluster:\n      server: \
         http://127.0.0.1:9\ncontexts:\n  - name: none\n    context:\n      cluster: none\n      \
         user: none\ncurrent-context: none\nusers:\n  - name: none\n    user: {}\n",
    )
    .unwrap();
    let options = AgentOptions::kubernetes(
        topology.id(),
        kubeconfig.path(),
        "node-a",
        topology.host_ifaces(),
        &topology.host_ifaces()[0],
    );
    let agent = Agent::start_serving(topology.node(), options).unwrap();
    let get = |path: &str| {
        topology
            .node()
            .run(|| scrape::get(HEALTHZ_ADDR, path))
            .unwrap()
            .unwrap()
    };
    let ready = get("/readyz");
    assert_eq!(ready.status, 503, "{ready:?}\n{}", agent.log());
    assert!(
        ready
            .body
            .starts_with("{\"lastUpdated\": \"\", \"currentTime\": \"20"),
        "{ready:?}"
    );
    // Starting counts as a pending update that is not overdue yet (kube-proxy's rule).
    assert_eq!(get("/healthz").status, 200);
    assert_eq!(get("/nothing").status, 404);
    drop(agent);

    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let cluster = Cluster::start(dir.path(), "info").unwrap();
    // As kube-proxy's: metrics on loopback only by default, health checks on every address.
    let node = cluster.topology().node();
    let on_node_address = |port: u16| {
        let addr = format!("{GATEWAY}:{port}");
        node.run(|| scrape::get(&addr, "/healthz")).unwrap()
    };
    let refused = on_node_address(10249).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    assert_eq!(on_node_address(10256).unwrap().status, 200);
    for path in ["/healthz", "/readyz"] {
        let response = cluster
            .topology()
            .node()
            .run(|| scrape::get(HEALTHZ_ADDR, path))
            .unwrap()
            .unwrap();
        assert_eq!(response.status, 200, "{path}: {response:?}");
        assert!(
            response.body.starts_with("{\"lastUpdated\": \"20")
                && response.body.contains("\"currentTime\": \"20"),
            "{path}: {response:?}"
        );
    }
}

/// The agent's log lines when the Node's eligibility for load-balancer traffic changes.
const NOT_ELIGIBLE: &str = "is not eligible for load-balancer traffic";
const ELIGIBLE_AGAIN: &str = "is eligible for load-balancer traffic again";
const WEB_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 30), 80);

/// The Service "web" at `WEB_VIP` answers from backend 0.
fn serves(cluster: &KubeCluster, when: &str) {
    let client = &cluster.client().netns;
    wait_for_backends(when, client, Protocol::Tcp, WEB_VIP, &[0]);
}

/// `GET path` on the agent's health port.
fn health(cluster: &KubeCluster, path: &str) -> scrape::Response {
    cluster
        .topology()
        .node()
        .run(|| scrape::get(HEALTHZ_ADDR, path))
        .unwrap()
        .unwrap()
}

/// `/healthz` answers as kube-proxy's for a node that is `eligible` or not; `/livez` and
/// `/readyz` pass either way (draining neither restarts the agent nor takes it out of service).
fn assert_eligible(cluster: &KubeCluster, eligible: bool) {
    let healthz = health(cluster, "/healthz");
    let status = if eligible { 200 } else { 503 };
    assert_eq!(healthz.status, status, "{healthz:?}");
    let field = format!(", \"nodeEligible\": {eligible}}}\n");
    assert!(healthz.body.ends_with(&field), "{healthz:?}");
    for path in ["/livez", "/readyz"] {
        let response = health(cluster, path);
        assert_eq!(response.status, 200, "{path}: {response:?}");
        assert!(!response.body.contains("nodeEligible"), "{response:?}");
    }
}

#[test]
fn healthz_fails_while_the_node_is_tainted_for_deletion_or_being_deleted() {
    require_root!();
    let mut cluster = KubeCluster::start(1).unwrap();
    let api = cluster.api();
    api.create(&service(NAMESPACE, "web", *WEB_VIP.ip(), web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("web", &[0])).unwrap();
    serves(&cluster, "created");
    assert_eligible(&cluster, true);

    // The cluster autoscaler's taint drains the node, and its removal brings it back.
    let node = |cluster: &KubeCluster| cluster.api().get::<Node>("", NODE_NAME).unwrap();
    let mut tainted = node(&cluster);
    tainted.spec.get_or_insert_with(Default::default).taints = Some(vec![Taint {
        key: "ToBeDeletedByClusterAutoscaler".into(),
        value: Some("1700000000".into()),
        effect: "NoSchedule".into(),
        time_added: None,
    }]);
    cluster.api().replace(&tainted).unwrap();
    let agent = cluster.agent_mut();
    agent.wait_for_log(NOT_ELIGIBLE, 1, APPLY_TIMEOUT).unwrap();
    assert!(agent
        .log()
        .contains("tainted ToBeDeletedByClusterAutoscaler"));
    assert_eligible(&cluster, false);
    serves(&cluster, "the node is tainted");

    let mut untainted = node(&cluster);
    untainted.spec.as_mut().unwrap().taints = None;
    cluster.api().replace(&untainted).unwrap();
    let agent = cluster.agent_mut();
    agent
        .wait_for_log(ELIGIBLE_AGAIN, 1, APPLY_TIMEOUT)
        .unwrap();
    assert_eligible(&cluster, true);

    // A Node being deleted (held by a finalizer, so it has a deletionTimestamp) drains too.
    let mut held = node(&cluster);
    held.metadata.finalizers = Some(vec!["e2e.example.com/hold".into()]);
    cluster.api().replace(&held).unwrap();
    let deleting = cluster.api().delete::<Node>("", NODE_NAME).unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let agent = cluster.agent_mut();
    agent.wait_for_log(NOT_ELIGIBLE, 2, APPLY_TIMEOUT).unwrap();
    assert!(agent.log().contains("it is being deleted"));
    assert_eligible(&cluster, false);
    serves(&cluster, "the node is being deleted");
}
