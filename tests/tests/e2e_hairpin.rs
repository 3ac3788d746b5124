//! End to end: hairpin. A backend pod that requests its own Service and is balanced to itself
//! gets its answer (from the VIP), over TCP and UDP, with no XDP and no masquerading
//! configured (the agent attaches TC to the pods' veths only): the node source-NATs such flows
//! to `lb_common::config::HAIRPIN_ADDR`, which the pod answers through its default route.

use std::{
    collections::BTreeSet,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_tests::{
    cluster::{Cluster, Protocol},
    example, inspect_output, require_root,
    servers::{tally, tcp_request, udp_request, Reply},
    topology::backend_name,
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// The pod that asks its own Service.
const ASKING: usize = 0;

/// The frontend of the example Service for `protocol`.
fn frontend(protocol: Protocol) -> SocketAddrV4 {
    match protocol {
        Protocol::Tcp => example::tcp_vip(),
        Protocol::Udp => example::udp_vip(),
    }
}

/// Starts the example cluster with only the backends `endpoints` in the EndpointSlice.
fn cluster_with_endpoints(dir: &std::path::Path, endpoints: &[usize]) -> Cluster {
    example::copy_manifests(dir).unwrap();
    let slice = example::endpointslice_yaml(endpoints);
    example::replace_manifest(dir, example::ENDPOINTSLICE_FILE, &slice).unwrap();
    Cluster::start(dir, "info").unwrap()
}

/// Sends `count` requests (a new connection or socket each) from backend [`ASKING`] to the
/// Service's frontend for `protocol`.
fn ask_own_service(cluster: &Cluster, protocol: Protocol, count: usize) -> Vec<io::Result<Reply>> {
    let target = frontend(protocol);
    cluster
        .topology()
        .pod(&backend_name(ASKING))
        .netns
        .run(|| {
            (0..count)
                .map(|_| match protocol {
                    Protocol::Tcp => tcp_request(target, TIMEOUT),
                    Protocol::Udp => udp_request(target, TIMEOUT),
                })
                .collect()
        })
        .unwrap()
}

/// Unwraps every reply, checking each came from the frontend.
fn answered_by_the_vip(
    replies: Vec<io::Result<Reply>>,
    protocol: Protocol,
) -> Result<Vec<Reply>, String> {
    let vip = frontend(protocol);
    let total = replies.len();
    let failures: Vec<String> = replies
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Err(e) => Some(format!("request {i}: {e}")),
            Ok(reply) if reply.peer != vip.into() => {
                Some(format!("request {i}: answered from {}", reply.peer))
            }
            Ok(_) => None,
        })
        .collect();
    if !failures.is_empty() {
        return Err(format!(
            "{protocol}: {} of {total} requests failed: {failures:?}",
            failures.len()
        ));
    }
    Ok(replies.into_iter().map(Result::unwrap).collect())
}

/// The flows among `replies` that pod `i` answered: one per client port, since a fresh
/// socket may get an earlier one's port and so continue that flow (the counters count flows).
fn flows_answered_by(replies: &[Reply], i: usize) -> usize {
    replies
        .iter()
        .filter(|r| r.from == backend_name(i))
        .map(|r| r.local_port)
        .collect::<BTreeSet<_>>()
        .len()
}

/// Node-wide counter `name` in `lb-agent inspect` output (0 if absent).
fn counter(inspect: &str, name: &str) -> u64 {
    inspect_output::counter(inspect, name).unwrap_or(0)
}

#[test]
fn a_pod_that_is_its_services_only_endpoint_reaches_itself() {
    require_root!();
    const REQUESTS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_with_endpoints(dir.path(), &[ASKING]);
    let mut hairpinned = 0;
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let replies = ask_own_service(&cluster, protocol, REQUESTS);
        let replies = answered_by_the_vip(replies, protocol).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            replies.iter().all(|r| r.from == backend_name(ASKING)),
            "{protocol}: {:?}",
            tally(&replies)
        );
        assert_eq!(cluster.served(ASKING, protocol), REQUESTS, "{protocol}");
        hairpinned += flows_answered_by(&replies, ASKING);
    }
    let inspect = cluster.agent().inspect().unwrap();
    assert_eq!(
        counter(&inspect, "hairpinned"),
        hairpinned as u64,
        "{inspect}"
    );
    assert_eq!(counter(&inspect, "masqueraded"), 0, "{inspect}");
    let hairpin = Ipv4Addr::from(lb_common::config::HAIRPIN_ADDR).to_string();
    assert!(inspect.contains(&hairpin), "{hairpin} not in:\n{inspect}");
}

#[test]
fn a_pod_balanced_over_several_endpoints_gets_answers_from_all_itself_included() {
    require_root!();
    const REQUESTS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<usize> = (0..example::BACKENDS).collect();
    let cluster = cluster_with_endpoints(dir.path(), &all);
    let mut hairpinned = 0;
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let replies = ask_own_service(&cluster, protocol, REQUESTS);
        let replies = answered_by_the_vip(replies, protocol).unwrap_or_else(|e| panic!("{e}"));
        let counts = tally(&replies);
        assert_eq!(
            counts.keys().cloned().collect::<BTreeSet<_>>(),
            all.iter().copied().map(backend_name).collect(),
            "{protocol}: {counts:?}"
        );
        for i in all.iter().copied() {
            assert_eq!(
                cluster.served(i, protocol),
                counts[&backend_name(i)],
                "{protocol} backend {i}"
            );
        }
        hairpinned += flows_answered_by(&replies, ASKING);
    }
    let inspect = cluster.agent().inspect().unwrap();
    assert_eq!(
        counter(&inspect, "hairpinned"),
        hairpinned as u64,
        "{inspect}"
    );
}
