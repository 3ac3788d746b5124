//! Flow states through the real TC and XDP programs (BPF_PROG_TEST_RUN): both entries of a
//! flow go from SYN sent (or unanswered) to answered (`ct_flags::SEEN_REPLY`) on the backend's
//! first answer, and to closing (`ct_flags::CLOSING`) on a FIN or RST from either side; the
//! agent's garbage collector times them out by these states.

mod fixture;

use fixture::{backend, client, vip, Fixture, HOOKS};
use lb_common::{conntrack::ct_flags, net::tcp_flags, NodeConfig, IPPROTO_TCP, IPPROTO_UDP};
use lb_frames::Frame;
use lb_tests::require_root;

/// The state flags of every entry (two per flow), forward first.
fn states(fx: &mut Fixture) -> Vec<u8> {
    let mut entries = fx.conntrack_entries();
    entries.sort_by_key(|(_, v)| v.flags & ct_flags::DIRECTION);
    entries
        .iter()
        .map(|(_, v)| v.flags & (ct_flags::SEEN_REPLY | ct_flags::CLOSING))
        .collect()
}

const SEEN: u8 = ct_flags::SEEN_REPLY;
const CLOSING: u8 = ct_flags::CLOSING;

#[test]
fn a_tcp_flow_is_syn_sent_then_established_then_closing() {
    require_root!();
    // A FIN from the client, or an RST from the backend.
    let ends = [
        Frame::tcp(client(42_000), vip(80), tcp_flags::FIN | tcp_flags::ACK),
        Frame::tcp(backend(1), client(42_000), tcp_flags::RST),
    ];
    for hook in HOOKS {
        for end in &ends {
            let mut fx =
                Fixture::one_backend(hook, IPPROTO_TCP, (1, 11), 0, &NodeConfig::default());
            fx.run(&Frame::tcp(client(42_000), vip(80), tcp_flags::SYN).to_bytes());
            assert_eq!(states(&mut fx), [0, 0], "SYN sent, {hook:?}");
            let syn_ack = Frame::tcp(backend(1), client(42_000), tcp_flags::SYN | tcp_flags::ACK);
            fx.run(&syn_ack.to_bytes());
            assert_eq!(states(&mut fx), [SEEN, SEEN], "established, {hook:?}");
            fx.run(&Frame::tcp(client(42_000), vip(80), tcp_flags::ACK).to_bytes());
            assert_eq!(states(&mut fx), [SEEN, SEEN], "still established, {hook:?}");
            fx.run(&end.to_bytes());
            assert_eq!(
                states(&mut fx),
                [SEEN | CLOSING, SEEN | CLOSING],
                "closing, {hook:?}"
            );
        }
    }
}

#[test]
fn a_udp_flow_is_unanswered_until_the_backend_answers() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::one_backend(hook, IPPROTO_UDP, (1, 11), 0, &NodeConfig::default());
        fx.run(&Frame::udp(client(42_001), vip(80), b"q").to_bytes());
        fx.run(&Frame::udp(client(42_001), vip(80), b"q again").to_bytes());
        assert_eq!(states(&mut fx), [0, 0], "unanswered, {hook:?}");
        fx.run(&Frame::udp(backend(1), client(42_001), b"a").to_bytes());
        assert_eq!(states(&mut fx), [SEEN, SEEN], "answered, {hook:?}");
    }
}
