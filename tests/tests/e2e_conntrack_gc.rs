//! End to end: the real `lb-agent`'s conntrack garbage collector, with 2 s timeouts set by its
//! flags, deletes a closed TCP connection's entries and an idle UDP flow's, keeps an open
//! connection's (established: 6 h), and `/metrics` says how many it collected.

use std::{
    net::UdpSocket,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    cluster::Cluster,
    example, require_root,
    servers::{tcp_request, TcpClient},
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// How long the collector may take: the 2 s timeout, then a few walks 500 ms apart.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `lbagent_conntrack_entries` and `lbagent_conntrack_gc_collected_total`.
fn entries_and_collected(cluster: &Cluster) -> (f64, f64) {
    let metrics = cluster.scrape_metrics();
    let value = |name| {
        metrics
            .value(name, &[])
            .unwrap_or_else(|| panic!("no {name}"))
    };
    (
        value("lbagent_conntrack_entries"),
        value("lbagent_conntrack_gc_collected_total"),
    )
}

#[test]
fn closed_and_idle_flows_are_collected_after_their_timeouts_open_ones_stay() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let cluster = Cluster::start_configured(dir.path(), |options| {
        options.extra_args = [
            "--conntrack-tcp-timeout-close-wait",
            "2s",
            "--conntrack-udp-timeout-stream",
            "2s",
            "--conntrack-gc-interval",
            "500ms",
        ]
        .map(String::from)
        .to_vec();
    })
    .unwrap();
    assert_eq!(entries_and_collected(&cluster), (0.0, 0.0));

    let client = &cluster.client().netns;
    let mut open = client
        .run(|| TcpClient::connect(example::tcp_vip(), TIMEOUT))
        .unwrap()
        .unwrap();
    client.run(|| open.ask()).unwrap().unwrap();
    // A connection opened, asked and closed (FIN both ways): closing.
    client
        .run(|| tcp_request(example::tcp_vip(), TIMEOUT))
        .unwrap()
        .unwrap();
    // A UDP request answered once: an answered flow, then idle.
    client
        .run(|| {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.send_to(b"hello\n", example::udp_vip())?;
            socket.recv_from(&mut [0u8; 256])
        })
        .unwrap()
        .unwrap();
    assert_eq!(entries_and_collected(&cluster).0, 6.0, "three flows");

    let started = Instant::now();
    let left = loop {
        let now = entries_and_collected(&cluster);
        if now.0 <= 2.0 || started.elapsed() > COLLECT_TIMEOUT {
            break now;
        }
        thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        left,
        (2.0, 4.0),
        "the open connection's entries stay, 4 collected"
    );
    let reply = client.run(|| open.ask()).unwrap().unwrap();
    assert!(reply.from.starts_with("backend-"), "{}", reply.from);
    assert_eq!(entries_and_collected(&cluster), (2.0, 4.0));
}
