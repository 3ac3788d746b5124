//! Conntrack pairs through the real TC and XDP programs (BPF_PROG_TEST_RUN): a flow whose
//! reply or forward entry was evicted alone gets it back from the other entry and goes on
//! translating both ways, on the same backend, masqueraded or not (see `lb-ebpf`'s `pairs`).

mod fixture;

use std::net::{Ipv4Addr, SocketAddrV4};

use fixture::{backend, client, deltas, vip, Fixture, Hook, Verdict, HOOKS};
use lb_common::{
    config::{SNAT_PORT_MAX, SNAT_PORT_MIN},
    conntrack::ct_flags,
    ipv4_mapped,
    net::tcp_flags,
    Counter, CtKey, NodeConfig, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_frames::{assert_frames_equal, parse, Frame};
use lb_tests::require_root;

const IDS: (u32, u32) = (1, 11);
/// The node's address masqueraded flows leave from.
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Longer than the refresh interval at which an answered flow checks its pair.
const PAST_REFRESH_NS: u64 = 2_000_000_000;

/// The conntrack key of a packet `src -> dst`.
fn ct_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> CtKey {
    CtKey {
        src_addr: ipv4_mapped(src.ip().octets()),
        dst_addr: ipv4_mapped(dst.ip().octets()),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        proto,
        _pad: [0; 3],
    }
}

/// The client's `n`th packet of its flow to the VIP (a SYN first, then ACKs).
fn from_client(proto: u8, n: u8) -> Frame {
    match (proto, n) {
        (IPPROTO_TCP, 0) => Frame::tcp(client(41_000), vip(80), tcp_flags::SYN),
        (IPPROTO_TCP, _) => Frame::tcp(client(41_000), vip(80), tcp_flags::ACK),
        _ => Frame::udp(client(41_000), vip(80), &[b'q', n]),
    }
}

/// The backend's answer to `to`.
fn from_backend(proto: u8, to: SocketAddrV4) -> Frame {
    match proto {
        IPPROTO_TCP => Frame::tcp(backend(1), to, tcp_flags::SYN | tcp_flags::ACK),
        _ => Frame::udp(backend(1), to, b"answer"),
    }
}

/// Runs `frame` and checks it came out as `expected` with exactly `counters` moved.
fn translated(fx: &mut Fixture, frame: &Frame, expected: &Frame, counters: &[(Counter, u64)]) {
    let (verdict, out, moved) = fx.run_counted(&frame.to_bytes());
    assert_eq!(verdict, Verdict::Pass, "{:?}", fx.hook);
    assert_frames_equal(&out, &expected.to_bytes());
    assert_eq!(moved, deltas(counters), "{:?}", fx.hook);
}

/// A flow translated to backend(1) without masquerading, after its first packet.
fn started(hook: Hook, proto: u8) -> Fixture {
    let mut fx = Fixture::one_backend(hook, proto, IDS, 0, &NodeConfig::default());
    let first = from_client(proto, 0);
    let to_backend = first.clone().with_dst(backend(1));
    let new = [(Counter::Packets, 1), (Counter::NewFlows, 1)];
    translated(&mut fx, &first, &to_backend, &new);
    assert_eq!(fx.conntrack_len(), 2);
    fx
}

const FORWARDED: [(Counter, u64); 2] = [(Counter::Packets, 1), (Counter::ForwardTranslated, 1)];
const ANSWERED: [(Counter, u64); 2] = [(Counter::Packets, 1), (Counter::ReplyTranslated, 1)];

fn repaired(counters: [(Counter, u64); 2]) -> [(Counter, u64); 3] {
    [counters[0], counters[1], (Counter::ConntrackRepaired, 1)]
}

#[test]
fn an_unanswered_flow_whose_reply_entry_was_evicted_is_answered_from_the_vip() {
    require_root!();
    for hook in HOOKS {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let mut fx = started(hook, proto);
            fx.evict_conntrack(&ct_key(backend(1), client(41_000), proto));
            let next = from_client(proto, 1);
            let to_backend = next.clone().with_dst(backend(1));
            translated(&mut fx, &next, &to_backend, &repaired(FORWARDED));
            assert_eq!(fx.conntrack_len(), 2);
            let answer = from_backend(proto, client(41_000));
            let back = answer.clone().with_src(vip(80));
            translated(&mut fx, &answer, &back, &ANSWERED);
        }
    }
}

