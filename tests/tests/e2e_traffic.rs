//! End to end: the real `lb-agent` in a node namespace balances a client pod's requests to the
//! example Service over three backend pods, and replies come back from the VIP.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use lb_tests::{
    cluster::{Cluster, Protocol},
    example, require_root,
    servers::{tally, Reply},
    topology::backend_name,
};

const REQUESTS: usize = 60;
const TIMEOUT: Duration = Duration::from_secs(2);

fn all_backends() -> BTreeSet<String> {
    (0..example::BACKENDS).map(backend_name).collect()
}

/// Unwraps every reply, checking each came from `vip`.
fn from_vip(replies: Vec<std::io::Result<Reply>>, vip: SocketAddr) -> Vec<Reply> {
    replies
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let reply = r.unwrap_or_else(|e| panic!("request {i} to {vip} failed: {e}"));
            assert_eq!(reply.peer, vip, "request {i} answered from elsewhere");
            reply
        })
        .collect()
}

#[test]
fn tcp_and_udp_requests_reach_every_backend_and_replies_come_from_the_vip() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let cluster = Cluster::start(dir.path(), "info").unwrap();

    for (protocol, vip) in [
        (Protocol::Tcp, example::tcp_vip()),
        (Protocol::Udp, example::udp_vip()),
    ] {
        let replies = cluster.requests(protocol, REQUESTS, TIMEOUT).unwrap();
        let replies = from_vip(replies, vip.into());
        let counts = tally(&replies);
        assert_eq!(
            counts.keys().cloned().collect::<BTreeSet<_>>(),
            all_backends(),
            "{protocol:?}: {counts:?}"
        );
        // The servers saw exactly these requests: no duplicates, nothing lost or misrouted.
        for i in 0..example::BACKENDS {
            assert_eq!(
                cluster.served(i, protocol),
                counts[&backend_name(i)],
                "{protocol:?} backend {i}"
            );
        }
    }

    let inspect = cluster.agent().inspect().unwrap();
    for needle in [
        "198.19.0.10:80",
        "198.19.0.10:53",
        "198.18.0.11:8080",
        "198.18.0.13:8053",
    ] {
        assert!(
            inspect.contains(needle),
            "{needle} not in inspect output:\n{inspect}"
        );
    }
}

#[test]
fn a_client_keeps_its_backend_for_the_whole_connection() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let cluster = Cluster::start(dir.path(), "info").unwrap();
    let mut connection = cluster
        .client()
        .netns
        .run(|| lb_tests::servers::TcpClient::connect(example::tcp_vip(), TIMEOUT))
        .unwrap()
        .unwrap();
    let first = connection.ask().unwrap();
    for _ in 0..20 {
        assert_eq!(connection.ask().unwrap(), first);
    }
    let backend: usize = first.from.trim_start_matches("backend-").parse().unwrap();
    assert_eq!(
        cluster.served(backend, Protocol::Tcp),
        1,
        "one connection, one accept"
    );
}
