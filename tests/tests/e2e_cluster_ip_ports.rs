//! End to end: a client pod reaching the example ClusterIP on a port or protocol the Service
//! does not expose is refused at once, as kube-proxy's nftables mode rejects it (ICMP port
//! unreachable from the ClusterIP), while the ports it exposes keep answering; the refusals are
//! counted, and once the Service is gone its address is no longer refused.

use std::{
    fs,
    io::ErrorKind,
    net::{SocketAddrV4, UdpSocket},
    time::Duration,
};

use lb_tests::{
    cluster::{Cluster, Protocol},
    example, require_root,
    servers::tcp_request,
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// A port the example Service does not expose.
const UNEXPOSED: u16 = 443;

/// A TCP connection from the client pod to the ClusterIP's `port`: the error kind, if any.
fn tcp_error(cluster: &Cluster, port: u16) -> Option<ErrorKind> {
    let target = SocketAddrV4::new(example::VIP, port);
    let result = cluster.client().netns.run(|| tcp_request(target, TIMEOUT));
    result.unwrap().err().map(|e| e.kind())
}

/// A datagram from a connected UDP socket of the client pod to the ClusterIP's TCP port:
/// the error its receive gets.
fn udp_to_tcp_port_error(cluster: &Cluster) -> ErrorKind {
    let target = SocketAddrV4::new(example::VIP, example::TCP_PORT);
    let received = cluster.client().netns.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        socket.connect(target)?;
        socket.send(b"query")?;
        socket.recv(&mut [0; 64])
    });
    received.unwrap().unwrap_err().kind()
}

#[test]
fn unexposed_ports_of_a_cluster_ip_are_refused_and_exposed_ones_served() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let mut cluster = Cluster::start(dir.path(), "info").unwrap();

    assert_eq!(
        tcp_error(&cluster, UNEXPOSED),
        Some(ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        udp_to_tcp_port_error(&cluster),
        ErrorKind::ConnectionRefused
    );
    let replies = cluster.requests(Protocol::Tcp, 3, TIMEOUT).unwrap();
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    let rejects = cluster.scrape_metrics().value(
        "lbagent_drop_count_total",
        &[("reason", "reject_unexposed_port")],
    );
    assert_eq!(rejects, Some(2.0));

    fs::remove_file(dir.path().join(example::SERVICE_FILE)).unwrap();
    cluster
        .agent_mut()
        .wait_for_log("ready: programmed 0 services", 1, Duration::from_secs(10))
        .unwrap();
    let after = tcp_error(&cluster, UNEXPOSED);
    assert_ne!(
        after,
        Some(ErrorKind::ConnectionRefused),
        "no longer a ClusterIP"
    );
    assert_ne!(after, None, "nothing serves the address");
}
