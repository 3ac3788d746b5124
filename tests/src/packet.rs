//! Ethernet/IPv4/TCP/UDP frames for packet tests: a builder that computes lengths and
//! checksums from scratch (so expected output frames are built independently of the data
//! path's incremental updates), a parser that verifies checksums, and assertion helpers.
//!
//! Malformed frames (truncated, bad IHL, ...) are made by building a valid frame and then
//! cutting or patching its bytes at the offsets below.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use crate::{Error, Result};

/// Ethernet header length; the IPv4 header starts here.
pub const ETH_HLEN: usize = 14;
/// Minimum (option-less) IPv4 header length.
pub const IPV4_HLEN: usize = 20;
/// TCP header length without options.
pub const TCP_HLEN: usize = 20;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// IPv4 "don't fragment" flag in [`Ipv4::flags_fragment`].
pub const IP_DF: u16 = 0x4000;
/// IPv4 "more fragments" flag in [`Ipv4::flags_fragment`].
pub const IP_MF: u16 = 0x2000;
/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Source MAC of built frames (a locally administered address).
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// Destination MAC of built frames.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A frame to build: Ethernet + IPv4 + a transport payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ethertype: u16,
    pub ip: Ipv4,
    pub l4: L4,
}

/// IPv4 header fields; length, protocol and checksum are computed when built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub id: u16,
    pub ttl: u8,
    /// Flags ([`IP_DF`], [`IP_MF`]) and the fragment offset in 8-byte units.
    pub flags_fragment: u16,
    /// Options, padded with zeros (End of Options) to a multiple of 4 bytes when built.
    pub options: Vec<u8>,
}

/// The transport part of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp(Tcp),
    Udp(Udp),
    /// Any other protocol, or a later fragment's bytes, copied verbatim.
    Raw {
        protocol: u8,
        bytes: Vec<u8>,
    },
}

/// TCP header fields; data offset and checksum are computed when built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// [`tcp_flags`] bits.
    pub flags: u8,
    pub window: u16,
    /// Options, padded with zeros to a multiple of 4 bytes when built.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

