//! End to end: the real `lb-agent`'s conntrack garbage collector, with 4 s timeouts set by its
//! flags, deletes a closed TCP connection's entries and an idle UDP flow's, keeps an open
//! connection's (established: 6 h), and `/metrics` says how many it collected and how many
//! its last walk kept: `lbagent_conntrack_entries` follows the walks, not the scrapes.

use std::{
    net::UdpSocket,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_tests::{
    cluster::Cluster,
    example, require_root,
    scrape::Metrics,
    servers::{tcp_request, TcpClient},
};
use lb_userspace::datapath::DatapathMaps;

const TIMEOUT: Duration = Duration::from_secs(2);
/// How long the collector may take: the 4 s timeout (the programs stamp a flow at most once a
/// second), then a few walks 500 ms apart.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(12);
/// A walk every 500 ms, under load.
const WALK_TIMEOUT: Duration = Duration::from_secs(5);

/// `lbagent_conntrack_entries` and `lbagent_conntrack_gc_collected_total`.
fn entries_and_collected(metrics: &Metrics) -> (f64, f64) {
    let value = |name| {
        metrics
            .value(name, &[])
            .unwrap_or_else(|| panic!("no {name} in:\n{}", metrics.0))
    };
    (
        value("lbagent_conntrack_entries"),
        value("lbagent_conntrack_gc_collected_total"),
    )
}

/// When the walk that counted `lbagent_conntrack_entries` started.
fn walked_at(metrics: &Metrics) -> f64 {
    metrics
        .value("lbagent_conntrack_entries_timestamp_seconds", &[])
        .expect("a walk's time")
}

/// Three flows from the client: an open TCP connection (returned), a closed one and an
/// answered UDP request; six conntrack entries.
fn three_flows(cluster: &Cluster) -> TcpClient {
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
    open
}

fn start_with_gc_interval(dir: &std::path::Path, interval: &str) -> Cluster {
    example::copy_manifests(dir).unwrap();
    Cluster::start_configured(dir, |options| {
        options.extra_args = [
            "--conntrack-tcp-timeout-close-wait",
            "4s",
            "--conntrack-udp-timeout-stream",
            "4s",
            "--conntrack-gc-interval",
            interval,
        ]
        .map(String::from)
        .to_vec();
    })
    .unwrap()
}

#[test]
fn closed_and_idle_flows_are_collected_after_their_timeouts_open_ones_stay() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_with_gc_interval(dir.path(), "500ms");
    let first = cluster.scrape_after_conntrack_walk(UNIX_EPOCH, WALK_TIMEOUT);
    assert_eq!(entries_and_collected(&first), (0.0, 0.0));

    let client = &cluster.client().netns;
    let mut open = three_flows(&cluster);
    let made = SystemTime::now();
    let counted = cluster.scrape_after_conntrack_walk(made, WALK_TIMEOUT);
    assert_eq!(entries_and_collected(&counted).0, 6.0, "three flows");

    let started = Instant::now();
    let left = loop {
        let metrics = cluster.scrape_metrics();
        let now = entries_and_collected(&metrics);
        if now.0 <= 2.0 || started.elapsed() > COLLECT_TIMEOUT {
            assert!(walked_at(&metrics) > walked_at(&counted));
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
    let later = cluster.scrape_after_conntrack_walk(SystemTime::now(), WALK_TIMEOUT);
    assert_eq!(entries_and_collected(&later), (2.0, 4.0));
}

#[test]
fn a_scrape_reports_the_last_walk_and_reads_no_conntrack_entry() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    // Only the walk at start runs during the test.
    let cluster = start_with_gc_interval(dir.path(), "1h");
    let first = cluster.scrape_after_conntrack_walk(UNIX_EPOCH, WALK_TIMEOUT);
    assert_eq!(entries_and_collected(&first), (0.0, 0.0));

    let _open = three_flows(&cluster);
    let pins = cluster.agent().options().bpffs_dir.join("maps");
    let in_map = DatapathMaps::from_pins(&pins).unwrap().conntrack().unwrap();
    assert_eq!(in_map.len(), 6, "the flows are in the map");
    let scraped = cluster.scrape_metrics();
    assert_eq!(
        entries_and_collected(&scraped),
        (0.0, 0.0),
        "the count of the walk at start"
    );
    assert_eq!(walked_at(&scraped), walked_at(&first));
}
