use super::*;
use lb_common::{ipv4_mapped, IPPROTO_UDP};

const S: u64 = 1_000_000_000;
const NOW: u64 = 100_000 * S;

fn timeouts() -> Timeouts {
    Timeouts {
        tcp_syn: Duration::from_secs(60),
        tcp_established: Duration::from_secs(21_600),
        tcp_closing: Duration::from_secs(10),
        udp: Duration::from_secs(30),
        udp_stream: Duration::from_secs(120),
    }
}

fn key(src: ([u8; 4], u16), dst: ([u8; 4], u16), proto: u8) -> CtKey {
    CtKey {
        src_addr: ipv4_mapped(src.0),
        dst_addr: ipv4_mapped(dst.0),
        src_port: src.1.to_be_bytes(),
        dst_port: dst.1.to_be_bytes(),
        proto,
        _pad: [0; 3],
    }
}

/// A flow from client port `port` (above 8080) to the VIP on backend 198.18.1.1:8080: its forward and reply
/// entries, last seen `forward_idle` and `reply_idle` seconds ago, with `flags` on both.
fn flow(port: u16, proto: u8, flags: u8, idle_s: (u64, u64)) -> [(CtKey, CtValue); 2] {
    let client = ([198, 18, 0, 10], port);
    let (vip, backend) = (([198, 19, 0, 1], 80), ([198, 18, 1, 1], 8080));
    let entry = |nat: ([u8; 4], u16), direction, idle| CtValue {
        nat_addr: ipv4_mapped(nat.0),
        nat_port: nat.1.to_be_bytes(),
        flags: direction | flags,
        last_seen_ns: NOW - idle * S,
        ..CtValue::default()
    };
    [
        (
            key(client, vip, proto),
            entry(backend, ct_flags::FORWARD, idle_s.0),
        ),
        (
            key(backend, client, proto),
            entry(vip, ct_flags::REPLY, idle_s.1),
        ),
    ]
}

/// The client ports of the expired entries (the higher port of each key).
fn expired_ports(entries: &[[(CtKey, CtValue); 2]]) -> Vec<u16> {
    let all: Vec<_> = entries.iter().flatten().copied().collect();
    let keys = expired(&all, NOW, &timeouts());
    let mut ports: Vec<u16> = keys
        .iter()
        .map(|k| u16::from_be_bytes(k.src_port).max(u16::from_be_bytes(k.dst_port)))
        .collect();
    ports.sort();
    ports
}

#[test]
fn each_state_has_its_timeout() {
    let t = timeouts();
    let (seen, closing) = (ct_flags::SEEN_REPLY, ct_flags::CLOSING);
    assert_eq!(t.of(IPPROTO_TCP, 0), t.tcp_syn);
    assert_eq!(t.of(IPPROTO_TCP, seen), t.tcp_established);
    assert_eq!(t.of(IPPROTO_TCP, seen | closing), t.tcp_closing);
    assert_eq!(t.of(IPPROTO_TCP, closing), t.tcp_closing);
    assert_eq!(t.of(IPPROTO_UDP, 0), t.udp);
    assert_eq!(t.of(IPPROTO_UDP, seen), t.udp_stream);
}

#[test]
fn flows_idle_past_their_state_go_with_both_entries() {
    let (seen, closing) = (ct_flags::SEEN_REPLY, ct_flags::CLOSING);
    let flows = [
        flow(10001, IPPROTO_TCP, 0, (61, 61)), // SYN sent, expired
        flow(10002, IPPROTO_TCP, 0, (59, 59)), // SYN sent, live
        flow(10003, IPPROTO_TCP, seen, (3600, 3600)), // established, live
        flow(10004, IPPROTO_TCP, seen, (21_601, 21_601)), // established, expired
        flow(10005, IPPROTO_TCP, seen | closing, (11, 11)), // closing, expired
        flow(10006, IPPROTO_UDP, 0, (31, 31)), // unanswered, expired
        flow(10007, IPPROTO_UDP, seen, (31, 31)), // stream, live
        flow(10008, IPPROTO_UDP, seen, (121, 121)), // stream, expired
    ];
    assert_eq!(
        expired_ports(&flows),
        [10001, 10001, 10004, 10004, 10005, 10005, 10006, 10006, 10008, 10008]
    );
}

#[test]
fn a_flow_lives_while_either_entry_is_fresh() {
    let seen = ct_flags::SEEN_REPLY;
    // Only the client sends, or only the backend: the other entry is old, the flow is not.
    let flows = [
        flow(20001, IPPROTO_UDP, seen, (1, 500)),
        flow(20002, IPPROTO_UDP, seen, (500, 1)),
    ];
    assert!(expired_ports(&flows).is_empty());
}

#[test]
fn an_entry_without_its_pair_is_judged_alone() {
    let [forward, _] = flow(30001, IPPROTO_UDP, 0, (31, 0));
    let [_, reply] = flow(30002, IPPROTO_UDP, 0, (0, 29));
    assert_eq!(expired_ports(&[[forward, reply]]), [30001]);
}

#[test]
fn sctp_associations_take_the_tcp_timeouts() {
    use lb_common::IPPROTO_SCTP;
    let t = timeouts();
    let answered = ct_flags::SEEN_REPLY;
    assert_eq!(t.of(IPPROTO_SCTP, 0), t.tcp_syn);
    assert_eq!(t.of(IPPROTO_SCTP, answered), t.tcp_established);
    assert_eq!(
        t.of(IPPROTO_SCTP, answered | ct_flags::CLOSING),
        t.tcp_closing
    );
    // An association idle for 11 minutes lives on; one closed 11 seconds ago is collected.
    let entries = [
        flow(40_001, IPPROTO_SCTP, answered, (660, 660)),
        flow(40_002, IPPROTO_SCTP, answered | ct_flags::CLOSING, (11, 11)),
    ];
    assert_eq!(
        expired_ports(&entries),
        [40_002, 40_002],
        "both entries of the closed one"
    );
}
