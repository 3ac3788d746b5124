//! End to end: kube-proxy nftables' answers for the service CIDRs. A pod's TCP connection to
//! an address inside them that no Service holds gets no answer (dropped, counted
//! `drop_unallocated_service_ip`) while the ClusterIP answers; a process of the node (socket
//! programs on a test cgroup) fails `connect()` to the ClusterIP's unexposed port with
//! `ECONNREFUSED` and to the unallocated address with `EHOSTUNREACH`, and an unconnected UDP
//! `sendmsg()` the same way. The CIDRs come from `--service-cidrs` in file mode, and from a
//! ServiceCIDR object the agent watches in Kubernetes mode (whose deletion ends the drop);
//! an API server without ServiceCIDRs (404) holds up nothing else.

use std::{
    fs,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::networking::v1::ServiceCIDR;
use lb_tests::{
    apiserver::{
        objects::{service, service_cidr},
        Options, Resource,
    },
    cgroup::{SockClient, SockResult, TestCgroup},
    cluster::{
        kube::{
            wait_for_backends, wait_until, web_ports, AgentWait, KubeCluster, APPLY_TIMEOUT,
            NAMESPACE,
        },
        Cluster, Protocol,
    },
    example, inspect_output,
    netns::{unique_prefix, NetNs},
    require_root,
    servers::tcp_request,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_lb-sock-client");
const TIMEOUT: Duration = Duration::from_secs(2);
/// The service CIDR, holding the example's ClusterIP (198.19.0.10) and Kubernetes mode's.
const SERVICE_CIDR: &str = "198.19.0.0/24";
/// An address inside it that no Service holds.
const UNALLOCATED: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 99);
/// Kubernetes mode's ClusterIP.
const K8S_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 21);
const DROPS: &str = "drop_unallocated_service_ip";
const REJECTS: &str = "reject_unexposed_port";

/// The cgroup v2 root, found as the agent finds it.
fn cgroup_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    lb_userspace::agent::cgroup2_root(&mountinfo).expect("a cgroup v2 mount")
}

fn failed_with(result: &SockResult, kind: &str) -> bool {
    matches!(result, Err(e) if e.starts_with(kind))
}

