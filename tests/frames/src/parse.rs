//! Frames read back from bytes, with their checksums verified.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use lb_common::net::{
    ipv6_ext, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HLEN, ETH_TYPE_OFFSET, ICMP_HLEN, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPV4_DST, IPV4_FRAGMENT_MASK,
    IPV4_MIN_HLEN, IPV4_SRC, IPV6_DST, IPV6_HLEN, IPV6_SRC, SCTP_CHECKSUM, SCTP_HLEN, TCP_HLEN,
    UDP_CHECKSUM, UDP_HLEN,
};

use crate::{crc32c, internet_checksum, l4_checksum, l4_checksum6};

/// A frame as parsed back from bytes, with its checksums verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub ethertype: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// IPv4 header length in bytes.
    pub header_len: usize,
    pub flags_fragment: u16,
    /// Transport ports when the frame carries a complete TCP/UDP/SCTP header and is no fragment.
    pub ports: Option<(u16, u16)>,
    /// TCP flags, for TCP.
    pub tcp_flags: Option<u8>,
    pub ip_checksum_ok: bool,
    /// TCP/UDP/SCTP/ICMP checksum validity when checkable (a complete, unfragmented header of one
    /// of them). UDP checksum 0 counts as valid.
    pub l4_checksum_ok: Option<bool>,
}

/// Why [`parse`] refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError(&'static str);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid frame: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

/// Parses an Ethernet/IPv4 frame and verifies its checksums.
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    if frame.len() < ETH_HLEN + IPV4_MIN_HLEN {
        return Err(ParseError("shorter than Ethernet + IPv4 headers"));
    }
    let ethertype = u16::from_be_bytes([frame[ETH_TYPE_OFFSET], frame[ETH_TYPE_OFFSET + 1]]);
    if ethertype != ETHERTYPE_IPV4 {
        return Err(ParseError("not IPv4"));
    }
    let ip = &frame[ETH_HLEN..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if header_len < IPV4_MIN_HLEN || header_len > total_len || total_len > ip.len() {
        return Err(ParseError("bad IPv4 header or total length"));
    }
    let octets = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let (src, dst, protocol) = (octets(IPV4_SRC), octets(IPV4_DST), ip[9]);
    let flags_fragment = u16::from_be_bytes([ip[6], ip[7]]);
    let segment = &ip[header_len..total_len];
    let is_fragment = flags_fragment & IPV4_FRAGMENT_MASK != 0;
    let min_len = match protocol {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        IPPROTO_SCTP => SCTP_HLEN,
        IPPROTO_ICMP => ICMP_HLEN,
        _ => usize::MAX,
    };
    let complete = !is_fragment && segment.len() >= min_len;
    let has_ports = complete && protocol != IPPROTO_ICMP;
    let ports = has_ports.then(|| {
        (
            u16::from_be_bytes([segment[0], segment[1]]),
            u16::from_be_bytes([segment[2], segment[3]]),
        )
    });
    let l4_checksum_ok = complete.then(|| match protocol {
        IPPROTO_ICMP => internet_checksum(segment) == 0,
        IPPROTO_UDP if segment[UDP_CHECKSUM..UDP_CHECKSUM + 2] == [0, 0] => true,
        IPPROTO_SCTP => sctp_checksum_ok(segment),
        _ => l4_checksum(src, dst, protocol, segment) == 0,
    });
    Ok(Parsed {
        ethertype,
        src,
        dst,
        protocol,
        header_len,
        flags_fragment,
        ports,
        tcp_flags: (complete && protocol == IPPROTO_TCP).then(|| segment[13]),
        ip_checksum_ok: internet_checksum(&ip[..header_len]) == 0,
        l4_checksum_ok,
    })
}

/// Whether an SCTP packet's checksum field holds the CRC32c of the packet with it zeroed.
fn sctp_checksum_ok(segment: &[u8]) -> bool {
    let mut zeroed = segment.to_vec();
    zeroed[SCTP_CHECKSUM..SCTP_CHECKSUM + 4].fill(0);
    segment[SCTP_CHECKSUM..SCTP_CHECKSUM + 4] == crc32c(&zeroed).to_le_bytes()
}

