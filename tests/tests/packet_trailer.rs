//! Ethernet trailers (bytes after the IPv4 total length, as short frames carry padding)
//! through the real TC and XDP programs (BPF_PROG_TEST_RUN): a translated packet's rewrite
//! and checksum updates stay inside its IPv4 packet, and the trailer comes out as it went in.
//! ICMP errors with a trailer: `packet_icmp_error.rs`.

mod fixture;

use fixture::{
    backend,
    cases::{run_cases, Case, Expect, Output},
    client, deltas, vip, Fixture, Hook, Verdict, HOOKS,
};
use lb_common::{net::tcp_flags, Counter};
use lb_frames::Frame;
use lb_tests::require_root;
use lb_userspace::model::Protocol;

/// Twenty bytes after the packet: longer than any checksum or port a rewrite might reach.
const TRAILER: [u8; 20] = [
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
    0xb0, 0xb1, 0xb2, 0xb3,
];

/// TCP port 80 and UDP port 53 of the VIP, each balanced to backend(1) alone.
fn fixture(hook: Hook) -> Fixture {
    let mut fx = Fixture::new(hook);
    let backends = [backend(1)];
    fx.set_services(&[
        (vip(80), Protocol::Tcp, &backends),
        (vip(53), Protocol::Udp, &backends),
    ]);
    fx
}

/// A row: `sent` with the trailer starts a flow and comes out as `sent` translated to
/// backend(1), checksums verifying over the IPv4 packet, the trailer unchanged.
fn new_flow(name: &'static str, sent: Frame) -> Case {
    let with_trailer = |frame: &Frame| [frame.to_bytes(), TRAILER.to_vec()].concat();
    Case {
        name,
        hooks: &HOOKS,
        setup: fixture,
        input: with_trailer(&sent),
        expect: Expect::Ran {
            verdict: Verdict::Pass,
            output: Output::Frame(with_trailer(&sent.with_dst(backend(1)))),
            counters: deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)]),
            stats: Vec::new(),
            conntrack: 2,
        },
    }
}

#[test]
fn trailers_are_neither_rewritten_nor_checksummed() {
    require_root!();
    let syn = Frame::tcp(client(45_000), vip(80), tcp_flags::SYN);
    let data = Frame::tcp(client(45_001), vip(80), tcp_flags::SYN).with_payload(b"hello");
    let query = Frame::udp(client(45_002), vip(53), b"q");
    let odd = Frame::udp(client(45_003), vip(53), b"odd");
    let cases = [
        new_flow("TCP SYN", syn),
        new_flow("TCP SYN with data", data),
        new_flow("UDP, 1 byte", query),
        new_flow("UDP, 3 bytes", odd),
    ];
    run_cases(&cases);
}

#[test]
fn a_reply_with_a_trailer_is_translated_back_within_its_packet() {
    require_root!();
    for hook in HOOKS {
        let fx = fixture(hook);
        let request = Frame::udp(client(45_100), vip(53), b"query");
        let (verdict, _) = fx.run(&request.to_bytes());
        assert_eq!(verdict, Verdict::Pass);
        let answer = Frame::udp(backend(1), client(45_100), b"answer!");
        let sent = [answer.to_bytes(), TRAILER.to_vec()].concat();
        let expected = [answer.with_src(vip(53)).to_bytes(), TRAILER.to_vec()].concat();
        let (verdict, out) = fx.run(&sent);
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        lb_frames::assert_frames_equal(&out, &expected);
    }
}
