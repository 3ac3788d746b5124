//! Ethernet / IPv4 / TCP|UDP parsing into the few fields the load balancer needs.

use lb_common::{Counter, IPPROTO_TCP, IPPROTO_UDP};

use crate::{context::Packet, error::Error};

/// Length of the Ethernet header; the IPv4 header starts here.
pub const L3_OFFSET: usize = 14;
/// Offset of the IPv4 header checksum.
pub const IPV4_CHECKSUM_OFFSET: usize = L3_OFFSET + 10;
/// Offset of the IPv4 source address (the destination follows it).
pub const IPV4_SRC_OFFSET: usize = L3_OFFSET + 12;
/// Offset of the IPv4 destination address.
pub const IPV4_DST_OFFSET: usize = L3_OFFSET + 16;

const ETHERTYPE_OFFSET: usize = 12;
/// EtherType of IPv4, as it sits in the frame.
pub const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
/// More-fragments flag and fragment offset, in the IPv4 flags/fragment-offset word.
pub const IPV4_FRAGMENT_MASK: u16 = 0x3fff;
pub const IPPROTO_ICMP: u8 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// One end of a flow: IPv4 address and port, both in network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: [u8; 4],
    pub port: [u8; 2],
}

/// The parsed headers of an IPv4 TCP or UDP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Flow {
    /// Offset of the TCP/UDP header in the frame (after IPv4 options, if any).
    pub l4_offset: usize,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
}

impl Ipv4Flow {
    /// Offset of the TCP or UDP checksum in the frame.
    #[inline(always)]
    pub fn l4_checksum_offset(&self) -> usize {
        self.l4_offset + if self.is_udp() { 6 } else { 16 }
    }

    /// Length of the fixed TCP or UDP header (TCP options not counted).
    #[inline(always)]
    pub fn l4_header_len(&self) -> usize {
        if self.is_udp() {
            UDP_HEADER_LEN
        } else {
            TCP_HEADER_LEN
        }
    }

    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.proto == IPPROTO_UDP
    }

    /// A TCP SYN without ACK: the first packet of a connection attempt.
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A TCP FIN or RST: the connection is ending.
    #[inline(always)]
    pub fn is_tcp_end(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}

/// Parses an Ethernet frame carrying an unfragmented IPv4 TCP or UDP packet.
///
/// Every error is a reason to leave the packet untouched.
#[inline(always)]
pub fn ipv4_flow<P: Packet>(pkt: &P) -> Result<Ipv4Flow, Error> {
    let ethertype: [u8; 2] = pkt
        .load(ETHERTYPE_OFFSET)
        .ok_or(Error::untouched(Counter::TruncatedEthernet))?;
    if ethertype != ETHERTYPE_IPV4 {
        return Err(Error::untouched(Counter::NotIpv4));
    }
    let ip: [u8; IPV4_MIN_HEADER_LEN] = pkt
        .load(L3_OFFSET)
        .ok_or(Error::untouched(Counter::TruncatedIpv4))?;
    if ip[0] >> 4 != 4 {
        return Err(Error::untouched(Counter::NotIpv4));
    }
    // Masked so the verifier (and the reader) sees 0..=60.
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if header_len < IPV4_MIN_HEADER_LEN || header_len > total_len {
        return Err(Error::untouched(Counter::BadIpv4HeaderLength));
    }
    let proto = ip[9];
    let l4_header_len = match proto {
        IPPROTO_TCP => TCP_HEADER_LEN,
        IPPROTO_UDP => UDP_HEADER_LEN,
        _ => return Err(Error::untouched(Counter::OtherProtocol)),
    };
    if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAGMENT_MASK != 0 {
        return Err(Error::untouched(Counter::Fragment));
    }
    let l4_offset = L3_OFFSET + header_len;
    // The options must be in the frame, the L4 header in the frame and in the IP packet.
    // (Presence is checked with 2-byte loads: see `context::Packet::load`.)
    if header_len > IPV4_MIN_HEADER_LEN && pkt.load::<2>(l4_offset - 2).is_none() {
        return Err(Error::untouched(Counter::TruncatedIpv4));
    }
    if header_len + l4_header_len > total_len
        || pkt.load::<2>(l4_offset + l4_header_len - 2).is_none()
    {
        return Err(Error::untouched(Counter::TruncatedL4));
    }
    let ports: [u8; 4] = pkt
        .load(l4_offset)
        .ok_or(Error::untouched(Counter::TruncatedL4))?;
    let tcp_flags = if proto == IPPROTO_TCP {
        let [_data_offset, flags]: [u8; 2] = pkt
            .load(l4_offset + 12)
            .ok_or(Error::untouched(Counter::TruncatedL4))?;
        flags
    } else {
        0
    };
    Ok(Ipv4Flow {
        l4_offset,
        proto,
        src: Endpoint {
            addr: [ip[12], ip[13], ip[14], ip[15]],
            port: [ports[0], ports[1]],
        },
        dst: Endpoint {
            addr: [ip[16], ip[17], ip[18], ip[19]],
            port: [ports[2], ports[3]],
        },
        tcp_flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{frame, FrameSpec, SlicePacket};

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
        assert!(flow.is_tcp_syn());
        assert_eq!(flow.l4_checksum_offset(), 50);
    }

    #[test]
    fn syn_ack_and_ack_are_not_syns() {
        for flags in [0x12, 0x10, 0x18] {
            let spec = FrameSpec {
                tcp_flags: flags,
                ..FrameSpec::tcp_syn()
            };
            assert!(
                !parse(&frame(&spec)).unwrap().is_tcp_syn(),
                "flags {flags:#x}"
            );
        }
    }

    #[test]
    fn parses_udp() {
        let flow = parse(&frame(&FrameSpec::udp())).unwrap();
        assert!(flow.is_udp());
        assert!(!flow.is_tcp_syn());
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
        assert!(flow.is_tcp_syn());
    }

    #[test]
    fn rejects_non_ipv4() {
        let mut arp = frame(&FrameSpec::udp());
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse(&arp), Err(Error::untouched(Counter::NotIpv4)));
        let mut v6_version = frame(&FrameSpec::udp());
        v6_version[14] = 0x65;
        assert_eq!(parse(&v6_version), Err(Error::untouched(Counter::NotIpv4)));
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

    #[test]
    fn rejects_fragments() {
        for frag in [0x2000u16, 0x0001, 0x2010, 0x1fff] {
            let mut f = frame(&FrameSpec::udp());
            f[20..22].copy_from_slice(&frag.to_be_bytes());
            assert_eq!(
                parse(&f),
                Err(Error::untouched(Counter::Fragment)),
                "frag field {frag:#x}"
            );
        }
        let mut dont_fragment = frame(&FrameSpec::udp());
        dont_fragment[20..22].copy_from_slice(&0x4000u16.to_be_bytes());
        assert!(parse(&dont_fragment).is_ok());
    }
}
