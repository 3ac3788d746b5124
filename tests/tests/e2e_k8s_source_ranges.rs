//! End to end in Kubernetes mode: `loadBalancerSourceRanges` let only sources inside the
//! ranges reach a LoadBalancer's IP, from outside the node (XDP), from a pod (TC, its own
//! address) and from the node's own processes (socket programs on a test cgroup: the node's
//! address, served when a range holds it, else `EHOSTUNREACH` at `connect()`; a socket bound
//! to an address, by that address); its node port is not filtered, as in kube-proxy.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use lb_tests::{
    apiserver::objects::{service, spec_mut},
    cgroup::{SockClient, TestCgroup},
    cluster::{
        kube::{
            tally, wait_for_backends, wait_until, web_ports, AgentWait, KubeCluster, APPLY_TIMEOUT,
            NAMESPACE,
        },
        Protocol,
    },
    netns::{unique_prefix, NetNs},
    require_root,
    topology::{backend_name, CLIENT_ADDR, NODE_IP, OUTSIDE_ADDR},
};

const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
/// An address of the node's loopback that the node's sockets bind to, inside 198.18.3.0/24.
const BOUND_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
const NODE_PORT: u16 = 30081;
const SOCK_CLIENT: &str = env!("CARGO_BIN_EXE_lb-sock-client");

/// The cgroup v2 root, found as the agent finds it.
fn cgroup_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    lb_userspace::agent::cgroup2_root(&mountinfo).expect("a cgroup v2 mount")
}

/// Waits until no request from `netns` to `target` is answered (the program drops them).
fn wait_for_drops(netns: &NetNs, protocol: Protocol, target: SocketAddrV4) {
    wait_until(
        &format!("{protocol} to {target} dropped"),
        APPLY_TIMEOUT,
        || match (0..3).find_map(|_| tally(netns, protocol, target, 1).ok()) {
            None => Ok(()),
            Some(answered) => Err(format!("answered by {answered:?}")),
        },
    );
}

/// Waits until the node's process `node` gets `expected` for a TCP connection, a connected and
/// an unconnected UDP socket to the load-balancer IP (only UDP sockets when they are bound to
/// `bound`): answered by backend 0 with the Service as the peer (`None`), or the call failing
/// with this error kind.
fn wait_for_node(node: &mut SockClient, bound: Option<Ipv4Addr>, expected: Option<&str>) {
    let kinds = match bound {
        None => &[("tcp", 80), ("udp", 53), ("udpu", 53)][..],
        Some(_) => &[("udp", 53), ("udpu", 53)],
    };
    let from = bound.map(|ip| format!(" {ip}")).unwrap_or_default();
    for (kind, port) in kinds {
        let target = SocketAddrV4::new(LB_IP, *port);
        wait_until(
            &format!("the node's {kind} to {target}{from}: {expected:?}"),
            APPLY_TIMEOUT,
            || match (node.ask(&format!("{kind} {target}{from}")), expected) {
                (Ok(reply), None)
                    if reply.from == backend_name(0) && reply.peer == SocketAddr::V4(target) =>
                {
                    Ok(())
                }
                (Err(e), Some(kind)) if e.starts_with(kind) => Ok(()),
                (other, _) => Err(format!("{other:?}")),
            },
        );
    }
}

/// The Service with `ranges` (and its status, which `apply` replaces too).
fn with_ranges(lb: &Service, ranges: Option<&[&str]>) -> Service {
    let mut changed = lb.clone();
    spec_mut(&mut changed).load_balancer_source_ranges =
        ranges.map(|ranges| ranges.iter().map(|r| r.to_string()).collect());
    changed
}

