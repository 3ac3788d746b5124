//! Malformed and out-of-scope frames through the real TC and XDP programs
//! (BPF_PROG_TEST_RUN), each addressed to a live service so a wrong parse would translate it.
//!
//! Documented verdicts: every one passes untouched (TC_ACT_UNSPEC / XDP_PASS) and moves exactly
//! `packets` and its reason's counter.
//!
//! Limits of the kernel's test runner (EINVAL before the program runs): frames shorter than
//! an Ethernet header on both hooks (so `truncated_ethernet` is not reachable here), and on TC
//! IPv4 frames shorter than a 20-byte IPv4 header, which are therefore run through XDP only.

mod fixture;

use fixture::{backend, client, deltas, vip, Fixture, Hook, Verdict, HOOKS};
use lb_common::{
    net::{
        tcp_flags, ETHERTYPE_ARP, ETHERTYPE_IPV6, ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP,
        IPV4_MIN_HLEN, TCP_HLEN, UDP_HLEN,
    },
    Counter,
};
use lb_frames::{assert_frames_equal, internet_checksum, Frame, L4};
use lb_tests::require_root;
use lb_userspace::model::Protocol;

/// A fixture with TCP and UDP services on the VIP, so only the malformation stops translation.
fn fixture(hook: Hook) -> Fixture {
    let mut fx = Fixture::new(hook);
    let backends = [backend(1), backend(2)];
    fx.set_services(&[
        (vip(80), Protocol::Tcp, &backends),
        (vip(53), Protocol::Udp, &backends),
    ]);
    fx
}

fn syn() -> Frame {
    Frame::tcp(client(47_000), vip(80), tcp_flags::SYN)
}

/// Sets the IPv4 header's first byte (version and IHL) and fixes the header checksum over
/// the first 20 bytes.
fn with_version_ihl(mut bytes: Vec<u8>, version_ihl: u8) -> Vec<u8> {
    bytes[ETH_HLEN] = version_ihl;
    bytes[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
    let checksum = internet_checksum(&bytes[ETH_HLEN..ETH_HLEN + IPV4_MIN_HLEN]);
    bytes[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&checksum.to_be_bytes());
    bytes
}

/// Asserts each frame passes untouched on both hooks and moves only `packets` and `reason`.
fn assert_untouched(frames: &[Vec<u8>], reason: Counter) {
    assert_untouched_on(&HOOKS, frames, reason);
}

fn assert_untouched_on(hooks: &[Hook], frames: &[Vec<u8>], reason: Counter) {
    for &hook in hooks {
        let mut fx = fixture(hook);
        for (i, bytes) in frames.iter().enumerate() {
            let (verdict, out, moved) = fx.run_counted(bytes);
            assert_eq!(verdict, Verdict::Pass, "{hook:?} frame {i}");
            assert_frames_equal(&out, bytes);
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (reason, 1)]),
                "{hook:?} frame {i}"
            );
        }
        assert_eq!(fx.conntrack_len(), 0, "{hook:?}");
    }
}

/// Whether the kernel's test runner refuses `frame` on `hook` (EINVAL) before the program.
fn refused(hook: Hook, frame: &[u8]) -> bool {
    let mut out = [0u8; 128];
    fixture(hook).try_run(frame, &mut out).is_err()
}

#[test]
fn frames_shorter_than_ethernet_are_refused_before_the_program() {
    require_root!();
    for hook in HOOKS {
        assert!(refused(hook, &syn().to_bytes()[..ETH_HLEN - 1]), "{hook:?}");
    }
}

#[test]
fn truncated_ipv4_headers_pass_untouched() {
    require_root!();
    let syn = syn().to_bytes();
    let without_fixed_header = [
        syn[..ETH_HLEN].to_vec(),
        syn[..ETH_HLEN + IPV4_MIN_HLEN - 1].to_vec(),
    ];
    for frame in &without_fixed_header {
        assert!(
            refused(Hook::Tc, frame),
            "TC test runs now accept {} bytes: test them",
            frame.len()
        );
    }
    assert_untouched_on(&[Hook::Xdp], &without_fixed_header, Counter::TruncatedIpv4);

    // The fixed header is there, its options are cut.
    let with_options = Frame::tcp(client(47_000), vip(80), tcp_flags::SYN)
        .with_ip_options(&[0x01; 8])
        .to_bytes();
    assert_untouched(
        &[with_options[..ETH_HLEN + IPV4_MIN_HLEN + 4].to_vec()],
        Counter::TruncatedIpv4,
    );
}

#[test]
fn bad_header_lengths_pass_untouched() {
    require_root!();
    let syn = syn().to_bytes();
    // IHL 15 (60 bytes) with a total length of 40, though the frame has the bytes.
    let mut beyond_total = with_version_ihl(syn.clone(), 0x4f);
    beyond_total.resize(ETH_HLEN + 60 + TCP_HLEN, 0);
    assert_untouched(
        &[
            with_version_ihl(syn.clone(), 0x44),
            with_version_ihl(syn.clone(), 0x40),
            beyond_total,
        ],
        Counter::BadIpv4HeaderLength,
    );
}

#[test]
fn truncated_tcp_and_udp_headers_pass_untouched() {
    require_root!();
    let tcp = syn().to_bytes();
    let udp = Frame::udp(client(47_000), vip(53), b"").to_bytes();
    // Total length claims less than a TCP header, though the frame has it all.
    let mut short_total = tcp.clone();
    short_total[ETH_HLEN + 3] = (IPV4_MIN_HLEN + TCP_HLEN - 1) as u8;
    let short_total = with_version_ihl(short_total, 0x45);
    assert_untouched(
        &[
            tcp[..ETH_HLEN + IPV4_MIN_HLEN].to_vec(),
            tcp[..ETH_HLEN + IPV4_MIN_HLEN + TCP_HLEN - 1].to_vec(),
            udp[..ETH_HLEN + IPV4_MIN_HLEN + UDP_HLEN - 1].to_vec(),
            short_total,
        ],
        Counter::TruncatedL4,
    );
}

#[test]
fn fragments_pass_untouched() {
    require_root!();
    let first = syn().with_payload(&[7; 64]).with_fragment(true, 0);
    let later = syn().with_fragment(false, 8).with_l4(L4::Raw {
        protocol: IPPROTO_TCP,
        bytes: vec![7; 64],
    });
    let middle_udp = Frame::udp(client(47_000), vip(53), &[1; 32]).with_fragment(true, 4);
    assert_untouched(
        &[first.to_bytes(), later.to_bytes(), middle_udp.to_bytes()],
        Counter::Fragment,
    );
}

#[test]
fn non_ipv4_passes_untouched() {
    require_root!();
    let mut arp = syn().to_bytes();
    arp[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let mut ipv6 = syn().to_bytes();
    ipv6[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    // IPv4 EtherType but version 6 in the header.
    let version_6 = with_version_ihl(syn().to_bytes(), 0x65);
    assert_untouched(&[arp, ipv6, version_6], Counter::NotIpv4);
}

#[test]
fn other_protocols_pass_untouched() {
    require_root!();
    let echo_request = [8, 0, 0xf7, 0xff, 0, 0, 0, 0];
    let icmp = syn().with_l4(L4::Raw {
        protocol: IPPROTO_ICMP,
        bytes: echo_request.to_vec(),
    });
    assert_untouched(&[icmp.to_bytes()], Counter::OtherProtocol);
}
