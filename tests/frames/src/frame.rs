//! The frame builder: Ethernet + IPv4 (with options, as a fragment) + TCP, UDP, SCTP, ICMP or
//! raw bytes, serialised with correct lengths and freshly computed checksums.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use lb_common::net::{
    icmp, sctp_chunk, tcp_flags, ETHERTYPE_IPV4, ETH_HLEN, ICMP_CHECKSUM, ICMP_HLEN, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPV4_CHECKSUM, IPV4_DF, IPV4_MF,
    IPV4_MIN_HLEN, IPV4_OFFSET_MASK, SCTP_CHECKSUM, TCP_CHECKSUM, TCP_HLEN, UDP_CHECKSUM, UDP_HLEN,
};

use crate::{crc32c, internet_checksum, l4_checksum, l4_checksum6};

/// Source MAC of built frames (a locally administered address).
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// Destination MAC of built frames.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Type of service of ICMP messages: precedence "internetwork control", as hosts send them.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// A frame to build: Ethernet + IPv4 + a transport part.
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
    /// Flags ([`IPV4_DF`], [`IPV4_MF`]) and the fragment offset in 8-byte units.
    pub flags_fragment: u16,
    /// Options, padded with zeros (End of Options) to a multiple of 4 bytes when built.
    pub options: Vec<u8>,
}

/// The transport part of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp(Tcp),
    Udp(Udp),
    Sctp(Sctp),
    Icmp(Icmp),
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

/// SCTP common header fields and one chunk; the CRC32c checksum is computed when built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sctp {
    pub src_port: u16,
    pub dst_port: u16,
    pub verification_tag: u32,
    /// The first chunk's type (`lb_common::net::sctp_chunk`).
    pub chunk_type: u8,
    /// The chunk's value, padded with zeros to a multiple of 4 bytes when built.
    pub chunk_value: Vec<u8>,
    /// Send checksum 0, as a sender whose device computes the CRC leaves the field
    /// (`CHECKSUM_PARTIAL`).
    pub offloaded_checksum: bool,
}

/// ICMP message fields; the checksum is computed when built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub icmp_type: u8,
    pub code: u8,
    /// The four bytes after the checksum (unused, next-hop MTU, echo id and sequence, ...).
    pub rest: [u8; 4],
    /// What follows the header: for errors, the quoted IPv4 packet.
    pub body: Vec<u8>,
}

impl Icmp {
    /// An error of `icmp_type`/`code` (next-hop MTU 1400 in the unused field) quoting `quoted`,
    /// an IPv4 packet or its start.
    pub fn error((icmp_type, code): (u8, u8), quoted: Vec<u8>) -> Icmp {
        Icmp {
            icmp_type,
            code,
            rest: [0, 0, 0x05, 0x78],
            body: quoted,
        }
    }
}

impl Frame {
    /// A TCP segment `src -> dst` with the given [`tcp_flags`] and no payload.
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Frame {
        Frame::ipv4(src, dst, L4::tcp(src.port(), dst.port(), flags))
    }

    /// A UDP datagram `src -> dst` carrying `payload`, with a computed checksum.
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Frame {
        Frame::ipv4(src, dst, L4::udp(src.port(), dst.port(), payload))
    }

    /// An SCTP packet `src -> dst` whose one chunk is of `chunk_type`.
    pub fn sctp(src: SocketAddrV4, dst: SocketAddrV4, chunk_type: u8) -> Frame {
        Frame::ipv4(src, dst, L4::sctp(src.port(), dst.port(), chunk_type))
    }