#[test]
fn only_sources_inside_the_ranges_reach_the_load_balancer_ip_from_outside_pods_and_the_node() {
    require_root!();
    let cgroup = TestCgroup::create(&cgroup_root(), &unique_prefix()).unwrap();
    let cgroup_path = cgroup.path().to_path_buf();
    let cluster = KubeCluster::start_with(1, AgentWait::Ready, |_, options| {
        options.cgroup = Some(cgroup_path);
        Ok(())
    })
    .unwrap();
    let bound = format!("{BOUND_IP}/32");
    let lo = ["addr", "add", bound.as_str(), "dev", "lo"];
    cluster.topology().node().ip(&lo).unwrap();
    let api = cluster.api();
    let mut lb = service(NAMESPACE, "lb", [198, 19, 0, 21].into(), web_ports());
    let spec = spec_mut(&mut lb);
    spec.type_ = Some("LoadBalancer".into());
    spec.ports.as_mut().unwrap()[0].node_port = Some(NODE_PORT.into());
    // 198.18.1.0/30 holds the outside client and the node, not the client pod; the first
    // entry is invalid and skipped.
    spec.load_balancer_source_ranges = Some(vec!["not-a-cidr".into(), "198.18.1.0/30".into()]);
    api.create(&lb).unwrap();
    api.create(&cluster.web_slice("lb", &[0])).unwrap();
    let status = ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(LB_IP.to_string()),
                ..LoadBalancerIngress::default()
            }]),
        }),
        ..ServiceStatus::default()
    };
    api.set_service_status(NAMESPACE, "lb", &status).unwrap();
    lb.status = Some(status);
    let (outside, client) = (&cluster.outside().netns, &cluster.client().netns);
    let mut node = SockClient::start(
        Path::new(SOCK_CLIENT),
        cluster.topology().node(),
        Some(&cgroup),
    )
    .unwrap();
    let tcp = SocketAddrV4::new(LB_IP, 80);
    let udp = SocketAddrV4::new(LB_IP, 53);
    let node_port = SocketAddrV4::new(NODE_IP, NODE_PORT);
    assert!(OUTSIDE_ADDR.octets()[3] < 4 && NODE_IP.octets()[3] < 4);
    assert_eq!(CLIENT_ADDR, Ipv4Addr::new(198, 18, 0, 10));
    wait_for_backends("inside the range, TCP", outside, Protocol::Tcp, tcp, &[0]);
    wait_for_backends("inside the range, UDP", outside, Protocol::Udp, udp, &[0]);
    wait_for_node(&mut node, None, None);
    wait_for_node(&mut node, Some(BOUND_IP), Some("HostUnreachable"));
    wait_for_drops(client, Protocol::Tcp, tcp);
    wait_for_drops(client, Protocol::Udp, udp);
    wait_for_backends(
        "a pod at the node port",
        client,
        Protocol::Tcp,
        node_port,
        &[0],
    );

    // Ranges holding the pod and the bound address only: the pod is served, and the node's
    // sockets bound there; the outside client's new flows are dropped and the node's other
    // sockets refused at once, while the node port still serves the outside.
    let pod_and_bound = ["198.18.0.8/30", "198.18.3.0/24"];
    api.apply(&with_ranges(&lb, Some(&pod_and_bound))).unwrap();
    wait_for_backends("a pod inside, TCP", client, Protocol::Tcp, tcp, &[0]);
    wait_for_backends("a pod inside, UDP", client, Protocol::Udp, udp, &[0]);
    wait_for_drops(outside, Protocol::Tcp, tcp);
    wait_for_drops(outside, Protocol::Udp, udp);
    wait_for_node(&mut node, None, Some("HostUnreachable"));
    wait_for_node(&mut node, Some(BOUND_IP), None);
    wait_for_backends("its node port", outside, Protocol::Tcp, node_port, &[0]);
    let inspect = cluster.inspect().unwrap();
    let drops = inspect.counter("drop_source_range");
    assert!(drops.is_some_and(|n| n >= 6), "{}", inspect.0);

    // Without ranges every source is served again.
    api.apply(&with_ranges(&lb, None)).unwrap();
    wait_for_backends("no ranges, outside", outside, Protocol::Tcp, tcp, &[0]);
    wait_for_backends("no ranges, a pod", client, Protocol::Tcp, tcp, &[0]);
    wait_for_node(&mut node, None, None);
}