/// Whether `frame` is a complete IPv4 packet whose header checksum and TCP, UDP, SCTP or ICMP
/// checksum verify (a UDP checksum of 0 means none and verifies; a fragment, a cut segment or
/// another protocol does not), or a complete IPv6 packet whose TCP, UDP, SCTP or ICMPv6 checksum
/// verifies.
pub fn checksums_valid(frame: &[u8]) -> bool {
    if frame.get(ETH_TYPE_OFFSET..ETH_TYPE_OFFSET + 2) == Some(&ETHERTYPE_IPV6.to_be_bytes()) {
        return parse6(frame).is_ok_and(|p| p.l4_checksum_ok == Some(true));
    }
    parse(frame).is_ok_and(|p| p.ip_checksum_ok && p.l4_checksum_ok == Some(true))
}

/// An IPv6 frame as parsed back from bytes, with its transport checksum verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The transport protocol after the extension headers.
    pub protocol: u8,
    /// Offset of the transport header in the frame.
    pub l4_offset: usize,
    /// Transport ports of a complete TCP/UDP/SCTP header.
    pub ports: Option<(u16, u16)>,
    /// TCP, UDP, SCTP or ICMPv6 checksum validity (UDP checksum 0 is invalid over IPv6).
    pub l4_checksum_ok: Option<bool>,
}

/// Parses an Ethernet/IPv6 frame (walking hop-by-hop, routing, destination options and
/// fragment headers) and verifies its transport checksum.
pub fn parse6(frame: &[u8]) -> Result<Parsed6, ParseError> {
    if frame.len() < ETH_HLEN + IPV6_HLEN {
        return Err(ParseError("shorter than Ethernet + IPv6 headers"));
    }
    let ethertype = u16::from_be_bytes([frame[ETH_TYPE_OFFSET], frame[ETH_TYPE_OFFSET + 1]]);
    if ethertype != ETHERTYPE_IPV6 || frame[ETH_HLEN] >> 4 != 6 {
        return Err(ParseError("not IPv6"));
    }
    let ip = &frame[ETH_HLEN..];
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if IPV6_HLEN + payload_len > ip.len() {
        return Err(ParseError("IPv6 payload length beyond the frame"));
    }
    let ip = &ip[..IPV6_HLEN + payload_len];
    let octets = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap());
    let (src, dst) = (octets(IPV6_SRC), octets(IPV6_DST));
    let (mut protocol, mut at) = (ip[6], IPV6_HLEN);
    while matches!(
        protocol,
        ipv6_ext::HOP_BY_HOP | ipv6_ext::ROUTING | ipv6_ext::DESTINATION | ipv6_ext::FRAGMENT
    ) {
        let header = ip
            .get(at..at + 8)
            .ok_or(ParseError("cut extension header"))?;
        let len = match protocol {
            ipv6_ext::FRAGMENT => 8,
            _ => (usize::from(header[1]) + 1) * 8,
        };
        (protocol, at) = (header[0], at + len);
    }
    let segment = ip.get(at..).ok_or(ParseError("cut extension header"))?;
    let min_len = match protocol {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        IPPROTO_SCTP => SCTP_HLEN,
        IPPROTO_ICMPV6 => ICMP_HLEN,
        _ => usize::MAX,
    };
    let complete = segment.len() >= min_len;
    let ports = (complete && protocol != IPPROTO_ICMPV6).then(|| {
        (
            u16::from_be_bytes([segment[0], segment[1]]),
            u16::from_be_bytes([segment[2], segment[3]]),
        )
    });
    let l4_checksum_ok = complete.then(|| match protocol {
        IPPROTO_SCTP => sctp_checksum_ok(segment),
        _ => l4_checksum6(src, dst, protocol, segment) == 0,
    });
    Ok(Parsed6 {
        src,
        dst,
        protocol,
        l4_offset: ETH_HLEN + at,
        ports,
        l4_checksum_ok,
    })
}
