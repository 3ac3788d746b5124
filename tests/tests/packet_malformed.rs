//! Malformed and out-of-scope frames through the real TC and XDP programs
//! (BPF_PROG_TEST_RUN), each addressed to a live service so a wrong parse would translate it.
//! One table, run by [`run_cases`]: every frame is stateless.
//!
//! Documented verdicts: every one passes untouched (TC_ACT_UNSPEC / XDP_PASS), moves exactly
//! `packets` and its reason's counter, and leaves no conntrack entry.
//!
//! Limits of the kernel's test runner (EINVAL before the program runs): frames shorter than
//! an Ethernet header on both hooks (so `truncated_ethernet` is not reachable here), and on TC
//! IPv4 frames shorter than a 20-byte IPv4 header, which are therefore run through XDP only.
//! The table holds those refusals too, so a kernel that starts accepting them fails a row.

mod fixture;

use fixture::{
    backend,
    cases::{run_cases, Case, Expect},
    client, deltas, vip, Fixture, Hook, HOOKS,
};
use lb_common::{
    net::{
        tcp_flags::{self, SYN},
        ETHERTYPE_ARP, ETHERTYPE_IPV6, ETH_HLEN, ETH_TYPE_OFFSET, IPPROTO_ICMP, IPV4_CHECKSUM,
        IPV4_MIN_HLEN, IPV4_TOTAL_LEN, TCP_HLEN, UDP_HLEN, UDP_LEN,
    },
    Counter,
};
use lb_frames::{internet_checksum, Frame, L4};
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
    let checksum_at = ETH_HLEN + IPV4_CHECKSUM;
    bytes[ETH_HLEN] = version_ihl;
    bytes[checksum_at..checksum_at + 2].fill(0);
    let checksum = internet_checksum(&bytes[ETH_HLEN..ETH_HLEN + IPV4_MIN_HLEN]);
    bytes[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
    bytes
}

/// `bytes` with another EtherType.
fn with_ethertype(bytes: &[u8], ethertype: u16) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[ETH_TYPE_OFFSET..ETH_TYPE_OFFSET + 2].copy_from_slice(&ethertype.to_be_bytes());
    bytes
}

/// A row: `input` on `hooks` passes untouched and moves only `packets` and `reason`.
fn untouched(name: &'static str, hooks: &'static [Hook], input: Vec<u8>, reason: Counter) -> Case {
    Case {
        name,
        hooks,
        setup: fixture,
        input,
        expect: Expect::untouched(deltas(&[(Counter::Packets, 1), (reason, 1)])),
    }
}

/// `bytes` with the IPv4 total length set to `len` (header checksum fixed).
fn with_total_len(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    let at = ETH_HLEN + IPV4_TOTAL_LEN;
    bytes[at..at + 2].copy_from_slice(&(len as u16).to_be_bytes());
    let version_ihl = bytes[ETH_HLEN];
    with_version_ihl(bytes, version_ihl)
}

/// `bytes` with the 2 bytes at `offset` replaced (checksums not fixed).
fn with_bytes(mut bytes: Vec<u8>, offset: usize, value: [u8; 2]) -> Vec<u8> {
    bytes[offset..offset + 2].copy_from_slice(&value);
    bytes
}

/// A row: the kernel's test runner refuses `input` on `hooks` before the program runs.
fn refused(name: &'static str, hooks: &'static [Hook], input: Vec<u8>) -> Case {
    Case {
        name,
        hooks,
        setup: fixture,
        input,
        expect: Expect::Refused,
    }
}

