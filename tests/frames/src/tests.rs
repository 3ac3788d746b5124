use std::net::SocketAddrV4;

use lb_common::net::{
    icmp, tcp_flags, ETH_HLEN, ICMP_HLEN, IPPROTO_ICMP, IPV4_MF, IPV4_MIN_HLEN, TCP_HLEN,
};

use crate::*;

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tcp_syn_matches_a_reference_encoding() {
    // Reference bytes computed independently (Python, RFC 1071 checksums).
    let frame = Frame::tcp(
        addr("198.18.0.10:40000"),
        addr("198.19.0.1:80"),
        tcp_flags::SYN,
    )
    .with_tcp_options(&[2, 4, 0x05, 0xb4])
    .to_bytes();
    let expected = "02000000000102000000000a0800\
                    4500002c4242400040066c59c612000ac6130001\
                    9c40005010000000000000006002faf064740000020405b4";
    assert_eq!(hex_string(&frame), expected);
    let parsed = parse(&frame).unwrap();
    assert_eq!(parsed.header_len, 20);
    assert_eq!(parsed.ports, Some((40000, 80)));
    assert_eq!(parsed.tcp_flags, Some(tcp_flags::SYN));
    assert!(parsed.ip_checksum_ok);
    assert_eq!(parsed.l4_checksum_ok, Some(true));
    assert_eq!(frame.len(), ETH_HLEN + IPV4_MIN_HLEN + TCP_HLEN + 4);
}

#[test]
fn ip_options_are_padded_and_move_the_transport_header() {
    let frame = Frame::udp(addr("198.18.0.10:5353"), addr("198.19.0.1:53"), b"q")
        .with_ip_options(&[0x94, 0x04, 0, 0, 0x01]) // router alert + NOP, padded to 8
        .to_bytes();
    let parsed = parse(&frame).unwrap();
    assert_eq!(parsed.header_len, 28);
    assert_eq!(frame[ETH_HLEN] & 0x0f, 7);
    assert_eq!(parsed.ports, Some((5353, 53)));
    assert!(parsed.ip_checksum_ok);
    assert_eq!(parsed.l4_checksum_ok, Some(true));
}

#[test]
fn rewriting_addresses_yields_a_valid_frame_and_corruption_is_detected() {
    let original = Frame::udp(addr("198.18.0.10:5353"), addr("198.19.0.1:53"), b"abc");
    let rewritten = original
        .clone()
        .with_dst(addr("198.18.0.12:5300"))
        .to_bytes();
    let parsed = parse(&rewritten).unwrap();
    assert_eq!(
        (parsed.dst, parsed.ports),
        ("198.18.0.12".parse().unwrap(), Some((5353, 5300)))
    );
    assert_eq!(
        (parsed.ip_checksum_ok, parsed.l4_checksum_ok),
        (true, Some(true))
    );
    assert!(checksums_valid(&rewritten));

    let mut corrupt = rewritten.clone();
    corrupt[ETH_HLEN + 19] ^= 1; // last byte of the destination address
    let parsed = parse(&corrupt).unwrap();
    assert_eq!(
        (parsed.ip_checksum_ok, parsed.l4_checksum_ok),
        (false, Some(false))
    );
    assert!(!checksums_valid(&corrupt));
}

#[test]
fn udp_zero_checksum_is_kept_and_accepted() {
    let frame = Frame::udp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), b"x")
        .with_udp_zero_checksum()
        .to_bytes();
    let udp = ETH_HLEN + IPV4_MIN_HLEN;
    assert_eq!(frame[udp + 6..udp + 8], [0, 0]);
    assert_eq!(parse(&frame).unwrap().l4_checksum_ok, Some(true));
}

#[test]
fn fragments_and_truncations_are_recognised() {
    let frame = Frame::tcp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), tcp_flags::ACK)
        .with_fragment(true, 0)
        .to_bytes();
    let parsed = parse(&frame).unwrap();
    assert_eq!(parsed.flags_fragment, IPV4_MF);
    assert_eq!((parsed.ports, parsed.l4_checksum_ok), (None, None));
    assert!(
        !checksums_valid(&frame),
        "a fragment's checksum is not checkable"
    );

    let whole = Frame::tcp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), tcp_flags::ACK).to_bytes();
    assert!(parse(&whole[..ETH_HLEN + 10]).is_err());
    assert!(
        parse(&whole[..whole.len() - 1]).is_err(),
        "shorter than its total length"
    );
}

