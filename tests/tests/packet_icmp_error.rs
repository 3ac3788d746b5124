//! ICMP errors about translated flows through the real TC and XDP programs
//! (BPF_PROG_TEST_RUN): the error and the packet it quotes are translated back the way the
//! flow's packets are, so the result is exactly the error the client (or backend) would have
//! received without translation, checksums included.

mod fixture;

use std::net::{Ipv4Addr, SocketAddrV4};

use fixture::{backend, client, deltas, vip, Fixture, Hook, Verdict, HOOKS};
use lb_common::{
    ipv4_mapped,
    net::{tcp_flags, ETH_HLEN},
    Counter, NodeConfig, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_frames::{assert_frames_equal, checksums_valid, internet_checksum, Frame};
use lb_tests::require_root;
use lb_userspace::model::Protocol;

const SERVICE_ID: u32 = 1;
const BACKEND_ID: u32 = 11;
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const PORT_UNREACHABLE: (u8, u8) = (3, 3);
const FRAGMENTATION_NEEDED: (u8, u8) = (3, 4);

/// A fixture whose service vip(80)/`proto` (both scopes) balances to backend(1), on another
/// node when `config` masquerades.
fn setup(hook: Hook, proto: u8, config: NodeConfig) -> Fixture {
    Fixture::one_backend(hook, proto, (SERVICE_ID, BACKEND_ID), 0, &config)
}

fn request(proto: u8) -> Frame {
    match proto {
        IPPROTO_TCP => Frame::tcp(client(40_000), vip(80), tcp_flags::SYN),
        _ => Frame::udp(client(40_000), vip(80), b"query"),
    }
}

/// Runs `frame` through the fixture's hook and checks it came out as `expected`.
fn passes_as(fx: &mut Fixture, frame: &Frame, expected: &Frame) {
    let (verdict, out) = fx.run(&frame.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    assert_frames_equal(&out, &expected.to_bytes());
}

/// Runs an ICMP error and checks it came out as `expected`, counted as translated.
fn translated_to(fx: &mut Fixture, error: &Frame, expected: &Frame) {
    let (verdict, out, moved) = fx.run_counted(&error.to_bytes());
    assert_eq!(verdict, Verdict::Pass, "{:?}", fx.hook);
    assert_frames_equal(&out, &expected.to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::IcmpErrorTranslated, 1)]),
        "{:?}",
        fx.hook
    );
}

#[test]
fn a_backends_port_unreachable_reaches_the_client_from_the_vip() {
    require_root!();
    for hook in HOOKS {
        for proto in [IPPROTO_UDP, IPPROTO_TCP] {
            let mut fx = setup(hook, proto, NodeConfig::default());
            let sent = request(proto);
            let at_backend = sent.clone().with_dst(backend(1));
            passes_as(&mut fx, &sent, &at_backend);
            let error = Frame::icmp_error(
                *backend(1).ip(),
                *client(0).ip(),
                PORT_UNREACHABLE,
                &at_backend,
                None,
            );
            let expected =
                Frame::icmp_error(*vip(0).ip(), *client(0).ip(), PORT_UNREACHABLE, &sent, None);
            translated_to(&mut fx, &error, &expected);
        }
    }
}

#[test]
fn a_routers_fragmentation_needed_for_a_masqueraded_flow_reaches_the_client() {
    require_root!();
    let config = NodeConfig::masquerading(ipv4_mapped(NODE.octets()), 61_000, 61_000);
    let mut fx = setup(Hook::Xdp, IPPROTO_TCP, config);
    let sent = request(IPPROTO_TCP);
    let at_backend = sent
        .clone()
        .with_src(SocketAddrV4::new(NODE, 61_000))
        .with_dst(backend(1));
    passes_as(&mut fx, &sent, &at_backend);
    for quote_len in [None, Some(28)] {
        let error = Frame::icmp_error(ROUTER, NODE, FRAGMENTATION_NEEDED, &at_backend, quote_len);
        let expected = Frame::icmp_error(
            ROUTER,
            *client(0).ip(),
            FRAGMENTATION_NEEDED,
            &sent,
            quote_len,
        );
        translated_to(&mut fx, &error, &expected);
    }
}

#[test]
fn other_icmp_and_errors_about_untracked_packets_pass_untouched() {
    require_root!();
    for hook in HOOKS {
        let mut fx = setup(hook, IPPROTO_UDP, NodeConfig::default());
        let untracked = Frame::udp(client(41_000), backend(1), b"direct");
        let error = Frame::icmp_error(
            *backend(1).ip(),
            *client(0).ip(),
            PORT_UNREACHABLE,
            &untracked,
            None,
        );
        let (verdict, out, moved) = fx.run_counted(&error.to_bytes());
        assert_eq!(verdict, Verdict::Pass);
        assert_frames_equal(&out, &error.to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::OtherProtocol, 1)]),
            "{hook:?}"
        );
    }
}

/// The fuzz run's frame (issue 14): a router's "fragmentation needed" to 198.18.201.59 quoting
/// 28 bytes of its SYN to 198.18.10.22:9090, followed by a 10-byte Ethernet trailer where the
/// quoted TCP checksum would be, were the quote longer.
const FUZZ_ICMP_ERROR: &str =
    "02fa0000000202fa00000001080045000038123440004001702fc6126301c612c93b\
                               030481e60000057845000028123440004006c925c612c93bc6120a164e33238200\
                               0003e8a0a1a2a3a4a5a6a7a8a9";

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn an_icmp_error_with_an_ethernet_trailer_is_translated_within_its_ip_length() {
    require_root!();
    let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 201, 59), 20_019);
    let frontend = SocketAddrV4::new(Ipv4Addr::new(198, 19, 10, 20), 8080);
    let backend = SocketAddrV4::new(Ipv4Addr::new(198, 18, 10, 22), 9090);
    let error = unhex(FUZZ_ICMP_ERROR);
    let quote = ETH_HLEN + 20 + 8;
    // The quote back to client -> frontend (its IPv4 checksum updated), the ICMP checksum the
    // issue names; the trailer as it came.
    let mut expected = error.clone();
    expected[quote + 16..quote + 20].copy_from_slice(&frontend.ip().octets());
    expected[quote + 10..quote + 12].fill(0);
    let inner_checksum = internet_checksum(&expected[quote..quote + 20]);
    expected[quote + 10..quote + 12].copy_from_slice(&inner_checksum.to_be_bytes());
    expected[quote + 22..quote + 24].copy_from_slice(&frontend.port().to_be_bytes());
    expected[ETH_HLEN + 22..ETH_HLEN + 24].copy_from_slice(&[0x85, 0xd8]);
    for error_hook in HOOKS {
        let mut fx = Fixture::with_service(Hook::Tc, frontend, Protocol::Tcp, &[backend]);
        let syn = Frame::tcp(client, frontend, tcp_flags::SYN);
        passes_as(&mut fx, &syn, &syn.clone().with_dst(backend));
        let (verdict, out, moved) = fx.run_counted_on(error_hook, &error);
        assert_eq!(verdict, Verdict::Pass, "{error_hook:?}");
        assert_frames_equal(&out, &expected);
        assert!(checksums_valid(&out), "{error_hook:?}");
        assert_eq!(&out[out.len() - 2..], [0xa8, 0xa9]);
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::IcmpErrorTranslated, 1)]),
            "{error_hook:?}"
        );
    }
}