/// UDP header fields; length and checksum are computed when built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp {
    pub src_port: u16,
    pub dst_port: u16,
    /// Send checksum 0 ("not computed", allowed for UDP over IPv4).
    pub zero_checksum: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A TCP segment `src -> dst` with the given [`tcp_flags`] and no payload.
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Frame {
        Frame::ipv4(
            src,
            dst,
            L4::Tcp(Tcp {
                src_port: src.port(),
                dst_port: dst.port(),
                seq: 0x1000_0000,
                ack: if flags & tcp_flags::ACK != 0 {
                    0x2000_0000
                } else {
                    0
                },
                flags,
                window: 64_240,
                options: Vec::new(),
                payload: Vec::new(),
            }),
        )
    }

    /// A UDP datagram `src -> dst` carrying `payload`, with a computed checksum.
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Frame {
        Frame::ipv4(
            src,
            dst,
            L4::Udp(Udp {
                src_port: src.port(),
                dst_port: dst.port(),
                zero_checksum: false,
                payload: payload.to_vec(),
            }),
        )
    }

    /// An ICMP error `src -> dst` of `icmp_type`/`code` (next-hop MTU 1400 in the unused
    /// field) quoting `quoted`'s IPv4 packet, cut to `quote_len` bytes when given.
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        (icmp_type, code): (u8, u8),
        quoted: &Frame,
        quote_len: Option<usize>,
    ) -> Frame {
        let packet = quoted.to_bytes().split_off(ETH_HLEN);
        let quote = &packet[..quote_len.unwrap_or(packet.len())];
        let mut bytes = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0x78];
        bytes.extend_from_slice(quote);
        let checksum = internet_checksum(&bytes);
        bytes[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut frame = Frame::ipv4(
            SocketAddrV4::new(src, 0),
            SocketAddrV4::new(dst, 0),
            L4::Raw {
                protocol: IPPROTO_ICMP,
                bytes,
            },
        );
        frame.ip.tos = 0xc0;
        frame.ip.flags_fragment = 0;
        frame
    }

    fn ipv4(src: SocketAddrV4, dst: SocketAddrV4, l4: L4) -> Frame {
        Frame {
            dst_mac: DST_MAC,
            src_mac: SRC_MAC,
            ethertype: ETHERTYPE_IPV4,
            ip: Ipv4 {
                src: *src.ip(),
                dst: *dst.ip(),
                tos: 0,
                id: 0x4242,
                ttl: 64,
                flags_fragment: IP_DF,
                options: Vec::new(),
            },
            l4,
        }
    }

    /// Source address and port (port 0 for [`L4::Raw`]).
    pub fn src(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip.src, self.ports().0)
    }

    /// Destination address and port (port 0 for [`L4::Raw`]).
    pub fn dst(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip.dst, self.ports().1)
    }

    fn ports(&self) -> (u16, u16) {
        match &self.l4 {
            L4::Tcp(t) => (t.src_port, t.dst_port),
            L4::Udp(u) => (u.src_port, u.dst_port),
            L4::Raw { .. } => (0, 0),
        }
    }

    /// The same frame with source address and port replaced (what a reverse NAT produces).
    pub fn with_src(mut self, src: SocketAddrV4) -> Frame {
        self.ip.src = *src.ip();
        match &mut self.l4 {
            L4::Tcp(t) => t.src_port = src.port(),
            L4::Udp(u) => u.src_port = src.port(),
            L4::Raw { .. } => {}
        }
        self
    }

    /// The same frame with destination address and port replaced (what a DNAT produces).
    pub fn with_dst(mut self, dst: SocketAddrV4) -> Frame {
        self.ip.dst = *dst.ip();
        match &mut self.l4 {
            L4::Tcp(t) => t.dst_port = dst.port(),
            L4::Udp(u) => u.dst_port = dst.port(),
            L4::Raw { .. } => {}
        }
        self
    }

    /// Replaces the TCP or UDP payload (no effect on [`L4::Raw`]).
    pub fn with_payload(mut self, payload: &[u8]) -> Frame {
        match &mut self.l4 {
            L4::Tcp(t) => t.payload = payload.to_vec(),
            L4::Udp(u) => u.payload = payload.to_vec(),
            L4::Raw { .. } => {}
        }
        self
    }

    /// Sets IPv4 options (padded to a multiple of 4 bytes).
    pub fn with_ip_options(mut self, options: &[u8]) -> Frame {
        self.ip.options = options.to_vec();
        self
    }

    /// Sets TCP options (padded to a multiple of 4 bytes; no effect on other protocols).
    pub fn with_tcp_options(mut self, options: &[u8]) -> Frame {
        if let L4::Tcp(t) = &mut self.l4 {
            t.options = options.to_vec();
        }
        self
    }

    /// Makes the frame an IPv4 fragment: MF flag and offset in 8-byte units.
    pub fn with_fragment(mut self, more_fragments: bool, offset_units: u16) -> Frame {
        self.ip.flags_fragment = (offset_units & 0x1fff) | if more_fragments { IP_MF } else { 0 };
        self
    }

    /// Replaces the transport part, e.g. with [`L4::Raw`] for another protocol or a later
    /// fragment's bytes.
    pub fn with_l4(mut self, l4: L4) -> Frame {
        self.l4 = l4;
        self
    }

    /// Sends UDP checksum 0 (not computed); no effect on other protocols.
    pub fn with_udp_zero_checksum(mut self) -> Frame {
        if let L4::Udp(u) = &mut self.l4 {
            u.zero_checksum = true;
        }
        self
    }

    /// Serialises the frame with correct lengths and freshly computed checksums.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (protocol, l4) = self.l4.to_bytes(self.ip.src, self.ip.dst);
        let mut options = self.ip.options.clone();
        options.resize(options.len().next_multiple_of(4), 0);
        let header_len = IPV4_HLEN + options.len();
        let total_len = u16::try_from(header_len + l4.len()).expect("IPv4 packet over 64 KiB");
        let mut ip = Vec::with_capacity(header_len);
        ip.push(0x40 | (header_len / 4) as u8);
        ip.push(self.ip.tos);
        ip.extend_from_slice(&total_len.to_be_bytes());
        ip.extend_from_slice(&self.ip.id.to_be_bytes());
        ip.extend_from_slice(&self.ip.flags_fragment.to_be_bytes());
        ip.extend_from_slice(&[self.ip.ttl, protocol, 0, 0]);
        ip.extend_from_slice(&self.ip.src.octets());
        ip.extend_from_slice(&self.ip.dst.octets());
        ip.extend_from_slice(&options);
        let checksum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_HLEN + ip.len() + l4.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&self.ethertype.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

