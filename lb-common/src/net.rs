//! Wire-format constants of the headers the data path reads and writes: Ethernet, IPv4, IPv6,
//! TCP, UDP, SCTP, ICMP and ICMPv6. One home for the kernel programs, the agent and the tests' frame builder.
//!
//! Offsets are from the start of their own header unless named `*_OFFSET` in a frame (after
//! an option-less Ethernet header).

/// Ethernet header length; the IP header starts here.
pub const ETH_HLEN: usize = 14;
/// Offset of the EtherType in the Ethernet header.
pub const ETH_TYPE_OFFSET: usize = 12;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number (IPv6 next header) of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IP protocol number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// Offset of the IPv6 payload length (extension headers included).
pub const IPV6_PAYLOAD_LEN: usize = 4;
/// Offset of the IPv6 next header.
pub const IPV6_NEXT_HEADER: usize = 6;
/// Offset of the IPv6 hop limit.
pub const IPV6_HOP_LIMIT: usize = 7;
/// Offset of the IPv6 source address (the destination follows it).
pub const IPV6_SRC: usize = 8;
/// Offset of the IPv6 destination address.
pub const IPV6_DST: usize = 24;

/// IPv6 extension headers (next header values) the data path walks or stops at.
pub mod ipv6_ext {
    /// Hop-by-hop options: only directly after the fixed header.
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing header.
    pub const ROUTING: u8 = 43;
    /// Fragment header (8 bytes).
    pub const FRAGMENT: u8 = 44;
    /// Destination options.
    pub const DESTINATION: u8 = 60;
    /// Offset of the segments-left byte in a routing header.
    pub const ROUTING_SEGMENTS_LEFT: usize = 3;
}

/// Length of an IPv4 header without options.
pub const IPV4_MIN_HLEN: usize = 20;
/// Offset of the IPv4 total length.
pub const IPV4_TOTAL_LEN: usize = 2;
/// Offset of the IPv4 flags/fragment-offset word.
pub const IPV4_FRAG_OFF: usize = 6;
/// Offset of the IPv4 protocol.
pub const IPV4_PROTO: usize = 9;
/// Offset of the time to live in the IPv4 header (the protocol follows it in the same word).
pub const IPV4_TTL: usize = 8;
/// Offset of the IPv4 header checksum.
pub const IPV4_CHECKSUM: usize = 10;
/// Offset of the IPv4 source address (the destination follows it).
pub const IPV4_SRC: usize = 12;
/// Offset of the IPv4 destination address.
pub const IPV4_DST: usize = 16;
/// IPv4 "don't fragment" flag in the flags/fragment-offset word.
pub const IPV4_DF: u16 = 0x4000;
/// IPv4 "more fragments" flag in the flags/fragment-offset word.
pub const IPV4_MF: u16 = 0x2000;
/// More-fragments flag and fragment offset: non-zero for every fragment.
pub const IPV4_FRAGMENT_MASK: u16 = 0x3fff;
/// The fragment offset (in 8-byte units) in the flags/fragment-offset word.
pub const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// TCP header length without options.
pub const TCP_HLEN: usize = 20;
/// Offset of the TCP checksum.
pub const TCP_CHECKSUM: usize = 16;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// Offset of the UDP checksum.
pub const UDP_CHECKSUM: usize = 6;
/// Offset of the UDP length (header and payload).
pub const UDP_LEN: usize = 4;

/// SCTP common header length (ports, verification tag, checksum).
pub const SCTP_HLEN: usize = 12;
/// Offset of the SCTP checksum (CRC32c, little-endian: see `crc32c`).
pub const SCTP_CHECKSUM: usize = 8;
/// Length of an SCTP chunk header (type, flags, length); the first follows the common header.
pub const SCTP_CHUNK_HLEN: usize = 4;

/// SCTP chunk types that start and end an association.
pub mod sctp_chunk {
    /// INIT: the first packet of an association.
    pub const INIT: u8 = 1;
    /// INIT ACK: the answer to an INIT.
    pub const INIT_ACK: u8 = 2;
    /// ABORT: the association ends at once.
    pub const ABORT: u8 = 6;
    /// SHUTDOWN COMPLETE: the last packet of a graceful shutdown.
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

/// TCP flag bits (the header's 14th byte).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// ICMP header length (type, code, checksum and four bytes of rest-of-header).
pub const ICMP_HLEN: usize = 8;
/// Offset of the ICMP checksum.
pub const ICMP_CHECKSUM: usize = 2;

/// ICMP message types and codes the data path sends or translates.
pub mod icmp {
    /// Destination unreachable.
    pub const DEST_UNREACH: u8 = 3;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Destination unreachable code: port unreachable (kube-proxy's REJECT).
    pub const PORT_UNREACH: u8 = 3;
    /// Destination unreachable code: fragmentation needed (path MTU discovery).
    pub const FRAG_NEEDED: u8 = 4;
}

/// ICMPv6 message types and codes the data path sends or lets pass.
pub mod icmpv6 {
    /// Destination unreachable.
    pub const DEST_UNREACH: u8 = 1;
    /// Destination unreachable code: port unreachable.
    pub const PORT_UNREACH: u8 = 4;
    /// Packet too big (path MTU discovery).
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded (hop limit).
    pub const TIME_EXCEEDED: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Neighbour solicitation (NDP).
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbour advertisement (NDP).
    pub const NEIGHBOR_ADVERT: u8 = 136;
}
