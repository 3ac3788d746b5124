//! End to end in Kubernetes mode: ICMP errors about translated flows reach the socket they
//! are meant for. A UDP Service whose pod does not listen on the target port: the pod's kernel
//! answers the DNATed datagram with a port unreachable quoting it, the agent translates the
//! error back, and the client's connected socket fails with ECONNREFUSED at once, as under
//! kube-proxy, instead of waiting for an answer that never comes.

use std::{
    io,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use lb_tests::{
    apiserver::objects::{endpoint_port, endpoint_slice, service, service_port},
    cluster::{
        kube::{connected_udp_request, wait_for_backends, KubeCluster, NAMESPACE, NODE_NAME},
        Protocol,
    },
    require_root,
};

/// Much less than the request timeout a lost answer would take.
const QUICK: Duration = Duration::from_millis(500);
/// A UDP port no pod listens on.
const CLOSED_PORT: u16 = 9053;

#[test]
fn a_closed_udp_port_behind_a_service_refuses_the_client_at_once() {
    require_root!();
    let cluster = KubeCluster::start(1).unwrap();
    let api = cluster.api();
    let client = &cluster.client().netns;
    let vip = [198, 19, 0, 80].into();
    let ports = vec![
        service_port("http", Protocol::Tcp, 80, 8080),
        service_port("closed", Protocol::Udp, 53, CLOSED_PORT),
    ];
    api.create(&service(NAMESPACE, "closed", vip, ports))
        .unwrap();
    let slice = endpoint_slice(
        NAMESPACE,
        "closed",
        "closed-1",
        vec![
            endpoint_port("http", Protocol::Tcp, 8080),
            endpoint_port("closed", Protocol::Udp, CLOSED_PORT),
        ],
        vec![cluster.endpoint(0, NODE_NAME)],
    );
    api.create(&slice).unwrap();
    let http = SocketAddrV4::new(vip, 80);
    wait_for_backends("programmed", client, Protocol::Tcp, http, &[0]);
    let counter = |name: &str| {
        let inspect = cluster.inspect().unwrap();
        inspect.counter(name).unwrap_or(0)
    };
    let translated_before = counter("icmp_error_translated");

    let closed = SocketAddrV4::new(vip, 53);
    let started = Instant::now();
    let result = connected_udp_request(client, closed).unwrap();
    let took = started.elapsed();
    match result {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => panic!("UDP to {closed}: expected ECONNREFUSED, got {other:?} after {took:?}"),
    }
    assert!(took < QUICK, "the refusal took {took:?}");
    assert!(counter("icmp_error_translated") > translated_before);
    assert_eq!(counter("reject_no_backend"), 0, "the Service has a backend");
}