/// What kube-proxy's nftables mode answers, for a ClusterIP `vip` exposing TCP 80 and UDP 53
/// inside [`SERVICE_CIDR`]: checked from the pod in `pod` and a process of the node in the
/// agent's cgroup; `counter` reads a node-wide counter.
fn assert_answers(
    pod: &NetNs,
    node: &mut SockClient,
    vip: Ipv4Addr,
    counter: impl Fn(&str) -> u64,
) {
    let served = pod.run(|| tcp_request(SocketAddrV4::new(vip, 80), TIMEOUT));
    assert!(served.unwrap().is_ok(), "the ClusterIP answers the pod");
    let drops = counter(DROPS);
    let unanswered = pod.run(|| tcp_request(SocketAddrV4::new(UNALLOCATED, 80), TIMEOUT));
    let kind = unanswered.unwrap().unwrap_err().kind();
    assert!(
        matches!(kind, ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "no answer, not {kind:?}"
    );
    assert!(counter(DROPS) > drops, "the pod's SYNs were dropped");

    let answer = node.ask(&format!("tcp {vip}:80"));
    assert!(answer.is_ok(), "the ClusterIP answers the node: {answer:?}");
    let (drops, rejects) = (counter(DROPS), counter(REJECTS));
    for command in [format!("tcp {vip}:443"), format!("udpu {vip}:80")] {
        let result = node.ask(&command);
        assert!(
            failed_with(&result, "ConnectionRefused"),
            "{command}: {result:?}"
        );
    }
    for command in [
        format!("tcp {UNALLOCATED}:80"),
        format!("udpu {UNALLOCATED}:53"),
    ] {
        let result = node.ask(&command);
        assert!(
            failed_with(&result, "HostUnreachable"),
            "{command}: {result:?}"
        );
    }
    assert_eq!(counter(REJECTS) - rejects, 2);
    assert_eq!(counter(DROPS) - drops, 2);
}

fn node_client(node: &NetNs, cgroup: &TestCgroup) -> SockClient {
    SockClient::start(Path::new(CLIENT), node, Some(cgroup)).unwrap()
}

#[test]
fn file_mode_takes_the_service_cidrs_from_the_flag() {
    require_root!();
    let cgroup = TestCgroup::create(&cgroup_root(), &unique_prefix()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let path = cgroup.path().to_path_buf();
    let mut cluster = Cluster::start_configured(dir.path(), |options| {
        options.cgroup = Some(path);
        let flag = ["--service-cidrs".to_string(), SERVICE_CIDR.to_string()];
        options.extra_args.extend(flag);
    })
    .unwrap();
    let logged = format!("service CIDRs: {SERVICE_CIDR} ");
    cluster
        .agent_mut()
        .wait_for_log(&logged, 1, APPLY_TIMEOUT)
        .unwrap();
    let mut node = node_client(cluster.topology().node(), &cgroup);
    let counter = |name: &str| {
        let inspect = cluster.agent().inspect().unwrap();
        inspect_output::counter(&inspect, name).unwrap_or_else(|| panic!("no {name}:\n{inspect}"))
    };
    assert_answers(&cluster.client().netns, &mut node, example::VIP, counter);
}

fn kube_counter(cluster: &KubeCluster, name: &str) -> u64 {
    let inspect = cluster.inspect().unwrap();
    inspect
        .counter(name)
        .unwrap_or_else(|| panic!("no {name}:\n{}", inspect.0))
}

#[test]
fn kubernetes_mode_watches_service_cidr_objects() {
    require_root!();
    let cgroup = TestCgroup::create(&cgroup_root(), &unique_prefix()).unwrap();
    let path = cgroup.path().to_path_buf();
    let mut cluster =
        KubeCluster::start_configured(1, Options::default(), AgentWait::Ready, |_, _, agent| {
            agent.cgroup = Some(path);
            Ok(())
        })
        .unwrap();
    let api = cluster.api();
    api.create(&service(NAMESPACE, "web", K8S_CLUSTER_IP, web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("web", &[0])).unwrap();
    let client = &cluster.client().netns;
    let http = SocketAddrV4::new(K8S_CLUSTER_IP, 80);
    wait_for_backends("web is programmed", client, Protocol::Tcp, http, &[0]);
    // Created after the agent started: only the watch can tell it. Both ranges are written.
    api.create(&service_cidr("kubernetes", &[SERVICE_CIDR, "2001:2::/112"]))
        .unwrap();
    let logged = format!("service CIDRs: {SERVICE_CIDR},2001:2::/112 ");
    cluster
        .agent_mut()
        .wait_for_log(&logged, 1, APPLY_TIMEOUT)
        .unwrap();

    let mut node = node_client(cluster.topology().node(), &cgroup);
    let counter = |name: &str| kube_counter(&cluster, name);
    assert_answers(&cluster.client().netns, &mut node, K8S_CLUSTER_IP, counter);

    cluster
        .api()
        .delete::<ServiceCIDR>("", "kubernetes")
        .unwrap();
    cluster
        .agent_mut()
        .wait_for_log("service CIDRs: none", 1, APPLY_TIMEOUT)
        .unwrap();
    let drops = kube_counter(&cluster, DROPS);
    let result = node.ask(&format!("tcp {UNALLOCATED}:80"));
    assert!(result.is_err(), "nothing serves {UNALLOCATED}");
    let after = kube_counter(&cluster, DROPS);
    assert_eq!(after, drops, "no longer dropped: {result:?}");
}

#[test]
fn an_api_server_without_service_cidrs_holds_up_nothing_else() {
    require_root!();
    let options = Options {
        unserved: vec![Resource::ServiceCidrs],
        ..Options::default()
    };
    // Ready: the agent programmed the cluster although ServiceCIDRs cannot be listed.
    let cluster =
        KubeCluster::start_configured(1, options, AgentWait::Ready, |_, _, _| Ok(())).unwrap();
    let api = cluster.api();
    api.create(&service(NAMESPACE, "web", K8S_CLUSTER_IP, web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("web", &[0])).unwrap();
    let client = &cluster.client().netns;
    let http = SocketAddrV4::new(K8S_CLUSTER_IP, 80);
    wait_for_backends("web is programmed", client, Protocol::Tcp, http, &[0]);
    // The list is retried with backoff (0.8 s, doubling), and reported only once.
    wait_until("ServiceCIDRs listed again", APPLY_TIMEOUT, || {
        let lists = api
            .requests()
            .iter()
            .filter(|r| r.is_list_of(Resource::ServiceCidrs))
            .count();
        match lists {
            0 | 1 => Err(format!("{lists} lists")),
            _ => Ok(()),
        }
    });
    let warned = "does not serve networking.k8s.io/v1 ServiceCIDR (404 Not Found";
    assert_eq!(
        cluster.agent().log_count(warned),
        1,
        "{}",
        cluster.agent().log()
    );
}
