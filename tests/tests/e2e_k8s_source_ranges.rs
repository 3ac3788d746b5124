//! End to end in Kubernetes mode: `loadBalancerSourceRanges` lets only clients inside the
//! ranges reach a LoadBalancer's IP from outside the node; its node port and the pods on the
//! node are not filtered, as in kube-proxy.

use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
use lb_tests::{
    apiserver::objects::{service, spec_mut},
    cluster::{
        kube::{
            tally, wait_for_backends, wait_until, web_ports, KubeCluster, APPLY_TIMEOUT, NAMESPACE,
        },
        Protocol,
    },
    require_root,
    topology::{NODE_IP, OUTSIDE_ADDR},
};

const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
const NODE_PORT: u16 = 30081;

/// Waits until no request from outside to `target` is answered (the program drops them).
fn wait_for_drops(cluster: &KubeCluster, protocol: Protocol, target: SocketAddrV4) {
    let outside = &cluster.outside().netns;
    wait_until(
        &format!("{protocol} to {target} dropped"),
        APPLY_TIMEOUT,
        || match (0..3).find_map(|_| tally(outside, protocol, target, 1).ok()) {
            None => Ok(()),
            Some(answered) => Err(format!("answered by {answered:?}")),
        },
    );
}

#[test]
fn a_client_outside_the_ranges_is_dropped_and_one_inside_is_served() {
    require_root!();
    let cluster = KubeCluster::start(1).unwrap();
    let api = cluster.api();
    let mut lb = service(NAMESPACE, "lb", [198, 19, 0, 21].into(), web_ports());
    let spec = spec_mut(&mut lb);
    spec.type_ = Some("LoadBalancer".into());
    spec.ports.as_mut().unwrap()[0].node_port = Some(NODE_PORT.into());
    // The outside client is inside 198.18.1.0/30; the first entry is invalid and skipped.
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
    let (outside, client) = (&cluster.outside().netns, &cluster.client().netns);
    let tcp = SocketAddrV4::new(LB_IP, 80);
    let udp = SocketAddrV4::new(LB_IP, 53);
    assert!(
        OUTSIDE_ADDR.octets()[3] < 4,
        "the outside client is in the range"
    );
    wait_for_backends("inside the range, TCP", outside, Protocol::Tcp, tcp, &[0]);
    wait_for_backends("inside the range, UDP", outside, Protocol::Udp, udp, &[0]);

    // Ranges that leave the outside client out: its new flows are dropped, the node port and
    // the pods still reach the Service.
    let mut narrowed = lb.clone();
    narrowed.status = Some(status);
    spec_mut(&mut narrowed).load_balancer_source_ranges = Some(vec!["198.18.1.128/25".into()]);
    api.apply(&narrowed).unwrap();
    wait_for_drops(&cluster, Protocol::Tcp, tcp);
    wait_for_drops(&cluster, Protocol::Udp, udp);
    let node_port = SocketAddrV4::new(NODE_IP, NODE_PORT);
    wait_for_backends("its node port", outside, Protocol::Tcp, node_port, &[0]);
    wait_for_backends("a pod", client, Protocol::Tcp, tcp, &[0]);
    let inspect = cluster.inspect().unwrap();
    let drops = inspect.counter("drop_source_range");
    assert!(drops.is_some_and(|n| n > 0), "{}", inspect.0);

    // Without ranges every source is served again.
    spec_mut(&mut narrowed).load_balancer_source_ranges = None;
    api.apply(&narrowed).unwrap();
    wait_for_backends("no ranges", outside, Protocol::Tcp, tcp, &[0]);
}
