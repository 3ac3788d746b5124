//! IPv6 frames: Ethernet + IPv6 + extension headers + TCP, UDP, ICMPv6 or raw bytes,
//! serialised with correct lengths and freshly computed checksums (the transport part is
//! [`L4`], as for IPv4; its [`L4::Icmp`] is ICMPv6 here).

use std::net::{Ipv6Addr, SocketAddrV6};

use lb_common::net::{ipv6_ext, ETHERTYPE_IPV6, ETH_HLEN, IPV6_HLEN};

use crate::frame::{Pseudo, DST_MAC, L4, SRC_MAC};

/// A frame to build: Ethernet + IPv6 + extension headers + a transport part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame6 {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ip: Ipv6,
    pub l4: L4,
}

/// IPv6 header fields; payload length and next headers are computed when built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
    pub hop_limit: u8,
    /// Extension headers in order, between the fixed header and the transport part.
    pub ext: Vec<Ext>,
}

/// One extension header: its type (a `lb_common::net::ipv6_ext` value) and the bytes after its
/// next-header byte and (for all but the fragment header) its length byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext {
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Ext {
    /// Hop-by-hop or destination options holding one PadN option: 8 bytes.
    pub fn options(kind: u8) -> Ext {
        Ext {
            kind,
            body: vec![1, 4, 0, 0, 0, 0],
        }
    }

    /// A routing header (experimental type 253) with `segments_left`: 8 bytes.
    pub fn routing(segments_left: u8) -> Ext {
        Ext {
            kind: ipv6_ext::ROUTING,
            body: vec![253, segments_left, 0, 0, 0, 0],
        }
    }

    /// A fragment header: offset in 8-byte units, more-fragments flag, identification.
    pub fn fragment(offset_units: u16, more: bool, id: u32) -> Ext {
        let word = (offset_units << 3) | u16::from(more);
        let mut body = vec![0];
        body.extend_from_slice(&word.to_be_bytes());
        body.extend_from_slice(&id.to_be_bytes());
        Ext {
            kind: ipv6_ext::FRAGMENT,
            body,
        }
    }

    fn to_bytes(&self, next: u8) -> Vec<u8> {
        let mut b = vec![next];
        if self.kind == ipv6_ext::FRAGMENT {
            b.extend_from_slice(&self.body);
        } else {
            let len = (2 + self.body.len()).div_ceil(8) * 8;
            b.push((len / 8 - 1) as u8);
            b.extend_from_slice(&self.body);
            b.resize(len, 0);
        }
        b
    }
}

impl Frame6 {
    /// A TCP segment `src -> dst` with the given `tcp_flags` and no payload.
    pub fn tcp(src: SocketAddrV6, dst: SocketAddrV6, flags: u8) -> Frame6 {
        Frame6::new(*src.ip(), *dst.ip(), L4::tcp(src.port(), dst.port(), flags))
    }

    /// A UDP datagram `src -> dst` carrying `payload`, with a computed checksum.
    pub fn udp(src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8]) -> Frame6 {
        Frame6::new(
            *src.ip(),
            *dst.ip(),
            L4::udp(src.port(), dst.port(), payload),
        )
    }

    /// An SCTP packet `src -> dst` whose one chunk is of `chunk_type`.
    pub fn sctp(src: SocketAddrV6, dst: SocketAddrV6, chunk_type: u8) -> Frame6 {
        Frame6::new(
            *src.ip(),
            *dst.ip(),
            L4::sctp(src.port(), dst.port(), chunk_type),
        )
    }

    /// An IPv6 packet `src -> dst` carrying `l4` (an [`L4::Icmp`] is ICMPv6).
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Frame6 {
        Frame6 {
            dst_mac: DST_MAC,
            src_mac: SRC_MAC,
            ip: Ipv6 {
                src,
                dst,
                traffic_class: 0,
                flow_label: 0x1_2345,
                hop_limit: 64,
                ext: Vec::new(),
            },
            l4,
        }
    }

    /// Source address and port (port 0 without TCP or UDP).
    pub fn src(&self) -> SocketAddrV6 {
        SocketAddrV6::new(self.ip.src, self.l4.ports().0, 0, 0)
    }

    /// Destination address and port (port 0 without TCP or UDP).
    pub fn dst(&self) -> SocketAddrV6 {
        SocketAddrV6::new(self.ip.dst, self.l4.ports().1, 0, 0)
    }

    /// The same frame with source address and port replaced (what a reverse NAT produces).
    pub fn with_src(mut self, src: SocketAddrV6) -> Frame6 {
        self.ip.src = *src.ip();
        self.l4.set_port(true, src.port());
        self
    }

    /// The same frame with destination address and port replaced (what a DNAT produces).
    pub fn with_dst(mut self, dst: SocketAddrV6) -> Frame6 {
        self.ip.dst = *dst.ip();
        self.l4.set_port(false, dst.port());
        self
    }

    /// Replaces the TCP or UDP payload (no effect on other protocols).
    pub fn with_payload(mut self, payload: &[u8]) -> Frame6 {
        self.l4.set_payload(payload);
        self
    }

    /// Adds extension headers, in order, before the transport part.
    pub fn with_ext(mut self, ext: Vec<Ext>) -> Frame6 {
        self.ip.ext = ext;
        self
    }

    /// Sends UDP checksum 0 (invalid over IPv6); no effect on other protocols.
    pub fn with_udp_zero_checksum(mut self) -> Frame6 {
        if let L4::Udp(u) = &mut self.l4 {
            u.zero_checksum = true;
        }
        self
    }

    /// Serialises the frame with correct lengths and freshly computed checksums.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (protocol, l4) = self.l4.to_bytes(&Pseudo::V6(self.ip.src, self.ip.dst));
        let mut ext = Vec::new();
        for (i, header) in self.ip.ext.iter().enumerate() {
            let next = self.ip.ext.get(i + 1).map_or(protocol, |h| h.kind);
            ext.extend_from_slice(&header.to_bytes(next));
        }
        let first = self.ip.ext.first().map_or(protocol, |h| h.kind);
        let payload_len = u16::try_from(ext.len() + l4.len()).expect("IPv6 payload over 64 KiB");
        let word = (6u32 << 28) | (u32::from(self.ip.traffic_class) << 20) | self.ip.flow_label;
        let mut frame = Vec::with_capacity(ETH_HLEN + IPV6_HLEN + ext.len() + l4.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        frame.extend_from_slice(&word.to_be_bytes());
        frame.extend_from_slice(&payload_len.to_be_bytes());
        frame.extend_from_slice(&[first, self.ip.hop_limit]);
        frame.extend_from_slice(&self.ip.src.octets());
        frame.extend_from_slice(&self.ip.dst.octets());
        frame.extend_from_slice(&ext);
        frame.extend_from_slice(&l4);
        frame
    }
}