    /// An ICMP message `src -> dst`, sent as hosts send them: TOS "internetwork control", no
    /// fragmentation flags.
    pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, icmp: Icmp) -> Frame {
        let mut frame = Frame::ipv4(
            SocketAddrV4::new(src, 0),
            SocketAddrV4::new(dst, 0),
            L4::Icmp(icmp),
        );
        frame.ip.tos = TOS_INTERNETWORK_CONTROL;
        frame.ip.flags_fragment = 0;
        frame
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
        let mut body = quoted.to_bytes().split_off(ETH_HLEN);
        body.truncate(quote_len.unwrap_or(body.len()));
        Frame::icmp(src, dst, Icmp::error((icmp_type, code), body))
    }

    /// The ICMP port unreachable a frontend answers `original` with, built from the RFC:
    /// Ethernet addresses swapped, IPv4 from the destination back to the sender (TOS 0xc0,
    /// TTL 64, no fragmentation, id 0), ICMP type 3 code 3 quoting the original IPv4 header
    /// and `quoted_l4` bytes of its payload.
    pub fn port_unreachable_reply(original: &[u8], quoted_l4: usize) -> Vec<u8> {
        let sent = crate::parse(original).expect("a valid frame");
        let quoted = &original[ETH_HLEN..ETH_HLEN + sent.header_len + quoted_l4];
        let icmp = Icmp {
            icmp_type: icmp::DEST_UNREACH,
            code: icmp::PORT_UNREACH,
            rest: [0; 4],
            body: quoted.to_vec(),
        };
        let mut reply = Frame::icmp(sent.dst, sent.src, icmp);
        (reply.dst_mac, reply.src_mac) = (SRC_MAC, DST_MAC);
        reply.ip.id = 0;
        reply.to_bytes()
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
                flags_fragment: IPV4_DF,
                options: Vec::new(),
            },
            l4,
        }
    }

    /// Source address and port (port 0 without TCP or UDP).
    pub fn src(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip.src, self.ports().0)
    }

    /// Destination address and port (port 0 without TCP or UDP).
    pub fn dst(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip.dst, self.ports().1)
    }

    fn ports(&self) -> (u16, u16) {
        self.l4.ports()
    }

    /// The same frame with source address and port replaced (what a reverse NAT produces).
    pub fn with_src(mut self, src: SocketAddrV4) -> Frame {
        self.ip.src = *src.ip();
        self.l4.set_port(true, src.port());
        self
    }

    /// The same frame with destination address and port replaced (what a DNAT produces).
    pub fn with_dst(mut self, dst: SocketAddrV4) -> Frame {
        self.ip.dst = *dst.ip();
        self.l4.set_port(false, dst.port());
        self
    }

    /// Replaces the TCP or UDP payload (no effect on other protocols).
    pub fn with_payload(mut self, payload: &[u8]) -> Frame {
        self.l4.set_payload(payload);
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
        let mf = if more_fragments { IPV4_MF } else { 0 };
        self.ip.flags_fragment = (offset_units & IPV4_OFFSET_MASK) | mf;
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
        let (protocol, l4) = self.l4.to_bytes(&Pseudo::V4(self.ip.src, self.ip.dst));
        let options = padded(&self.ip.options);
        let header_len = IPV4_MIN_HLEN + options.len();
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
        put_checksum(&mut ip, IPV4_CHECKSUM, internet_checksum);

        let mut frame = Vec::with_capacity(ETH_HLEN + ip.len() + l4.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&self.ethertype.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// The addresses a transport checksum covers: IPv4's or IPv6's pseudo-header. Over IPv6,
/// [`L4::Icmp`] is ICMPv6, whose checksum covers the pseudo-header too.
pub(crate) enum Pseudo {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl Pseudo {
    fn checksum(&self, protocol: u8, segment: &[u8]) -> u16 {
        match *self {
            Pseudo::V4(src, dst) => l4_checksum(src, dst, protocol, segment),
            Pseudo::V6(src, dst) => l4_checksum6(src, dst, protocol, segment),
        }
    }
}

impl L4 {
    /// A TCP segment with the given [`tcp_flags`] and no payload.
    pub fn tcp(src_port: u16, dst_port: u16, flags: u8) -> L4 {
        L4::Tcp(Tcp {
            src_port,
            dst_port,
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
        })
    }

    /// A UDP datagram carrying `payload`, with a computed checksum.
    pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> L4 {
        L4::Udp(Udp {
            src_port,
            dst_port,
            zero_checksum: false,
            payload: payload.to_vec(),
        })
    }

    /// An SCTP packet with one chunk of `chunk_type` carrying 16 bytes (an INIT's size: tag,
    /// window, streams and TSN), a verification tag of 0 for an INIT and fixed otherwise.
    pub fn sctp(src_port: u16, dst_port: u16, chunk_type: u8) -> L4 {
        L4::Sctp(Sctp {
            src_port,
            dst_port,
            verification_tag: if chunk_type == sctp_chunk::INIT {
                0
            } else {
                0x5c7b_0001
            },
            chunk_type,
            chunk_value: vec![0x5c, 0x7b, 0, 1, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1],
            offloaded_checksum: false,
        })
    }

    /// The ports of a TCP, UDP or SCTP part; (0, 0) otherwise.
    pub(crate) fn ports(&self) -> (u16, u16) {
        match self {
            L4::Tcp(t) => (t.src_port, t.dst_port),
            L4::Udp(u) => (u.src_port, u.dst_port),
            L4::Sctp(c) => (c.src_port, c.dst_port),
            L4::Icmp(_) | L4::Raw { .. } => (0, 0),
        }
    }

    /// Sets the source (`source`) or destination port of a TCP, UDP or SCTP part.
    pub(crate) fn set_port(&mut self, source: bool, port: u16) {
        match (self, source) {
            (L4::Tcp(t), true) => t.src_port = port,
            (L4::Tcp(t), false) => t.dst_port = port,
            (L4::Udp(u), true) => u.src_port = port,
            (L4::Udp(u), false) => u.dst_port = port,
            (L4::Sctp(c), true) => c.src_port = port,
            (L4::Sctp(c), false) => c.dst_port = port,
            (L4::Icmp(_) | L4::Raw { .. }, _) => {}
        }
    }

    /// Replaces the payload of a TCP or UDP part, the chunk value of an SCTP part.
    pub(crate) fn set_payload(&mut self, payload: &[u8]) {
        match self {
            L4::Tcp(t) => t.payload = payload.to_vec(),
            L4::Udp(u) => u.payload = payload.to_vec(),
            L4::Sctp(c) => c.chunk_value = payload.to_vec(),
            L4::Icmp(_) | L4::Raw { .. } => {}
        }
    }

    /// Protocol number and serialised bytes, checksummed with the given pseudo-header.
    pub(crate) fn to_bytes(&self, pseudo: &Pseudo) -> (u8, Vec<u8>) {
        match self {
            L4::Tcp(t) => {
                let options = padded(&t.options);
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
                put_checksum(&mut b, TCP_CHECKSUM, |b| pseudo.checksum(IPPROTO_TCP, b));
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
                    // 0 means "none" in UDP: a computed 0 is sent as its other form, 0xffff.
                    put_checksum(&mut b, UDP_CHECKSUM, |b| {
                        match pseudo.checksum(IPPROTO_UDP, b) {
                            0 => 0xffff,
                            sum => sum,
                        }
                    });
                }
                (IPPROTO_UDP, b)
            }
            L4::Sctp(c) => {
                let value = padded(&c.chunk_value);
                let chunk_len = u16::try_from(4 + c.chunk_value.len()).expect("chunk over 64 KiB");
                let mut b = Vec::with_capacity(16 + value.len());
                b.extend_from_slice(&c.src_port.to_be_bytes());
                b.extend_from_slice(&c.dst_port.to_be_bytes());
                b.extend_from_slice(&c.verification_tag.to_be_bytes());
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(&[c.chunk_type, 0]);
                b.extend_from_slice(&chunk_len.to_be_bytes());
                b.extend_from_slice(&value);
                if !c.offloaded_checksum {
                    let check = crc32c(&b).to_le_bytes();
                    b[SCTP_CHECKSUM..SCTP_CHECKSUM + 4].copy_from_slice(&check);
                }
                (IPPROTO_SCTP, b)
            }
            L4::Icmp(icmp) => {
                let mut b = Vec::with_capacity(ICMP_HLEN + icmp.body.len());
                b.extend_from_slice(&[icmp.icmp_type, icmp.code, 0, 0]);
                b.extend_from_slice(&icmp.rest);
                b.extend_from_slice(&icmp.body);
                match pseudo {
                    Pseudo::V4(..) => {
                        put_checksum(&mut b, ICMP_CHECKSUM, internet_checksum);
                        (IPPROTO_ICMP, b)
                    }
                    Pseudo::V6(..) => {
                        put_checksum(&mut b, ICMP_CHECKSUM, |b| {
                            pseudo.checksum(IPPROTO_ICMPV6, b)
                        });
                        (IPPROTO_ICMPV6, b)
                    }
                }
            }
            L4::Raw { protocol, bytes } => (*protocol, bytes.clone()),
        }
    }
}

/// `options` padded with zeros to a multiple of 4 bytes.
pub(crate) fn padded(options: &[u8]) -> Vec<u8> {
    let mut options = options.to_vec();
    options.resize(options.len().next_multiple_of(4), 0);
    options
}

/// Stores `checksum(header)` at `offset` of `header`, whose checksum field is zero.
pub(crate) fn put_checksum(header: &mut [u8], offset: usize, checksum: impl Fn(&[u8]) -> u16) {
    let sum = checksum(header);
    header[offset..offset + 2].copy_from_slice(&sum.to_be_bytes());
}
