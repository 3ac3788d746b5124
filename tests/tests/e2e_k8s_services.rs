//! End to end in Kubernetes mode: the real `lb-agent` watches the in-memory API server from
//! the node namespace while Services and EndpointSlices are created, scaled and deleted, for
//! every service type, with real traffic from a pod and from outside the node.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::Duration,
};

use k8s_openapi::{
    api::{
        core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb_tests::{
    apiserver::objects::{
        endpoint, endpoint_port, endpoint_slice, service, service_port, spec_mut, HEADLESS_LABEL,
        SERVICE_PROXY_NAME_LABEL,
    },
    cluster::{
        kube::{
            tally, wait_for_backends, wait_until, web_ports, KubeCluster, APPLY_TIMEOUT, NAMESPACE,
            NODE_NAME, REQUEST_TIMEOUT,
        },
        Protocol,
    },
    require_root,
    servers::TcpClient,
    topology::NODE_IP,
};

#[test]
fn a_cluster_ip_service_follows_creation_scaling_and_deletion() {
    require_root!();
    let cluster = KubeCluster::start(3).unwrap();
    let api = cluster.api();
    let vip = [198, 19, 0, 10].into();
    let (http, dns) = (SocketAddrV4::new(vip, 80), SocketAddrV4::new(vip, 53));
    let client = &cluster.client().netns;

    api.create(&service(NAMESPACE, "web", vip, web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("web", &[0, 1])).unwrap();
    wait_for_backends("created", client, Protocol::Tcp, http, &[0, 1]);
    wait_for_backends("created", client, Protocol::Udp, dns, &[0, 1]);

    let mut open = client
        .run(|| TcpClient::connect(http, REQUEST_TIMEOUT))
        .unwrap()
        .unwrap();
    let first = open.ask().unwrap();
    let pinned: usize = first.from.trim_start_matches("backend-").parse().unwrap();

    api.replace(&cluster.web_slice("web", &[0, 1, 2])).unwrap();
    wait_for_backends("scaled up", client, Protocol::Tcp, http, &[0, 1, 2]);
    wait_for_backends("scaled up", client, Protocol::Udp, dns, &[0, 1, 2]);

    let other = (0..3).find(|&i| i != pinned).unwrap();
    api.replace(&cluster.web_slice("web", &[other])).unwrap();
    wait_for_backends("scaled down", client, Protocol::Tcp, http, &[other]);
    wait_for_backends("scaled down", client, Protocol::Udp, dns, &[other]);
    assert_eq!(
        open.ask()
            .expect("an open connection survives losing its endpoint"),
        first
    );

    api.delete::<EndpointSlice>(NAMESPACE, "web-1").unwrap();
    api.delete::<Service>(NAMESPACE, "web").unwrap();
    wait_until("the service is gone from the maps", APPLY_TIMEOUT, || {
        let inspect = cluster.inspect().map_err(|e| e.to_string())?;
        let left: Vec<_> = inspect
            .frontends()
            .into_iter()
            .filter(|r| r.frontend.starts_with("198.19.0.10:"))
            .collect();
        left.is_empty()
            .then_some(())
            .ok_or(format!("still programmed: {left:?}"))
    });
    assert!(
        tally(client, Protocol::Tcp, http, 1).is_err(),
        "a deleted VIP answered"
    );
}

#[test]
fn node_ports_load_balancer_ips_and_external_ips_are_served_from_outside() {
    require_root!();
    let cluster = KubeCluster::start(3).unwrap();
    let api = cluster.api();
    let (outside, client) = (&cluster.outside().netns, &cluster.client().netns);

    let mut node_port = service(NAMESPACE, "np", [198, 19, 0, 20].into(), web_ports());
    let spec = spec_mut(&mut node_port);
    spec.type_ = Some("NodePort".into());
    spec.external_traffic_policy = Some("Cluster".into());
    let ports = spec.ports.as_mut().unwrap();
    ports[0].node_port = Some(30080);
    ports[1].node_port = Some(30053);
    api.create(&node_port).unwrap();
    api.create(&cluster.web_slice("np", &[0, 1])).unwrap();

    let lb_ip = Ipv4Addr::new(198, 19, 2, 1);
    let mut load_balancer = service(NAMESPACE, "lb", [198, 19, 0, 21].into(), web_ports());
    let spec = spec_mut(&mut load_balancer);
    spec.type_ = Some("LoadBalancer".into());
    spec.external_traffic_policy = Some("Cluster".into());
    let ports = spec.ports.as_mut().unwrap();
    ports[0].node_port = Some(30081);
    ports[1].node_port = Some(30054);
    api.create(&load_balancer).unwrap();
    api.create(&cluster.web_slice("lb", &[2])).unwrap();

    let external_ip = Ipv4Addr::new(198, 19, 1, 1);
    let mut external = service(NAMESPACE, "ext", [198, 19, 0, 22].into(), web_ports());
    spec_mut(&mut external).external_ips = Some(vec![external_ip.to_string()]);
    api.create(&external).unwrap();
    api.create(&cluster.web_slice("ext", &[0])).unwrap();

    let cases = [
        (
            "NodePort TCP",
            Protocol::Tcp,
            SocketAddrV4::new(NODE_IP, 30080),
            &[0, 1][..],
        ),
        (
            "NodePort UDP",
            Protocol::Udp,
            SocketAddrV4::new(NODE_IP, 30053),
            &[0, 1],
        ),
        (
            "LoadBalancer's NodePort",
            Protocol::Tcp,
            SocketAddrV4::new(NODE_IP, 30081),
            &[2],
        ),
        (
            "external IP TCP",
            Protocol::Tcp,
            SocketAddrV4::new(external_ip, 80),
            &[0],
        ),
        (
            "external IP UDP",
            Protocol::Udp,
            SocketAddrV4::new(external_ip, 53),
            &[0],
        ),
    ];
    for (what, protocol, target, expected) in cases {
        wait_for_backends(what, outside, protocol, target, expected);
    }
    for (name, vip, expected) in [("np", 20, &[0, 1][..]), ("lb", 21, &[2]), ("ext", 22, &[0])] {
        let target = SocketAddrV4::new([198, 19, 0, vip].into(), 80);
        wait_for_backends(
            &format!("{name}'s ClusterIP"),
            client,
            Protocol::Tcp,
            target,
            expected,
        );
    }

    // The LoadBalancer IP is served once the load balancer controller reports it.
    let lb_http = SocketAddrV4::new(lb_ip, 80);
    assert!(
        tally(outside, Protocol::Tcp, lb_http, 1).is_err(),
        "an unassigned LoadBalancer IP answered"
    );
    let status = ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(lb_ip.to_string()),
                ip_mode: Some("VIP".into()),
                ..LoadBalancerIngress::default()
            }]),
        }),
        ..ServiceStatus::default()
    };
    api.set_service_status(NAMESPACE, "lb", &status).unwrap();
    wait_for_backends("LoadBalancer IP", outside, Protocol::Tcp, lb_http, &[2]);
    wait_for_backends(
        "LoadBalancer IP",
        outside,
        Protocol::Udp,
        SocketAddrV4::new(lb_ip, 53),
        &[2],
    );
    assert!(cluster.served(2, Protocol::Tcp, 8080) > 0);
}

