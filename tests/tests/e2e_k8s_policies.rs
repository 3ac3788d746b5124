//! End to end in Kubernetes mode: traffic policies and session affinity, with real traffic
//! from a pod on the node and from outside it.
//!
//! Endpoints whose `nodeName` is [`OTHER_NODE`] stand for pods on another node (in this
//! single-node topology they are reachable all the same, so only the agent's choice decides
//! whether they get traffic).

use std::{io, net::SocketAddrV4};

use k8s_openapi::api::core::v1::{ClientIPConfig, Service, SessionAffinityConfig};
use lb_tests::{
    apiserver::objects::{service, spec_mut},
    cluster::{
        kube::{
            tally, wait_for_backends, wait_until, web_ports, web_slice, KubeCluster, APPLY_TIMEOUT,
            NAMESPACE, NODE_NAME, OTHER_NODE, REQUESTS, REQUEST_TIMEOUT,
        },
        Protocol,
    },
    netns::NetNs,
    require_root,
    topology::{NODE_IP, OUTSIDE_ADDR},
};

const NODE_PORT_TCP: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;

/// A NodePort Service `name` at 198.19.0.`octet` with [`web_ports`] on the node ports above.
fn node_port_service(name: &str, octet: u8) -> Service {
    let mut service = service(NAMESPACE, name, [198, 19, 0, octet].into(), web_ports());
    let spec = spec_mut(&mut service);
    spec.type_ = Some("NodePort".into());
    spec.external_traffic_policy = Some("Cluster".into());
    let ports = spec.ports.as_mut().expect("web ports");
    ports[0].node_port = Some(NODE_PORT_TCP.into());
    ports[1].node_port = Some(NODE_PORT_UDP.into());
    service
}

/// Waits until a TCP connect from `netns` to `target` times out: the SYN was dropped, not
/// rejected (a refusal or an answer keeps waiting).
fn wait_for_silent_drop(what: &str, netns: &NetNs, target: SocketAddrV4) {
    wait_until(what, APPLY_TIMEOUT, || {
        let reply = netns
            .run(|| Protocol::Tcp.request(target, REQUEST_TIMEOUT))
            .map_err(|e| e.to_string())?;
        match reply {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                Ok(())
            }
            other => Err(format!("connect to {target}: {other:?}")),
        }
    });
}

#[test]
fn external_traffic_policy_local_sends_outside_traffic_only_to_local_endpoints() {
    require_root!();
    let cluster = KubeCluster::start(2).unwrap();
    let api = cluster.api();
    let (outside, client) = (&cluster.outside().netns, &cluster.client().netns);
    let (node_tcp, node_udp) = (
        SocketAddrV4::new(NODE_IP, NODE_PORT_TCP),
        SocketAddrV4::new(NODE_IP, NODE_PORT_UDP),
    );
    let cluster_ip = SocketAddrV4::new([198, 19, 0, 60].into(), 80);

    let mut local = node_port_service("local", 60);
    spec_mut(&mut local).external_traffic_policy = Some("Local".into());
    api.create(&local).unwrap();
    let spread = web_slice(
        "local",
        vec![
            cluster.endpoint(0, NODE_NAME),
            cluster.endpoint(1, OTHER_NODE),
        ],
    );
    api.create(&spread).unwrap();

    wait_for_backends("Local: outside TCP", outside, Protocol::Tcp, node_tcp, &[0]);
    wait_for_backends("Local: outside UDP", outside, Protocol::Udp, node_udp, &[0]);
    let peers = cluster.peers(0, Protocol::Tcp, 8080);
    assert!(!peers.is_empty());
    assert!(
        peers.iter().all(|p| p.ip() == OUTSIDE_ADDR),
        "the backend saw other sources than the client: {peers:?}"
    );
    // The policy is about external traffic: pods on the node still reach every endpoint.
    wait_for_backends(
        "Local: pod to ClusterIP",
        client,
        Protocol::Tcp,
        cluster_ip,
        &[0, 1],
    );

    spec_mut(&mut local).external_traffic_policy = Some("Cluster".into());
    api.apply(&local).unwrap();
    wait_for_backends(
        "Cluster: outside TCP",
        outside,
        Protocol::Tcp,
        node_tcp,
        &[0, 1],
    );

    // Local again, with the only endpoint elsewhere: outside traffic is dropped, not rejected.
    spec_mut(&mut local).external_traffic_policy = Some("Local".into());
    api.apply(&local).unwrap();
    api.apply(&web_slice("local", vec![cluster.endpoint(1, OTHER_NODE)]))
        .unwrap();
    let rejects_before = cluster.inspect().unwrap().counter("reject_no_backend");
    wait_for_silent_drop("Local without a local endpoint", outside, node_tcp);
    let inspect = cluster.inspect().unwrap();
    assert!(
        inspect.counter("drop_no_backend").unwrap_or(0) > 0,
        "no drop counted:\n{}",
        inspect.0
    );
    assert_eq!(inspect.counter("reject_no_backend"), rejects_before);
    wait_for_backends("pod to ClusterIP", client, Protocol::Tcp, cluster_ip, &[1]);
}