#[test]
fn icmp_errors_quote_the_packet_and_carry_a_valid_checksum() {
    let quoted = Frame::udp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), b"abc");
    let error = Frame::icmp_error(
        *addr("198.18.1.1:0").ip(),
        *addr("198.18.0.10:0").ip(),
        (icmp::DEST_UNREACH, icmp::PORT_UNREACH),
        &quoted,
        Some(28),
    )
    .to_bytes();
    let parsed = parse(&error).unwrap();
    assert_eq!(parsed.protocol, IPPROTO_ICMP);
    assert_eq!((parsed.ports, parsed.tcp_flags), (None, None));
    assert_eq!(
        (parsed.ip_checksum_ok, parsed.l4_checksum_ok),
        (true, Some(true))
    );
    assert!(checksums_valid(&error));
    let body = ETH_HLEN + IPV4_MIN_HLEN + ICMP_HLEN;
    assert_eq!(error[body..], quoted.to_bytes()[ETH_HLEN..ETH_HLEN + 28]);

    let mut corrupt = error.clone();
    *corrupt.last_mut().unwrap() ^= 1;
    assert_eq!(parse(&corrupt).unwrap().l4_checksum_ok, Some(false));
}

#[test]
fn frame_assertion_reports_the_first_difference() {
    let a = Frame::udp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), b"x").to_bytes();
    let mut b = a.clone();
    b[20] ^= 0xff;
    assert_frames_equal(&a, &a);
    assert_eq!(frame_difference(&a, &a), None);
    let panic = std::panic::catch_unwind(|| assert_frames_equal(&a, &b)).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("first at byte 20"), "{message}");
}

#[test]
fn a_datagram_cut_into_fragments_reassembles_in_any_order() {
    let datagram = Frame::udp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), &[9; 3000]);
    let mut fragments = datagram.to_fragments(1500);
    let words: Vec<u16> = fragments
        .iter()
        .map(|f| parse(f).unwrap().flags_fragment)
        .collect();
    assert_eq!(words, [IPV4_MF, IPV4_MF | 185, 370], "1480-byte pieces");
    assert!(fragments.iter().all(|f| f.len() <= ETH_HLEN + 1500));
    assert!(fragments.iter().all(|f| parse(f).unwrap().ip_checksum_ok));
    fragments.reverse();
    let whole = reassemble(&fragments);
    assert!(checksums_valid(&whole));
    assert_eq!(
        whole,
        datagram.with_fragment(false, 0).to_bytes(),
        "the datagram without don't-fragment"
    );
}

mod ipv6 {
    use std::net::SocketAddrV6;

    use lb_common::net::{ipv6_ext, tcp_flags, IPPROTO_TCP, IPPROTO_UDP};

    use crate::{parse6, Ext, Frame6};

    fn end(addr: &str, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(addr.parse().unwrap(), port, 0, 0)
    }

    #[test]
    fn tcp_and_udp_frames_parse_back_with_valid_checksums() {
        let (client, vip) = (end("2001:2::a", 40000), end("2001:2:1::1", 80));
        let tcp = Frame6::tcp(client, vip, tcp_flags::SYN).to_bytes();
        let parsed = parse6(&tcp).unwrap();
        assert_eq!((parsed.src, parsed.dst), (*client.ip(), *vip.ip()));
        assert_eq!((parsed.protocol, parsed.l4_offset), (IPPROTO_TCP, 14 + 40));
        assert_eq!(parsed.ports, Some((40000, 80)));
        assert_eq!(parsed.l4_checksum_ok, Some(true));
        let udp = Frame6::udp(client, vip, b"hello").to_bytes();
        assert_eq!(parse6(&udp).unwrap().l4_checksum_ok, Some(true));
        let mut flipped = udp.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(parse6(&flipped).unwrap().l4_checksum_ok, Some(false));
    }

    #[test]
    fn extension_headers_chain_to_the_transport() {
        let frame = Frame6::udp(end("2001:2::a", 1), end("2001:2::b", 2), b"x")
            .with_ext(vec![
                Ext::options(ipv6_ext::HOP_BY_HOP),
                Ext::routing(0),
                Ext::options(ipv6_ext::DESTINATION),
            ])
            .to_bytes();
        assert_eq!(frame[14 + 6], ipv6_ext::HOP_BY_HOP);
        let parsed = parse6(&frame).unwrap();
        assert_eq!(
            (parsed.protocol, parsed.l4_offset),
            (IPPROTO_UDP, 14 + 40 + 24)
        );
        assert_eq!(parsed.l4_checksum_ok, Some(true));
        assert_eq!(u16::from_be_bytes([frame[18], frame[19]]), 24 + 8 + 1);
    }

    #[test]
    fn a_zero_udp_checksum_is_invalid_over_ipv6() {
        let frame = Frame6::udp(end("2001:2::a", 1), end("2001:2::b", 2), b"x")
            .with_udp_zero_checksum()
            .to_bytes();
        assert_eq!(parse6(&frame).unwrap().l4_checksum_ok, Some(false));
    }
}