#[test]
fn headless_external_name_and_other_proxies_services_are_left_alone() {
    require_root!();
    let cluster = KubeCluster::start(2).unwrap();
    let api = cluster.api();
    let client = &cluster.client().netns;

    let mut headless = service(NAMESPACE, "headless", [0, 0, 0, 0].into(), web_ports());
    let spec = spec_mut(&mut headless);
    spec.cluster_ip = Some("None".into());
    spec.cluster_ips = Some(vec!["None".into()]);
    api.create(&headless).unwrap();
    let mut headless_slice = cluster.web_slice("headless", &[1]);
    headless_slice
        .metadata
        .labels
        .get_or_insert_default()
        .insert(HEADLESS_LABEL.into(), String::new());
    api.create(&headless_slice).unwrap();

    let mut external_name = service(NAMESPACE, "alias", [0, 0, 0, 0].into(), web_ports());
    let spec = spec_mut(&mut external_name);
    spec.type_ = Some("ExternalName".into());
    spec.external_name = Some("db.example.test".into());
    spec.cluster_ip = None;
    spec.cluster_ips = None;
    spec.selector = None;
    api.create(&external_name).unwrap();

    let foreign_vip = [198, 19, 0, 31].into();
    let mut foreign = service(NAMESPACE, "foreign", foreign_vip, web_ports());
    foreign.metadata.labels =
        Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "other".to_string())].into());
    api.create(&foreign).unwrap();
    api.create(&cluster.web_slice("foreign", &[1])).unwrap();

    // A regular service created last: once it works, the agent has seen the others.
    let vip = [198, 19, 0, 30].into();
    api.create(&service(NAMESPACE, "web", vip, web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("web", &[0])).unwrap();
    wait_for_backends(
        "web",
        client,
        Protocol::Tcp,
        SocketAddrV4::new(vip, 80),
        &[0],
    );
    thread::sleep(Duration::from_millis(500));

    let inspect = cluster.inspect().unwrap();
    let programmed: BTreeSet<String> = inspect
        .frontends()
        .into_iter()
        .map(|r| r.frontend)
        .collect();
    assert_eq!(
        programmed,
        BTreeSet::from([
            "198.19.0.30:53/UDP".to_string(),
            "198.19.0.30:80/TCP".to_string()
        ]),
        "{}",
        inspect.0
    );
    assert_eq!(cluster.served(1, Protocol::Tcp, 8080), 0);
    assert!(tally(client, Protocol::Tcp, SocketAddrV4::new(foreign_vip, 80), 1).is_err());

    // Handing the service back to this proxy programs it.
    foreign.metadata.labels = None;
    api.apply(&foreign).unwrap();
    wait_for_backends(
        "foreign service handed over",
        client,
        Protocol::Tcp,
        SocketAddrV4::new(foreign_vip, 80),
        &[1],
    );
}