#[test]
fn internal_traffic_policy_local_keeps_pod_traffic_on_the_node() {
    require_root!();
    let cluster = KubeCluster::start(3).unwrap();
    let api = cluster.api();
    let (outside, client) = (&cluster.outside().netns, &cluster.client().netns);
    let cluster_ip = SocketAddrV4::new([198, 19, 0, 61].into(), 80);

    let mut local = node_port_service("itp", 61);
    spec_mut(&mut local).internal_traffic_policy = Some("Local".into());
    api.create(&local).unwrap();
    let endpoints = vec![
        cluster.endpoint(0, NODE_NAME),
        cluster.endpoint(1, OTHER_NODE),
        cluster.endpoint(2, NODE_NAME),
    ];
    api.create(&web_slice("itp", endpoints)).unwrap();

    wait_for_backends(
        "pod to ClusterIP",
        client,
        Protocol::Tcp,
        cluster_ip,
        &[0, 2],
    );
    let dns = SocketAddrV4::new(*cluster_ip.ip(), 53);
    wait_for_backends("pod to ClusterIP UDP", client, Protocol::Udp, dns, &[0, 2]);
    // External traffic follows externalTrafficPolicy (Cluster).
    let node_tcp = SocketAddrV4::new(NODE_IP, NODE_PORT_TCP);
    wait_for_backends(
        "outside to NodePort",
        outside,
        Protocol::Tcp,
        node_tcp,
        &[0, 1, 2],
    );

    // No local endpoint left: pod traffic is dropped, as kube-proxy does.
    api.apply(&web_slice("itp", vec![cluster.endpoint(1, OTHER_NODE)]))
        .unwrap();
    wait_for_silent_drop("no local endpoint", client, cluster_ip);
    wait_for_backends(
        "outside to NodePort",
        outside,
        Protocol::Tcp,
        node_tcp,
        &[1],
    );
}

#[test]
fn session_affinity_client_ip_keeps_a_client_on_one_backend() {
    require_root!();
    let cluster = KubeCluster::start(3).unwrap();
    let api = cluster.api();
    let (outside, client) = (&cluster.outside().netns, &cluster.client().netns);
    let vip = [198, 19, 0, 62].into();

    let mut sticky = node_port_service("sticky", 62);
    let spec = spec_mut(&mut sticky);
    spec.session_affinity = Some("ClientIP".into());
    spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(600),
        }),
    });
    api.create(&sticky).unwrap();
    api.create(&cluster.web_slice("sticky", &[0, 1, 2]))
        .unwrap();

    let targets = [
        (
            "pod, TCP",
            client,
            Protocol::Tcp,
            SocketAddrV4::new(vip, 80),
        ),
        (
            "pod, UDP",
            client,
            Protocol::Udp,
            SocketAddrV4::new(vip, 53),
        ),
        (
            "outside, NodePort",
            outside,
            Protocol::Tcp,
            SocketAddrV4::new(NODE_IP, NODE_PORT_TCP),
        ),
    ];
    for (what, netns, protocol, target) in targets {
        wait_until(
            &format!("{what}: one backend for all new flows"),
            APPLY_TIMEOUT,
            || {
                let counts = tally(netns, protocol, target, REQUESTS)?;
                (counts.len() == 1)
                    .then_some(())
                    .ok_or(format!("answered by {counts:?}"))
            },
        );
    }

    let spec = spec_mut(&mut sticky);
    spec.session_affinity = Some("None".into());
    spec.session_affinity_config = None;
    api.apply(&sticky).unwrap();
    for (what, netns, protocol, target) in targets {
        wait_until(&format!("{what}: spread again"), APPLY_TIMEOUT, || {
            let counts = tally(netns, protocol, target, REQUESTS)?;
            (counts.len() > 1)
                .then_some(())
                .ok_or(format!("answered by {counts:?}"))
        });
    }
}
