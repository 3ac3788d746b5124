//! End to end in Kubernetes mode: UDP datagrams larger than the MTU reach a Service and come
//! back. A 4000-byte datagram leaves the client's socket as three IPv4 fragments (the veths
//! have a 1500-byte MTU); the program translates each of them, the backend pod's kernel
//! reassembles the datagram and a real UDP echo server sends it back, again as three
//! fragments, which the program translates back to the frontend. Through a ClusterIP from a
//! pod (TC) and through a node port from outside the node (XDP). The `fragment` counter shows
//! the fragments went through the programs, `fragment_unknown` that none lost its flow.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use lb_tests::{
    apiserver::objects::{endpoint_port, endpoint_slice, service, service_port, spec_mut},
    cluster::{
        kube::{wait_for_backends, KubeCluster, NAMESPACE, NODE_NAME},
        Protocol,
    },
    netns::NetNs,
    require_root,
    topology::NODE_IP,
};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 90);
const ECHO_PORT: u16 = 9000;
const NODE_PORT: u16 = 30090;
/// Bytes of each datagram: three fragments at a 1500-byte MTU.
const DATAGRAM: usize = 4000;
/// Fragments of one datagram.
const FRAGMENTS: u64 = 3;
const TIMEOUT: Duration = Duration::from_secs(2);
/// Datagrams tried before a round trip counts as failed (a first one may wait for ARP).
const ATTEMPTS: usize = 3;

/// A UDP server in a pod that sends every datagram back to its sender; stops on drop.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(netns: &NetNs, addr: SocketAddrV4) -> Echo {
        let socket = netns.run(|| UdpSocket::bind(addr)).unwrap().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((len, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..len], peer);
                }
            }
        });
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends a [`DATAGRAM`]-byte datagram from `netns` to `target` (up to [`ATTEMPTS`] times);
/// returns what came back and from where.
fn round_trip(netns: &NetNs, target: SocketAddrV4) -> (Vec<u8>, SocketAddr) {
    let sent: Vec<u8> = (0..DATAGRAM as u32).map(|i| (i * 7 % 251) as u8).collect();
    netns
        .run(|| {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            let mut buf = vec![0u8; 65_536];
            let mut last = None;
            for _ in 0..ATTEMPTS {
                socket.send_to(&sent, target)?;
                match socket.recv_from(&mut buf) {
                    Ok((len, peer)) => {
                        assert_eq!(&buf[..len], &sent[..], "the echo from {peer}");
                        return Ok((buf[..len].to_vec(), peer));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("at least one attempt"))
        })
        .unwrap()
        .unwrap_or_else(|e: std::io::Error| panic!("{DATAGRAM} bytes to {target}: {e}"))
}

#[test]
fn datagrams_above_the_mtu_reach_a_service_and_come_back_whole() {
    require_root!();
    let cluster = KubeCluster::start(1).unwrap();
    let api = cluster.api();
    let backend = cluster.backend(0);
    let _echo = Echo::start(&backend.netns, SocketAddrV4::new(backend.addr, ECHO_PORT));
    let mut echo = service(
        NAMESPACE,
        "echo",
        CLUSTER_IP,
        vec![
            service_port("http", Protocol::Tcp, 80, 8080),
            service_port("echo", Protocol::Udp, ECHO_PORT, ECHO_PORT),
        ],
    );
    let spec = spec_mut(&mut echo);
    spec.type_ = Some("NodePort".into());
    spec.ports.as_mut().unwrap()[1].node_port = Some(NODE_PORT.into());
    api.create(&echo).unwrap();
    let ports = vec![
        endpoint_port("http", Protocol::Tcp, 8080),
        endpoint_port("echo", Protocol::Udp, ECHO_PORT),
    ];
    let endpoints = vec![cluster.endpoint(0, NODE_NAME)];
    api.create(&endpoint_slice(
        NAMESPACE, "echo", "echo-1", ports, endpoints,
    ))
    .unwrap();
    let http = SocketAddrV4::new(CLUSTER_IP, 80);
    let (client, outside) = (&cluster.client().netns, &cluster.outside().netns);
    wait_for_backends("programmed", client, Protocol::Tcp, http, &[0]);

    for (what, from, target) in [
        (
            "a pod to the ClusterIP",
            client,
            SocketAddrV4::new(CLUSTER_IP, ECHO_PORT),
        ),
        (
            "outside to the node port",
            outside,
            SocketAddrV4::new(NODE_IP, NODE_PORT),
        ),
    ] {
        let counter = |name: &str| cluster.inspect().unwrap().counter(name).unwrap_or(0);
        let before = counter("fragment");
        let (answer, peer) = round_trip(from, target);
        assert_eq!(answer.len(), DATAGRAM, "{what}");
        assert_eq!(
            peer,
            SocketAddr::V4(target),
            "{what}: answered from elsewhere"
        );
        let fragments = counter("fragment") - before;
        assert!(
            fragments >= 2 * FRAGMENTS,
            "{what}: {fragments} fragments went through the programs"
        );
    }
    let inspect = cluster.inspect().unwrap();
    assert_eq!(
        inspect.counter("fragment_unknown"),
        Some(0),
        "{}",
        inspect.0
    );
}
