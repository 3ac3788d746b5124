//! Services without a usable backend through the real TC and XDP programs (BPF_PROG_TEST_RUN):
//! new TCP and UDP flows are rejected as kube-proxy does (ICMP port unreachable from the
//! frontend, sent back out of the arrival interface: `TC_ACT_REDIRECT` / `XDP_TX`), or dropped
//! when the service entry says so (`DROP_IF_NO_BACKEND`).

mod fixture;

use fixture::{client, deltas, vip, Fixture, Hook, Verdict, HOOKS};
use lb_common::{
    net::{tcp_flags, ETHERTYPE_IPV4, ETH_HLEN, IPPROTO_ICMP, TCP_HLEN, UDP_HLEN},
    service::{scope, service_flags},
    Counter, ServiceValue, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_frames::{assert_frames_equal, internet_checksum, parse, Frame, Ipv4, DST_MAC, L4, SRC_MAC};
use lb_tests::require_root;
use lb_userspace::model::Protocol;

const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

/// A fixture whose TCP service on port 80 and UDP service on port 53 have no endpoints,
/// programmed by the agent's reconciler.
fn empty_services(hook: Hook) -> Fixture {
    let mut fx = Fixture::new(hook);
    fx.set_services(&[(vip(80), Protocol::Tcp, &[]), (vip(53), Protocol::Udp, &[])]);
    fx
}

/// The ICMP port unreachable answering `original`, built from the RFC: Ethernet addresses
/// swapped, IPv4 from the frontend to the client (TOS 0xc0, TTL 64, no fragmentation), ICMP
/// type 3 code 3 quoting the original IPv4 header and `quoted_l4` bytes of its payload.
fn port_unreachable(original: &[u8], quoted_l4: usize) -> Vec<u8> {
    let sent = parse(original).expect("a valid frame");
    let quoted = &original[ETH_HLEN..ETH_HLEN + sent.header_len + quoted_l4];
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let checksum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    Frame {
        dst_mac: SRC_MAC,
        src_mac: DST_MAC,
        ethertype: ETHERTYPE_IPV4,
        ip: Ipv4 {
            src: sent.dst,
            dst: sent.src,
            tos: 0xc0,
            id: 0,
            ttl: 64,
            flags_fragment: 0,
            options: Vec::new(),
        },
        l4: L4::Raw {
            protocol: IPPROTO_ICMP,
            bytes: icmp,
        },
    }
    .to_bytes()
}

/// Asserts `frame` is rejected with exactly `expected` and moves the reject counters.
fn assert_rejected(fx: &mut Fixture, frame: &[u8], expected: &[u8], protocol: u8) {
    let hook = fx.hook;
    let frontend = vip(if protocol == IPPROTO_TCP { 80 } else { 53 });
    let before = fx.service_stats(frontend, protocol);
    let (verdict, out, moved) = fx.run_counted(frame);
    assert_eq!(verdict, Verdict::SendBack, "{hook:?}");
    assert_frames_equal(&out, expected);
    let reply = parse(&out).unwrap();
    assert!(reply.ip_checksum_ok, "{hook:?}");
    assert_eq!(
        internet_checksum(&out[ETH_HLEN + 20..]),
        0,
        "{hook:?}: ICMP checksum"
    );
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::RejectNoBackend, 1)]),
        "{hook:?}"
    );
    let after = fx.service_stats(frontend, protocol);
    assert_eq!(after.rejects, before.rejects + 1, "{hook:?}");
    assert_eq!((after.drops, after.new_flows), (0, 0), "{hook:?}");
    assert_eq!(fx.conntrack_len(), 0, "{hook:?}");
}

#[test]
fn a_tcp_syn_is_rejected_with_port_unreachable() {
    require_root!();
    for hook in HOOKS {
        let mut fx = empty_services(hook);
        for syn in [
            Frame::tcp(client(46_000), vip(80), tcp_flags::SYN).with_tcp_options(&MSS_1460),
            Frame::tcp(client(46_001), vip(80), tcp_flags::SYN).with_ip_options(&ROUTER_ALERT),
        ] {
            let bytes = syn.to_bytes();
            // The fixed TCP header is quoted (more than RFC 792's 8 bytes; see lb-ebpf's
            // reject module), its options are not.
            assert_rejected(
                &mut fx,
                &bytes,
                &port_unreachable(&bytes, TCP_HLEN),
                IPPROTO_TCP,
            );
        }
    }
}

