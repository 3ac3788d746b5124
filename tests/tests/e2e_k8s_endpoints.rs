//! End to end in Kubernetes mode: endpoint conditions. Terminating endpoints that still serve
//! take new connections only when no endpoint is ready, established connections to them keep
//! working, a UDP flow whose endpoint left moves to one that is still there, and a Service
//! without usable endpoints rejects new connections at once (ICMP port unreachable, as
//! kube-proxy's REJECT), counted by the agent.

use std::{
    io,
    net::{SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::{
    apiserver::objects::{service, spec_mut, terminating_endpoint},
    cluster::{
        kube::{
            connected_udp_request, wait_for_backends, wait_until, web_ports, web_slice,
            KubeCluster, APPLY_TIMEOUT, NAMESPACE, NODE_NAME, REQUEST_TIMEOUT,
        },
        Protocol,
    },
    netns::NetNs,
    require_root,
    servers::TcpClient,
    topology::{backend_name, NODE_IP},
};

/// A rejected connect must fail faster than this (a dropped SYN would take the whole
/// [`REQUEST_TIMEOUT`]).
const QUICK: Duration = Duration::from_millis(500);

/// Waits until a TCP connect from `netns` to `target` is refused, and checks it was quick.
fn wait_for_refusal(what: &str, netns: &NetNs, target: SocketAddrV4) {
    wait_until(what, APPLY_TIMEOUT, || {
        let started = Instant::now();
        let reply = netns
            .run(|| Protocol::Tcp.request(target, REQUEST_TIMEOUT))
            .map_err(|e| e.to_string())?;
        match reply {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                let took = started.elapsed();
                assert!(took < QUICK, "{what}: the refusal took {took:?}");
                Ok(())
            }
            other => Err(format!("connect to {target}: {other:?}")),
        }
    });
}

#[test]
fn terminating_endpoints_serve_only_while_no_endpoint_is_ready() {
    require_root!();
    let cluster = KubeCluster::start(2).unwrap();
    let api = cluster.api();
    let client = &cluster.client().netns;
    let vip = SocketAddrV4::new([198, 19, 0, 70].into(), 80);
    api.create(&service(NAMESPACE, "drain", *vip.ip(), web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("drain", &[0, 1])).unwrap();
    wait_for_backends("both ready", client, Protocol::Tcp, vip, &[0, 1]);

    let mut open = client
        .run(|| TcpClient::connect(vip, REQUEST_TIMEOUT))
        .unwrap()
        .unwrap();
    let first = open.ask().unwrap();
    let draining: usize = first.from.trim_start_matches("backend-").parse().unwrap();
    let ready = 1 - draining;
    let terminating =
        |i: usize, serving: bool| terminating_endpoint(cluster.backend(i).addr, NODE_NAME, serving);

    // One terminating, one ready: new connections only to the ready one.
    let slice = web_slice(
        "drain",
        vec![
            terminating(draining, true),
            cluster.endpoint(ready, NODE_NAME),
        ],
    );
    api.apply(&slice).unwrap();
    wait_for_backends("one draining", client, Protocol::Tcp, vip, &[ready]);
    assert_eq!(
        open.ask().unwrap(),
        first,
        "the established connection broke"
    );

    // Both terminating but serving: the fallback takes both.
    let slice = web_slice("drain", vec![terminating(0, true), terminating(1, true)]);
    api.apply(&slice).unwrap();
    wait_for_backends("all draining", client, Protocol::Tcp, vip, &[0, 1]);

    // Terminating and no longer serving: nothing usable, new connections are refused; the
    // established one still works.
    let slice = web_slice("drain", vec![terminating(0, false), terminating(1, false)]);
    api.apply(&slice).unwrap();
    wait_for_refusal("none serving", client, vip);
    assert_eq!(
        open.ask().unwrap(),
        first,
        "the established connection broke"
    );
}

/// Sends a datagram on `socket` (connected) and returns the answering pod's name.
fn ask(socket: &UdpSocket) -> io::Result<String> {
    socket.send(b"who are you?\n")?;
    let mut buf = [0u8; 256];
    let len = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

#[test]
fn a_udp_flow_whose_endpoint_left_moves_to_one_that_stays() {
    require_root!();
    let cluster = KubeCluster::start(2).unwrap();
    let api = cluster.api();
    let client = &cluster.client().netns;
    let dns = SocketAddrV4::new([198, 19, 0, 72].into(), 53);
    api.create(&service(NAMESPACE, "dns", *dns.ip(), web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("dns", &[0, 1])).unwrap();
    wait_for_backends("both ready", client, Protocol::Udp, dns, &[0, 1]);

    // One socket with one port: every datagram belongs to the same flow.
    let socket = client
        .run(|| {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(REQUEST_TIMEOUT))?;
            socket.connect(dns)?;
            io::Result::Ok(socket)
        })
        .unwrap()
        .unwrap();
    let first = ask(&socket).unwrap();
    assert_eq!(ask(&socket).unwrap(), first, "one flow, one endpoint");
    let left = (0..2).find(|&i| backend_name(i) == first).unwrap();
    let stays = 1 - left;

    // The endpoint leaves the Service (its pod still answers, as a deleted pod's might for a
    // while): the flow must not stay with it.
    api.apply(&cluster.web_slice("dns", &[stays])).unwrap();
    wait_for_backends("one left", client, Protocol::Udp, dns, &[stays]);
    assert_eq!(
        ask(&socket).unwrap(),
        backend_name(stays),
        "the flow stayed with the endpoint that left"
    );
    assert_eq!(ask(&socket).unwrap(), backend_name(stays));
}

#[test]
fn a_service_without_endpoints_rejects_new_flows_quickly() {
    require_root!();
    let cluster = KubeCluster::start(1).unwrap();
    let api = cluster.api();
    let (outside, client) = (&cluster.outside().netns, &cluster.client().netns);
    let vip = [198, 19, 0, 71].into();
    let (http, dns) = (SocketAddrV4::new(vip, 80), SocketAddrV4::new(vip, 53));
    let node_port = SocketAddrV4::new(NODE_IP, 30080);

    let mut empty = service(NAMESPACE, "empty", vip, web_ports());
    let spec = spec_mut(&mut empty);
    spec.type_ = Some("NodePort".into());
    spec.external_traffic_policy = Some("Cluster".into());
    spec.ports.as_mut().unwrap()[0].node_port = Some(30080);
    spec.ports.as_mut().unwrap()[1].node_port = Some(30053);
    api.create(&empty).unwrap();
    api.create(&web_slice("empty", Vec::new())).unwrap();

    wait_for_refusal("pod, TCP", client, http);
    let rejects = || {
        let inspect = cluster.inspect().unwrap();
        inspect
            .counter("reject_no_backend")
            .unwrap_or_else(|| panic!("no reject counter:\n{}", inspect.0))
    };
    let before = rejects();
    let started = Instant::now();
    let udp = connected_udp_request(client, dns).unwrap();
    let took = started.elapsed();
    match udp {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => panic!("UDP to {dns}: expected ECONNREFUSED, got {other:?}"),
    }
    assert!(took < QUICK, "UDP refusal took {took:?}");
    wait_for_refusal("outside, NodePort", outside, node_port);
    let after = rejects();
    assert!(
        after >= before + 2,
        "reject_no_backend went from {before} to {after}"
    );

    // An endpoint appears: the same frontends answer.
    api.apply(&cluster.web_slice("empty", &[0])).unwrap();
    wait_for_backends("endpoint added", client, Protocol::Tcp, http, &[0]);
    wait_for_backends("endpoint added", outside, Protocol::Tcp, node_port, &[0]);
}