impl L4 {
    /// Protocol number and serialised bytes, checksummed with the given pseudo-header addresses.
    fn to_bytes(&self, src: Ipv4Addr, dst: Ipv4Addr) -> (u8, Vec<u8>) {
        match self {
            L4::Tcp(t) => {
                let mut options = t.options.clone();
                options.resize(options.len().next_multiple_of(4), 0);
                let header_len = TCP_HLEN + options.len();
                let mut b = Vec::with_capacity(header_len + t.payload.len());
                b.extend_from_slice(&t.src_port.to_be_bytes());
                b.extend_from_slice(&t.dst_port.to_be_bytes());
                b.extend_from_slice(&t.seq.to_be_bytes());
                b.extend_from_slice(&t.ack.to_be_bytes());
                b.extend_from_slice(&[((header_len / 4) as u8) << 4, t.flags]);
                b.extend_from_slice(&t.window.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                b.extend_from_slice(&options);
                b.extend_from_slice(&t.payload);
                let checksum = l4_checksum(src, dst, IPPROTO_TCP, &b);
                b[16..18].copy_from_slice(&checksum.to_be_bytes());
                (IPPROTO_TCP, b)
            }
            L4::Udp(u) => {
                let len = u16::try_from(UDP_HLEN + u.payload.len()).expect("UDP over 64 KiB");
                let mut b = Vec::with_capacity(len as usize);
                b.extend_from_slice(&u.src_port.to_be_bytes());
                b.extend_from_slice(&u.dst_port.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&u.payload);
                if !u.zero_checksum {
                    let checksum = match l4_checksum(src, dst, IPPROTO_UDP, &b) {
                        0 => 0xffff,
                        sum => sum,
                    };
                    b[6..8].copy_from_slice(&checksum.to_be_bytes());
                }
                (IPPROTO_UDP, b)
            }
            L4::Raw { protocol, bytes } => (*protocol, bytes.clone()),
        }
    }
}

/// The RFC 1071 internet checksum of `data` (odd length padded with a zero byte).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP/UDP checksum of `segment` (its checksum field zeroed or, to verify, as received) with
/// the IPv4 pseudo-header; a received segment is valid when this returns 0.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(12 + segment.len());
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&[0, protocol]);
    data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    data.extend_from_slice(segment);
    internet_checksum(&data)
}

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
    /// Transport ports when the frame carries a complete TCP/UDP header and is no fragment.
    pub ports: Option<(u16, u16)>,
    /// TCP flags, for TCP.
    pub tcp_flags: Option<u8>,
    pub ip_checksum_ok: bool,
    /// TCP/UDP checksum validity when checkable (complete, unfragmented TCP/UDP). UDP checksum
    /// 0 counts as valid.
    pub l4_checksum_ok: Option<bool>,
}

/// Parses an Ethernet/IPv4 frame and verifies its checksums.
pub fn parse(frame: &[u8]) -> Result<Parsed> {
    let invalid = |reason: &str| Error::Invalid {
        what: "frame".into(),
        reason: reason.into(),
    };
    if frame.len() < ETH_HLEN + IPV4_HLEN {
        return Err(invalid("shorter than Ethernet + IPv4 headers"));
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype != ETHERTYPE_IPV4 {
        return Err(invalid("not IPv4"));
    }
    let ip = &frame[ETH_HLEN..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if header_len < IPV4_HLEN || header_len > total_len || total_len > ip.len() {
        return Err(invalid("bad IPv4 header or total length"));
    }
    let octets = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let (src, dst, protocol) = (octets(12), octets(16), ip[9]);
    let flags_fragment = u16::from_be_bytes([ip[6], ip[7]]);
    let segment = &ip[header_len..total_len];
    let is_fragment = flags_fragment & (IP_MF | 0x1fff) != 0;
    let min_len = match protocol {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        _ => usize::MAX,
    };
    let complete = !is_fragment && segment.len() >= min_len;
    let ports = complete.then(|| {
        (
            u16::from_be_bytes([segment[0], segment[1]]),
            u16::from_be_bytes([segment[2], segment[3]]),
        )
    });
    let udp_unchecked = protocol == IPPROTO_UDP && complete && segment[6..8] == [0, 0];
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
        l4_checksum_ok: complete
            .then(|| udp_unchecked || l4_checksum(src, dst, protocol, segment) == 0),
    })
}