#[test]
fn an_answered_flow_whose_reply_entry_was_evicted_repairs_it_at_its_next_refresh() {
    require_root!();
    for hook in HOOKS {
        let proto = IPPROTO_UDP;
        let mut fx = started(hook, proto);
        let answer = from_backend(proto, client(41_000));
        let back = answer.clone().with_src(vip(80));
        translated(&mut fx, &answer, &back, &ANSWERED);
        let reply_key = ct_key(backend(1), client(41_000), proto);
        let both_seen = fx
            .conntrack_entries()
            .iter()
            .all(|(_, v)| v.flags & ct_flags::SEEN_REPLY != 0);
        assert!(both_seen, "the first answer marks both entries");
        fx.evict_conntrack(&reply_key);
        fx.age_conntrack(PAST_REFRESH_NS);
        let next = from_client(proto, 1);
        let to_backend = next.clone().with_dst(backend(1));
        translated(&mut fx, &next, &to_backend, &repaired(FORWARDED));
        translated(&mut fx, &answer, &back, &ANSWERED);
    }
}

#[test]
fn a_reply_whose_forward_entry_was_evicted_restores_it_and_the_flow_keeps_its_backend() {
    require_root!();
    for hook in HOOKS {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let mut fx = started(hook, proto);
            fx.evict_conntrack(&ct_key(client(41_000), vip(80), proto));
            let answer = from_backend(proto, client(41_000));
            let back = answer.clone().with_src(vip(80));
            translated(&mut fx, &answer, &back, &repaired(ANSWERED));
            assert_eq!(fx.conntrack_len(), 2);
            let next = from_client(proto, 1);
            let to_backend = next.clone().with_dst(backend(1));
            translated(&mut fx, &next, &to_backend, &FORWARDED);
        }
    }
}

/// A masqueraded flow (XDP, remote backend) after its first packet, and the node's end.
fn masqueraded(proto: u8) -> (Fixture, SocketAddrV4) {
    let config = NodeConfig::masquerading(ipv4_mapped(NODE.octets()), SNAT_PORT_MIN, SNAT_PORT_MAX);
    let mut fx = Fixture::one_backend(Hook::Xdp, proto, IDS, 0, &config);
    let (verdict, out, _) = fx.run_counted(&from_client(proto, 0).to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    let (port, _) = parse(&out).expect("a valid frame").ports.expect("ports");
    let node = SocketAddrV4::new(NODE, port);
    (fx, node)
}

#[test]
fn a_masqueraded_flow_gets_either_evicted_entry_back() {
    require_root!();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let (mut fx, node) = masqueraded(proto);
        let next = from_client(proto, 1);
        let out = next.clone().with_src(node).with_dst(backend(1));
        let answer = from_backend(proto, node);
        let back = answer.clone().with_src(vip(80)).with_dst(client(41_000));

        fx.evict_conntrack(&ct_key(backend(1), node, proto));
        translated(&mut fx, &next, &out, &repaired(FORWARDED));
        translated(&mut fx, &answer, &back, &ANSWERED);

        fx.evict_conntrack(&ct_key(client(41_000), vip(80), proto));
        fx.age_conntrack(PAST_REFRESH_NS);
        translated(&mut fx, &answer, &back, &repaired(ANSWERED));
        translated(&mut fx, &next, &out, &FORWARDED);
        assert_eq!(fx.conntrack_len(), 2);
    }
}