#[test]
fn a_udp_datagram_is_rejected_with_port_unreachable() {
    require_root!();
    for hook in HOOKS {
        let mut fx = empty_services(hook);
        for query in [
            Frame::udp(client(50_000), vip(53), b"query: demo.default.svc?"),
            Frame::udp(client(50_001), vip(53), b"x").with_ip_options(&[0x01; 40]),
            Frame::udp(client(50_002), vip(53), b"").with_udp_zero_checksum(),
        ] {
            let bytes = query.to_bytes();
            assert_rejected(
                &mut fx,
                &bytes,
                &port_unreachable(&bytes, UDP_HLEN),
                IPPROTO_UDP,
            );
        }
    }
}

#[test]
fn ethernet_padding_is_not_quoted() {
    require_root!();
    for hook in HOOKS {
        let mut fx = empty_services(hook);
        let bytes = Frame::udp(client(50_003), vip(53), b"q").to_bytes();
        let mut padded = bytes.clone();
        padded.resize(60, 0);
        assert_rejected(
            &mut fx,
            &padded,
            &port_unreachable(&bytes, UDP_HLEN),
            IPPROTO_UDP,
        );
    }
}

#[test]
fn a_service_that_drops_without_backends_drops() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        let value = ServiceValue {
            id: 7,
            backend_count: 0,
            flags: service_flags::DROP_IF_NO_BACKEND,
            affinity_timeout_s: 0,
        };
        let scopes = [scope::EXTERNAL, scope::INTERNAL];
        fx.program(vip(80), IPPROTO_TCP, &scopes, value, &[]);
        fx.program(
            vip(53),
            IPPROTO_UDP,
            &scopes,
            ServiceValue { id: 8, ..value },
            &[],
        );
        let syn = Frame::tcp(client(46_002), vip(80), tcp_flags::SYN);
        let query = Frame::udp(client(50_004), vip(53), b"query");
        for (frame, id) in [(syn, 7), (query, 8)] {
            let (verdict, _, moved) = fx.run_counted(&frame.to_bytes());
            assert_eq!(verdict, Verdict::Drop, "{hook:?}");
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::DropNoBackend, 1)]),
                "{hook:?}"
            );
            let stats = fx.stats_of(id);
            assert_eq!((stats.drops, stats.rejects), (1, 0), "{hook:?}");
        }
        assert_eq!(fx.conntrack_len(), 0, "{hook:?}");
    }
}

#[test]
fn icmp_and_fragments_to_a_service_without_backends_are_never_rejected() {
    require_root!();
    let echo_request = [8, 0, 0xf7, 0xff, 0, 0, 0, 0];
    let icmp = Frame::tcp(client(46_003), vip(80), tcp_flags::SYN).with_l4(L4::Raw {
        protocol: IPPROTO_ICMP,
        bytes: echo_request.to_vec(),
    });
    let first_fragment = Frame::udp(client(50_005), vip(53), &[1; 64]).with_fragment(true, 0);
    for hook in HOOKS {
        let mut fx = empty_services(hook);
        for (frame, reason) in [
            (icmp.to_bytes(), Counter::OtherProtocol),
            (first_fragment.to_bytes(), Counter::Fragment),
        ] {
            let (verdict, out, moved) = fx.run_counted(&frame);
            assert_eq!(verdict, Verdict::Pass, "{hook:?}");
            assert_frames_equal(&out, &frame);
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (reason, 1)]),
                "{hook:?}"
            );
        }
    }
}

#[test]
fn no_error_goes_to_a_broadcast_source() {
    require_root!();
    for hook in HOOKS {
        let mut fx = empty_services(hook);
        let from = "255.255.255.255:68".parse().unwrap();
        let query = Frame::udp(from, vip(53), b"query");
        let (verdict, _, moved) = fx.run_counted(&query.to_bytes());
        assert_eq!(verdict, Verdict::Drop, "{hook:?}");
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::DropNoBackend, 1)]),
            "{hook:?}"
        );
    }
}
