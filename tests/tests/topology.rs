//! The test topology on its own (no agent): pods reach each other through the node over /32
//! routes, a VIP is unreachable, and everything disappears on drop.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use lb_tests::{
    require_root,
    servers::{tcp_request, udp_request, Server},
    topology::{backend_name, Topology, CLIENT},
};

const TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn pods_reach_each_other_through_the_node_and_a_vip_is_unreachable_without_the_agent() {
    require_root!();
    let topology = Topology::client_and_backends(3).unwrap();
    let mut servers = Vec::new();
    for i in 0..3 {
        let pod = topology.pod(&backend_name(i));
        let addr = SocketAddrV4::new(pod.addr, 8080);
        servers.push(Server::tcp(&pod.netns, addr, &pod.name).unwrap());
        servers.push(Server::udp(&pod.netns, addr, &pod.name).unwrap());
    }
    let client = topology.pod(CLIENT);
    for i in 0..3 {
        let backend = topology.pod(&backend_name(i));
        let target = SocketAddrV4::new(backend.addr, 8080);
        let (tcp, udp) = client
            .netns
            .run(|| (tcp_request(target, TIMEOUT), udp_request(target, TIMEOUT)))
            .unwrap();
        let (tcp, udp) = (tcp.unwrap(), udp.unwrap());
        assert_eq!(
            (tcp.from.as_str(), tcp.peer),
            (backend.name.as_str(), target.into())
        );
        assert_eq!(
            (udp.from.as_str(), udp.peer),
            (backend.name.as_str(), target.into())
        );
    }
    assert!(servers.iter().all(|s| s.served() == 1));

    let vip: SocketAddrV4 = "198.19.0.1:80".parse().unwrap();
    let to_vip = client.netns.run(|| tcp_request(vip, TIMEOUT)).unwrap();
    assert!(to_vip.is_err(), "VIP answered without an agent: {to_vip:?}");

    let names: Vec<String> = std::iter::once(topology.node().name().to_string())
        .chain(topology.pods().iter().map(|p| p.netns.name().to_string()))
        .collect();
    drop(servers);
    drop(topology);
    for name in names {
        assert!(
            !Path::new("/run/netns").join(&name).exists(),
            "{name} left behind"
        );
    }
}

#[test]
fn a_pod_sees_the_real_client_address() {
    require_root!();
    let topology = Topology::client_and_backends(1).unwrap();
    let backend = topology.pod(&backend_name(0));
    let addr = SocketAddrV4::new(backend.addr, 9000);
    let socket = backend
        .netns
        .run(|| std::net::UdpSocket::bind(addr))
        .unwrap()
        .unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let client = topology.pod(CLIENT);
    client
        .netns
        .run(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:4000")?;
            s.send_to(b"hi", addr)
        })
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 8];
    let (len, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"hi");
    assert_eq!(from, SocketAddr::from(SocketAddrV4::new(client.addr, 4000)));
}