#[test]
fn a_selectorless_service_uses_its_manual_slice_through_a_named_target_port() {
    require_root!();
    let cluster = KubeCluster::start(2).unwrap();
    let api = cluster.api();
    let vip = [198, 19, 0, 40].into();
    let mut port = service_port("web", Protocol::Tcp, 80, 0);
    port.target_port = Some(IntOrString::String("http-alt".into()));
    let mut manual = service(NAMESPACE, "manual", vip, vec![port]);
    spec_mut(&mut manual).selector = None;
    api.create(&manual).unwrap();
    // Written by hand (or another controller): the named port resolved to 8081.
    let endpoints = vec![
        endpoint(cluster.backend(0).addr, NODE_NAME),
        endpoint(cluster.backend(1).addr, NODE_NAME),
    ];
    let mut slice = endpoint_slice(
        NAMESPACE,
        "manual",
        "manual-by-hand",
        vec![endpoint_port("web", Protocol::Tcp, 8081)],
        endpoints,
    );
    slice.metadata.labels.get_or_insert_default().insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        "operator.example.test".into(),
    );
    api.create(&slice).unwrap();

    let target = SocketAddrV4::new(vip, 80);
    wait_for_backends(
        "manual slice",
        &cluster.client().netns,
        Protocol::Tcp,
        target,
        &[0, 1],
    );
    for i in 0..2 {
        assert!(
            cluster.served(i, Protocol::Tcp, 8081) > 0,
            "backend {i} on 8081"
        );
        assert_eq!(
            cluster.served(i, Protocol::Tcp, 8080),
            0,
            "backend {i} on 8080"
        );
    }
}
