use super::*;
use crate::testing::{frame, FrameSpec, SlicePacket};
use lb_common::net::sctp_chunk;

fn parse(bytes: &[u8]) -> Result<Ipv4Flow, Error> {
    ipv4_flow(&SlicePacket::new(bytes.to_vec()))
}

#[test]
fn parses_tcp_syn() {
    let flow = parse(&frame(&FrameSpec::tcp_syn())).unwrap();
    assert_eq!(flow.l4_offset, 34);
    assert_eq!(flow.proto, IPPROTO_TCP);
    assert_eq!(flow.src.addr, [198, 18, 0, 10]);
    assert_eq!(flow.src.port, 40000u16.to_be_bytes());
    assert_eq!(flow.dst.addr, [198, 19, 0, 1]);
    assert_eq!(flow.dst.port, 80u16.to_be_bytes());
    assert!(flow.is_connection_start());
    assert_eq!(flow.l4_checksum_offset(), 50);
}

#[test]
fn syn_ack_and_ack_are_not_syns() {
    for flags in [
        tcp_flags::SYN | tcp_flags::ACK,
        tcp_flags::ACK,
        tcp_flags::PSH | tcp_flags::ACK,
    ] {
        let spec = FrameSpec {
            tcp_flags: flags,
            ..FrameSpec::tcp_syn()
        };
        assert!(
            !parse(&frame(&spec)).unwrap().is_connection_start(),
            "flags {flags:#x}"
        );
    }
}

#[test]
fn parses_udp() {
    let flow = parse(&frame(&FrameSpec::udp())).unwrap();
    assert!(flow.is_udp());
    assert!(!flow.is_connection_start());
    assert_eq!(flow.l4_checksum_offset(), 40);
}

#[test]
fn finds_l4_after_ipv4_options() {
    let spec = FrameSpec {
        ip_options: vec![1; 40],
        ..FrameSpec::tcp_syn()
    };
    let flow = parse(&frame(&spec)).unwrap();
    assert_eq!(flow.l4_offset, 14 + 60);
    assert_eq!(flow.src.port, 40000u16.to_be_bytes());
    assert_eq!(flow.dst.port, 80u16.to_be_bytes());
    assert!(flow.is_connection_start());
}

#[test]
fn rejects_non_ipv4() {
    let mut arp = frame(&FrameSpec::udp());
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(parse(&arp), Err(Error::untouched(Counter::NotIp)));
    let mut v6_version = frame(&FrameSpec::udp());
    v6_version[14] = 0x65;
    assert_eq!(parse(&v6_version), Err(Error::untouched(Counter::NotIp)));
}

#[test]
fn rejects_other_protocols() {
    let mut icmp = frame(&FrameSpec::udp());
    icmp[14 + 9] = 1;
    assert_eq!(parse(&icmp), Err(Error::untouched(Counter::OtherProtocol)));
}

#[test]
fn truncation_is_classified_by_layer() {
    let syn = frame(&FrameSpec::tcp_syn());
    assert_eq!(
        parse(&syn[..13]),
        Err(Error::untouched(Counter::TruncatedEthernet))
    );
    assert_eq!(
        parse(&syn[..14]),
        Err(Error::untouched(Counter::TruncatedIpv4))
    );
    assert_eq!(
        parse(&syn[..33]),
        Err(Error::untouched(Counter::TruncatedIpv4))
    );
    assert_eq!(
        parse(&syn[..34]),
        Err(Error::untouched(Counter::TruncatedL4))
    );
    assert_eq!(
        parse(&syn[..53]),
        Err(Error::untouched(Counter::TruncatedL4))
    );
    assert!(parse(&syn[..54]).is_ok());
    let udp = frame(&FrameSpec::udp());
    assert_eq!(
        parse(&udp[..41]),
        Err(Error::untouched(Counter::TruncatedL4))
    );
    let with_options = frame(&FrameSpec {
        ip_options: vec![1; 8],
        ..FrameSpec::udp()
    });
    assert_eq!(
        parse(&with_options[..14 + 27]),
        Err(Error::untouched(Counter::TruncatedIpv4))
    );
    assert_eq!(
        parse(&with_options[..14 + 28]),
        Err(Error::untouched(Counter::TruncatedL4))
    );
}

#[test]
fn l4_header_must_fit_the_ip_total_length() {
    // A 20-byte TCP header in a frame padded to 60 bytes, but IP total length says 30.
    let mut short = frame(&FrameSpec::tcp_syn());
    short[16..18].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(parse(&short), Err(Error::untouched(Counter::TruncatedL4)));
}

#[test]
fn rejects_bad_header_lengths() {
    for ihl in 0..5 {
        let mut bad = frame(&FrameSpec::tcp_syn());
        bad[14] = 0x40 | ihl;
        assert_eq!(
            parse(&bad),
            Err(Error::untouched(Counter::BadIpv4HeaderLength)),
            "ihl {ihl}"
        );
    }
    // IHL 15 (60 bytes) with a total length of 40.
    let mut beyond = frame(&FrameSpec::tcp_syn());
    beyond[14] = 0x4f;
    assert_eq!(
        parse(&beyond),
        Err(Error::untouched(Counter::BadIpv4HeaderLength))
    );
}

/// `frame` with the flags/fragment-offset word `word`.
fn with_fragment_word(mut frame: Vec<u8>, word: u16) -> Vec<u8> {
    frame[20..22].copy_from_slice(&word.to_be_bytes());
    frame
}

