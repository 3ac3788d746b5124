//! End to end: an open TCP connection through the real `lb-agent` whose reply entry is deleted
//! (as LRU eviction would) keeps working: its next request, sent after the once-a-second pair
//! check is due, re-creates the entry, the answer comes back from the VIP, and `/metrics`
//! counts the repair.

use std::{net::Ipv4Addr, thread, time::Duration};

use lb_common::{ipv4_mapped, IPPROTO_TCP};
use lb_tests::{
    bpftool,
    cluster::Cluster,
    example, require_root,
    scrape::{self, Metrics, METRICS_ADDR},
    servers::TcpClient,
    topology::CLIENT_ADDR,
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Past the refresh interval after which an answered flow checks its pair.
const PAST_REFRESH: Duration = Duration::from_millis(1_200);

/// The conntrack key bytes of a TCP packet `src -> dst` (`lb_common::CtKey`).
fn ct_key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut key = Vec::with_capacity(40);
    key.extend(ipv4_mapped(src.0.octets()));
    key.extend(ipv4_mapped(dst.0.octets()));
    key.extend(src.1.to_be_bytes());
    key.extend(dst.1.to_be_bytes());
    key.extend([IPPROTO_TCP, 0, 0, 0]);
    key
}

fn repaired(cluster: &Cluster) -> f64 {
    let response = cluster
        .topology()
        .node()
        .run(|| scrape::get(METRICS_ADDR, "/metrics"))
        .unwrap()
        .unwrap();
    Metrics(response.body)
        .value(
            "lbagent_datapath_packets_total",
            &[("counter", "conntrack_repaired")],
        )
        .expect("the conntrack_repaired counter")
}

#[test]
fn an_open_connection_whose_reply_entry_was_deleted_keeps_answering_from_the_vip() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let cluster = Cluster::start(dir.path(), "info").unwrap();
    let client = &cluster.client().netns;
    let mut open = client
        .run(|| TcpClient::connect(example::tcp_vip(), TIMEOUT))
        .unwrap()
        .unwrap();
    let first = client.run(|| open.ask()).unwrap().unwrap();
    let backend = cluster.topology().pod(&first.from).addr;
    let reply_key = ct_key(
        (backend, example::TCP_TARGET_PORT),
        (CLIENT_ADDR, first.local_port),
    );
    let conntrack = cluster
        .agent()
        .options()
        .bpffs_dir
        .join("maps/LB_CONNTRACK");
    assert!(bpftool::lookup(&conntrack, &reply_key).unwrap().is_some());
    bpftool::delete(&conntrack, &reply_key).unwrap();
    assert_eq!(repaired(&cluster), 0.0);

    thread::sleep(PAST_REFRESH);
    let again = client.run(|| open.ask()).unwrap().unwrap();
    // An answer left untranslated (from the backend's address) would have reset the
    // connection instead.
    assert_eq!(again.from, first.from, "the same backend");
    assert!(bpftool::lookup(&conntrack, &reply_key).unwrap().is_some());
    assert_eq!(repaired(&cluster), 1.0);
}