#[test]
fn malformed_and_out_of_scope_frames() {
    require_root!();
    let tcp = syn().to_bytes();
    let udp = Frame::udp(client(47_000), vip(53), b"").to_bytes();
    let with_options = syn().with_ip_options(&[0x01; 8]).to_bytes();
    // IHL 15 (60 bytes) with a total length of 40, though the frame has the bytes.
    let mut ihl_beyond_total = with_version_ihl(tcp.clone(), 0x4f);
    ihl_beyond_total.resize(ETH_HLEN + 60 + TCP_HLEN, 0);
    // Total length claims less than a TCP header, though the frame has it all.
    let mut short_total = tcp.clone();
    short_total[ETH_HLEN + 3] = (IPV4_MIN_HLEN + TCP_HLEN - 1) as u8;
    let short_total = with_version_ihl(short_total, 0x45);
    let echo_request = syn().with_l4(L4::Raw {
        protocol: IPPROTO_ICMP,
        bytes: vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0],
    });
    let cut = |bytes: &[u8], len: usize| bytes[..len].to_vec();
    let ipv4_at = ETH_HLEN;
    let l4_at = ETH_HLEN + IPV4_MIN_HLEN;
    let options_cut = cut(&with_options, l4_at + 4);
    let tcp_cut = cut(&tcp, l4_at + TCP_HLEN - 1);
    let udp_cut = cut(&udp, l4_at + UDP_HLEN - 1);
    let ip_len = |bytes: &[u8]| bytes.len() - ETH_HLEN;
    let tcp_beyond_frame = with_total_len(tcp.clone(), ip_len(&tcp) + 10);
    let udp_beyond_frame = with_total_len(udp.clone(), ip_len(&udp) + 1);
    let data_offset_at = l4_at + 12;
    let data_offset = |words: u8| with_bytes(tcp.clone(), data_offset_at, [words << 4, SYN]);
    // A data offset of 6 words in a 20-byte segment, though the frame has 8 more bytes.
    let mut offset_beyond_packet = data_offset(6);
    offset_beyond_packet.extend_from_slice(&[0; 8]);
    let query = Frame::udp(client(47_000), vip(53), b"query").to_bytes();
    let udp_len = |len: usize| {
        let len = (len as u16).to_be_bytes();
        with_bytes(query.clone(), l4_at + UDP_LEN, len)
    };
    let udp_payload = ip_len(&query) - IPV4_MIN_HLEN;
    // The header checksum off by one: a new flow to a live service.
    let checksum_at = ETH_HLEN + IPV4_CHECKSUM;
    let checksum = u16::from_be_bytes([tcp[checksum_at], tcp[checksum_at + 1]]);
    let bad_checksum = with_bytes(tcp.clone(), checksum_at, (checksum ^ 1).to_be_bytes());
    let arp = with_ethertype(&tcp, ETHERTYPE_ARP);
    let ipv6 = with_ethertype(&tcp, ETHERTYPE_IPV6);

    use Counter::{
        BadIpv4Checksum, BadIpv4HeaderLength as BadIhl, BadL4Length, NotIp, OtherProtocol,
        TruncatedIpv4, TruncatedL4,
    };
    #[rustfmt::skip]
    let cases = [
        refused("shorter than Ethernet",       &HOOKS,       cut(&tcp, ETH_HLEN - 1)),
        refused("Ethernet only",               &[Hook::Tc],  cut(&tcp, ipv4_at)),
        refused("IPv4 cut by a byte",          &[Hook::Tc],  cut(&tcp, l4_at - 1)),
        untouched("Ethernet only",             &[Hook::Xdp], cut(&tcp, ipv4_at), TruncatedIpv4),
        untouched("IPv4 cut by a byte",        &[Hook::Xdp], cut(&tcp, l4_at - 1), TruncatedIpv4),
        untouched("IPv4 options cut",          &HOOKS, options_cut, TruncatedIpv4),
        untouched("IHL 4",                     &HOOKS, with_version_ihl(tcp.clone(), 0x44), BadIhl),
        untouched("IHL 0",                     &HOOKS, with_version_ihl(tcp.clone(), 0x40), BadIhl),
        untouched("IHL beyond total length",   &HOOKS, ihl_beyond_total, BadIhl),
        untouched("TCP header absent",         &HOOKS, cut(&tcp, l4_at), TruncatedL4),
        untouched("TCP header cut by a byte",  &HOOKS, tcp_cut, TruncatedL4),
        untouched("UDP header cut by a byte",  &HOOKS, udp_cut, TruncatedL4),
        untouched("total length short of TCP", &HOOKS, short_total, TruncatedL4),
        untouched("TCP total length beyond the frame", &HOOKS, tcp_beyond_frame, TruncatedIpv4),
        untouched("UDP total length beyond the frame", &HOOKS, udp_beyond_frame, TruncatedIpv4),
        untouched("TCP data offset 0",         &HOOKS, data_offset(0), BadL4Length),
        untouched("TCP data offset 4",         &HOOKS, data_offset(4), BadL4Length),
        untouched("TCP data offset beyond the packet", &HOOKS, offset_beyond_packet, TruncatedL4),
        untouched("TCP data offset 15",        &HOOKS, data_offset(15), TruncatedL4),
        untouched("UDP length below its header", &HOOKS, udp_len(UDP_HLEN - 1), BadL4Length),
        untouched("UDP length short of the packet", &HOOKS, udp_len(udp_payload - 1), BadL4Length),
        untouched("UDP length beyond the packet", &HOOKS, udp_len(udp_payload + 1), BadL4Length),
        untouched("IPv4 header checksum wrong", &HOOKS, bad_checksum, BadIpv4Checksum),
        untouched("ARP",                       &HOOKS, arp, NotIp),
        untouched("IPv6 EtherType",            &HOOKS, ipv6, NotIp),
        untouched("IPv4 EtherType, version 6", &HOOKS, with_version_ihl(tcp, 0x65), NotIp),
        untouched("ICMP echo request",         &HOOKS, echo_request.to_bytes(), OtherProtocol),
    ];
    run_cases(&cases);
}