/// One line describing a frame, for assertion messages.
pub fn describe(frame: &[u8]) -> String {
    match parse(frame) {
        Ok(p) => {
            let proto = match p.protocol {
                IPPROTO_TCP => "TCP",
                IPPROTO_UDP => "UDP",
                _ => "proto",
            };
            let (sport, dport) = p.ports.unwrap_or_default();
            format!(
                "{}:{sport} -> {}:{dport} {proto}({}) flags={:?} frag={:#06x} ip_csum_ok={} \
                 l4_csum_ok={:?} len={}",
                p.src,
                p.dst,
                p.protocol,
                p.tcp_flags,
                p.flags_fragment,
                p.ip_checksum_ok,
                p.l4_checksum_ok,
                frame.len()
            )
        }
        Err(err) => format!("unparsed ({err}), len={}", frame.len()),
    }
}

/// Hex dump with offsets, 16 bytes per line.
pub fn hex(frame: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in frame.chunks(16).enumerate() {
        let _ = write!(out, "{:04x}:", i * 16);
        for b in line {
            let _ = write!(out, " {b:02x}");
        }
        out.push('\n');
    }
    out
}

/// Panics with both frames described and dumped unless they are byte-for-byte equal.
#[track_caller]
pub fn assert_frames_equal(actual: &[u8], expected: &[u8]) {
    if actual == expected {
        return;
    }
    let first_difference = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "frames differ (first at byte {first_difference})\n  actual:   {}\n  expected: {}\nactual:\n\
         {}expected:\n{}",
        describe(actual),
        describe(expected),
        hex(actual),
        hex(expected)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn hex_string(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn checksum_matches_rfc1071_and_a_known_ipv4_header() {
        // RFC 1071 section 3 example: the one's complement sum is 0xddf2.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
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
        assert_eq!(frame.len(), ETH_HLEN + IPV4_HLEN + TCP_HLEN + 4);
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

        let mut corrupt = rewritten.clone();
        corrupt[ETH_HLEN + 19] ^= 1; // last byte of the destination address
        let parsed = parse(&corrupt).unwrap();
        assert_eq!(
            (parsed.ip_checksum_ok, parsed.l4_checksum_ok),
            (false, Some(false))
        );
    }

    #[test]
    fn udp_zero_checksum_is_kept_and_accepted() {
        let frame = Frame::udp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), b"x")
            .with_udp_zero_checksum()
            .to_bytes();
        let udp = ETH_HLEN + IPV4_HLEN;
        assert_eq!(frame[udp + 6..udp + 8], [0, 0]);
        assert_eq!(parse(&frame).unwrap().l4_checksum_ok, Some(true));
    }

    #[test]
    fn fragments_and_truncations_are_recognised() {
        let frame = Frame::tcp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), tcp_flags::ACK)
            .with_fragment(true, 0)
            .to_bytes();
        let parsed = parse(&frame).unwrap();
        assert_eq!(parsed.flags_fragment, IP_MF);
        assert_eq!((parsed.ports, parsed.l4_checksum_ok), (None, None));

        let whole =
            Frame::tcp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), tcp_flags::ACK).to_bytes();
        assert!(parse(&whole[..ETH_HLEN + 10]).is_err());
        assert!(
            parse(&whole[..whole.len() - 1]).is_err(),
            "shorter than its total length"
        );
    }

    #[test]
    fn frame_assertion_reports_the_first_difference() {
        let a = Frame::udp(addr("198.18.0.10:1"), addr("198.19.0.1:2"), b"x").to_bytes();
        let mut b = a.clone();
        b[20] ^= 0xff;
        assert_frames_equal(&a, &a);
        let panic = std::panic::catch_unwind(|| assert_frames_equal(&a, &b)).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("first at byte 20"), "{message}");
    }
}