#[test]
fn fragments_are_left_to_fragment_flow() {
    for word in [0x2000u16, 0x0001, 0x2010, 0x1fff] {
        let f = with_fragment_word(frame(&FrameSpec::udp()), word);
        assert_eq!(
            parse(&f),
            Err(Error::untouched(Counter::Fragment)),
            "{word:#x}"
        );
    }
    let dont_fragment = with_fragment_word(frame(&FrameSpec::udp()), 0x4000);
    assert!(parse(&dont_fragment).is_ok());
}

#[test]
fn a_total_length_beyond_the_frame_is_truncated_and_a_trailer_is_not_the_packet() {
    let syn = frame(&FrameSpec::tcp_syn());
    let mut long = syn.clone();
    long[16..18].copy_from_slice(&41u16.to_be_bytes());
    assert_eq!(parse(&long), Err(Error::untouched(Counter::TruncatedIpv4)));
    let mut trailer = syn.clone();
    trailer.extend_from_slice(&[0xa5; 12]);
    assert_eq!(parse(&trailer), parse(&syn));
}

#[test]
fn tcp_data_offsets_below_five_words_or_beyond_the_packet_are_refused() {
    let syn = frame(&FrameSpec::tcp_syn());
    let with_data_offset = |words: u8| {
        let mut f = syn.clone();
        f[14 + 20 + 12] = words << 4;
        f
    };
    for words in 0..5 {
        assert_eq!(
            parse(&with_data_offset(words)),
            Err(Error::untouched(Counter::BadL4Length)),
            "data offset {words}"
        );
    }
    // 24 bytes of header in a 20-byte segment, though the frame has padding after it.
    let mut beyond = with_data_offset(6);
    beyond.extend_from_slice(&[0; 8]);
    assert_eq!(parse(&beyond), Err(Error::untouched(Counter::TruncatedL4)));
    assert!(parse(&with_data_offset(5)).is_ok());
}

#[test]
fn a_udp_length_other_than_the_ip_payload_is_refused() {
    let udp = frame(&FrameSpec::udp());
    let payload = (udp.len() - 14 - 20) as u16;
    for len in [0, 7, 8, payload - 1, payload + 1, 0xffff] {
        let mut f = udp.clone();
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            parse(&f),
            Err(Error::untouched(Counter::BadL4Length)),
            "UDP length {len}"
        );
    }
    assert!(parse(&udp).is_ok());
}

#[test]
fn the_header_checksum_is_verified_with_options() {
    for options in [vec![], vec![1; 8], vec![1; 40]] {
        let spec = FrameSpec {
            ip_options: options,
            ..FrameSpec::tcp_syn()
        };
        let good = SlicePacket::new(frame(&spec));
        let flow = ipv4_flow(&good).unwrap();
        assert!(ipv4_checksum_valid(&good));
        // The header's last byte: the destination address, or the last option word.
        let mut bad = good.bytes.clone();
        bad[flow.l4_offset - 1] ^= 0x01;
        assert!(!ipv4_checksum_valid(&SlicePacket::new(bad)));
    }
}

#[test]
fn a_first_fragment_has_ports_and_a_later_one_none() {
    for (word, piece) in [
        (0x2000u16, Piece::First),
        (0x0001, Piece::Later),
        (0x2010, Piece::Later),
        (0x1fff, Piece::Later),
    ] {
        let f = with_fragment_word(frame(&FrameSpec::udp()), word);
        let (flow, parsed) = fragment_flow(&SlicePacket::new(f)).unwrap();
        assert_eq!(parsed, piece, "{word:#x}");
        assert_eq!(flow.l4_offset, 34);
        let ports = if piece == Piece::Later {
            [[0; 2]; 2]
        } else {
            [40000u16.to_be_bytes(), 80u16.to_be_bytes()]
        };
        assert_eq!([flow.src.port, flow.dst.port], ports, "{word:#x}");
    }
}

#[test]
fn a_later_fragment_needs_no_l4_header_but_a_first_one_does() {
    let mut later = with_fragment_word(frame(&FrameSpec::udp()), 0x0001);
    later.truncate(34);
    later[16..18].copy_from_slice(&20u16.to_be_bytes());
    let piece = |bytes: &[u8]| fragment_flow(&SlicePacket::new(bytes.to_vec())).map(|(_, p)| p);
    assert_eq!(piece(&later), Ok(Piece::Later));
    let first = with_fragment_word(later, 0x2000);
    assert_eq!(piece(&first), Err(Error::untouched(Counter::TruncatedL4)));
}

#[test]
fn sctp_chunks_stand_for_tcp_flags() {
    for (chunk, start, end) in [
        (sctp_chunk::INIT, true, false),
        (sctp_chunk::INIT_ACK, false, false),
        (0, false, false), // DATA
        (sctp_chunk::ABORT, false, true),
        (sctp_chunk::SHUTDOWN_COMPLETE, false, true),
    ] {
        let spec = FrameSpec {
            sctp_chunk: chunk,
            ..FrameSpec::sctp_init()
        };
        let flow = parse(&frame(&spec)).unwrap();
        assert!(flow.is_sctp());
        assert_eq!(flow.l4_len, 12 + 20, "chunk {chunk}");
        assert_eq!(flow.l4_checksum_offset(), 34 + 8);
        assert_eq!(flow.is_connection_start(), start, "chunk {chunk}");
        assert_eq!(flow.is_connection_end(), end, "chunk {chunk}");
    }
}

#[test]
fn sctp_without_a_chunk_header_is_truncated() {
    let mut bytes = frame(&FrameSpec::sctp_init());
    bytes.truncate(14 + 20 + 12 + 2);
    bytes[14 + 3] = (20 + 12 + 2) as u8; // IPv4 total length
    assert_eq!(parse(&bytes).unwrap_err().reason, Counter::TruncatedL4);
}
