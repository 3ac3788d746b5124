//! Ethernet / IPv4 or IPv6 / TCP|UDP|SCTP parsing into the few fields the load balancer needs.
//!
//! SCTP is tracked as TCP is: its first chunk stands for TCP flags ([`sctp_flags`]), so INIT
//! starts a flow as a SYN does and ABORT or SHUTDOWN COMPLETE end it as a RST does.
//!
//! IPv6 extension headers ([`ipv6_flow`]): up to [`MAX_IPV6_EXTENSIONS`] hop-by-hop (first
//! only), destination options and routing headers are walked to the TCP or UDP header. A
//! routing header with segments left means this node is not the packet's final destination;
//! a fragment header, ICMPv6 (NDP above all) or any other next header is not a flow the load
//! balancer starts. All of those, and frames that end inside a header, pass untouched, each
//! with its counter.

use lb_common::{
    net::{
        ipv6_ext, sctp_chunk, tcp_flags, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HLEN, ETH_TYPE_OFFSET,
        IPV4_CHECKSUM, IPV4_DST, IPV4_FRAGMENT_MASK, IPV4_FRAG_OFF, IPV4_MIN_HLEN,
        IPV4_OFFSET_MASK, IPV4_PROTO, IPV4_SRC, IPV4_TOTAL_LEN, IPV6_DST, IPV6_HLEN,
        IPV6_NEXT_HEADER, IPV6_PAYLOAD_LEN, IPV6_SRC, SCTP_CHECKSUM, SCTP_CHUNK_HLEN, SCTP_HLEN,
        TCP_CHECKSUM, TCP_HLEN, UDP_CHECKSUM, UDP_HLEN, UDP_LEN,
    },
    Counter, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    checksum,
    context::Packet,
    error::Error,
    family::{Family, Ipv4, Ipv6},
    maps,
};

/// Offset of the IPv4 header checksum in the frame.
pub const IPV4_CHECKSUM_OFFSET: usize = ETH_HLEN + IPV4_CHECKSUM;
/// Offset of the IPv4 source address in the frame (the destination follows it).
pub const IPV4_SRC_OFFSET: usize = ETH_HLEN + IPV4_SRC;
/// Offset of the IPv4 destination address in the frame.
pub const IPV4_DST_OFFSET: usize = ETH_HLEN + IPV4_DST;
/// Offset of the IPv4 identification in the frame: with the addresses and protocol it names
/// the datagram of a fragment.
pub const IPV4_ID_OFFSET: usize = ETH_HLEN + 4;
/// Offset of the TCP data offset byte, which the flags byte follows.
const TCP_DATA_OFFSET: usize = 12;
/// IPv4 options are at most 40 bytes.
const MAX_OPTION_WORDS: usize = 10;
/// IPv6 extension headers walked before giving up (`Counter::Ipv6ExtensionLimit`).
pub const MAX_IPV6_EXTENSIONS: usize = 4;
/// Covers every L4 offset [`ipv6_flow`] can find (extension headers are at most 2048 bytes).
const IPV6_L4_OFFSET_MASK: usize = 0x3fff;

/// One end of a flow: address (IPv4 by default) and port, both in network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEnd<A = [u8; 4]> {
    pub addr: A,
    pub port: [u8; 2],
}

/// Which part of a datagram an IPv4 packet carries ([`fragment_flow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// All of it: not a fragment.
    Whole,
    /// The first fragment (offset 0, more fragments follow): it has the TCP or UDP header.
    First,
    /// A later fragment: no TCP or UDP header, its ports are the first fragment's.
    Later,
}

/// The parsed headers of a TCP, UDP or SCTP packet of family `F`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow<F: Family> {
    /// Offset of the TCP/UDP/SCTP header in the frame (after IPv4 options or IPv6 extension
    /// headers, if any); of the payload in a later IPv4 fragment.
    pub l4_offset: usize,
    /// `IPPROTO_TCP`, `IPPROTO_UDP` or `IPPROTO_SCTP`.
    pub proto: u8,
    pub src: FlowEnd<F::Addr>,
    pub dst: FlowEnd<F::Addr>,
    /// TCP flags byte; for SCTP the flags its first chunk stands for ([`sctp_flags`]); 0 for
    /// UDP and later fragments.
    pub tcp_flags: u8,
    /// Bytes from `l4_offset` to the end of the IP packet (what the SCTP checksum covers).
    pub l4_len: u16,
}

/// An IPv4 flow.
pub type Ipv4Flow = Flow<Ipv4>;
/// An IPv6 flow.
pub type Ipv6Flow = Flow<Ipv6>;

impl<F: Family> Flow<F> {
    /// [`Flow::l4_offset`] as the IPv6 program must read it after the flow was copied: LLVM,
    /// knowing the bound [`ipv6_flow`] masked in, stores the offset as two bytes plus zeros,
    /// which the verifier reads back as an unbounded number. A volatile read the optimiser
    /// cannot see through, masked again, carries the bound. IPv4 reads the field.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        if F::IPV6 {
            // SAFETY: reads a field of a live reference.
            unsafe { core::ptr::read_volatile(&self.l4_offset) & IPV6_L4_OFFSET_MASK }
        } else {
            self.l4_offset
        }
    }

    /// Offset of the TCP, UDP or SCTP checksum in the frame.
    #[inline(always)]
    pub fn l4_checksum_offset(&self) -> usize {
        self.l4()
            + match self.proto {
                IPPROTO_UDP => UDP_CHECKSUM,
                IPPROTO_SCTP => SCTP_CHECKSUM,
                _ => TCP_CHECKSUM,
            }
    }

    /// Length of the fixed TCP, UDP or SCTP common header (TCP options not counted).
    #[inline(always)]
    pub fn l4_header_len(&self) -> usize {
        match self.proto {
            IPPROTO_UDP => UDP_HLEN,
            IPPROTO_SCTP => SCTP_HLEN,
            _ => TCP_HLEN,
        }
    }

    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.proto == IPPROTO_UDP
    }

    #[inline(always)]
    pub fn is_sctp(&self) -> bool {
        self.proto == IPPROTO_SCTP
    }

    /// A TCP SYN without ACK or an SCTP INIT: the first packet of a connection attempt.
    /// (UDP and later fragments have no flags.)
    #[inline(always)]
    pub fn is_connection_start(&self) -> bool {
        self.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
    }

    /// A TCP FIN or RST, an SCTP ABORT or SHUTDOWN COMPLETE: the connection is ending.
    #[inline(always)]
    pub fn is_connection_end(&self) -> bool {
        self.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0
    }
}

/// The option-less part of an IPv4 header, as loaded from the packet.
pub type Ipv4Header = [u8; IPV4_MIN_HLEN];

/// Whether `ip` says it is version 4.
#[inline(always)]
pub fn is_ipv4(ip: &Ipv4Header) -> bool {
    ip[0] >> 4 == 4
}

/// The header's length with options, from its IHL field. Masked so the verifier (and the
/// reader) sees 0..=60.
#[inline(always)]
pub fn ipv4_header_len(ip: &Ipv4Header) -> usize {
    usize::from(ip[0] & 0x0f) * 4
}

/// The packet's length from its total length field (header included).
#[inline(always)]
pub fn ipv4_total_len(ip: &Ipv4Header) -> usize {
    usize::from(u16::from_be_bytes([
        ip[IPV4_TOTAL_LEN],
        ip[IPV4_TOTAL_LEN + 1],
    ]))
}

/// Whether the packet is a fragment: more fragments follow, or it is not the first.
#[inline(always)]
pub fn is_fragment(ip: &Ipv4Header) -> bool {
    u16::from_be_bytes([ip[IPV4_FRAG_OFF], ip[IPV4_FRAG_OFF + 1]]) & IPV4_FRAGMENT_MASK != 0
}

/// The fragment offset, in 8-byte units: 0 for the first fragment (and unfragmented packets).
#[inline(always)]
fn fragment_offset(ip: &Ipv4Header) -> u16 {
    u16::from_be_bytes([ip[IPV4_FRAG_OFF], ip[IPV4_FRAG_OFF + 1]]) & IPV4_OFFSET_MASK
}

/// The source and destination of a TCP or UDP packet: the addresses from its IPv4 header,
/// the ports from the first four bytes of its TCP or UDP header.
#[inline(always)]
pub fn flow_ends(ip: &Ipv4Header, ports: [u8; 4]) -> (FlowEnd, FlowEnd) {
    let addr = |at: usize| [ip[at], ip[at + 1], ip[at + 2], ip[at + 3]];
    (
        FlowEnd {
            addr: addr(IPV4_SRC),
            port: [ports[0], ports[1]],
        },
        FlowEnd {
            addr: addr(IPV4_DST),
            port: [ports[2], ports[3]],
        },
    )
}

/// Parses an Ethernet frame carrying an unfragmented IPv4 TCP or UDP packet; a fragment is
/// `Counter::Fragment`, for [`fragment_flow`].
///
/// Every error is a reason to leave the packet untouched.
#[inline(always)]
pub fn ipv4_flow<P: Packet>(pkt: &P) -> Result<Ipv4Flow, Error> {
    parse(pkt, false).map(|(flow, _)| flow)
}

/// Parses an Ethernet frame carrying an IPv4 TCP or UDP fragment: the first fragment as any
/// packet, a later one with its ports left 0 (only its datagram's first fragment has them).
/// Kept apart from [`ipv4_flow`] so unfragmented packets pay one branch for fragments.
#[inline(always)]
pub fn fragment_flow<P: Packet>(pkt: &P) -> Result<(Ipv4Flow, Piece), Error> {
    parse(pkt, true)
}

/// [`ipv4_flow`], and with `fragments` [`fragment_flow`]; callers pass a constant.
#[inline(always)]
fn parse<P: Packet>(pkt: &P, fragments: bool) -> Result<(Ipv4Flow, Piece), Error> {
    let ethertype: [u8; 2] = pkt
        .load(ETH_TYPE_OFFSET)
        .ok_or(Error::untouched(Counter::TruncatedEthernet))?;
    if ethertype != ETHERTYPE_IPV4.to_be_bytes() {
        return Err(Error::untouched(Counter::NotIp));
    }
    let ip: Ipv4Header = pkt
        .load(ETH_HLEN)
        .ok_or(Error::untouched(Counter::TruncatedIpv4))?;
    if !is_ipv4(&ip) {
        return Err(Error::untouched(Counter::NotIp));
    }
    let header_len = ipv4_header_len(&ip);
    let total_len = ipv4_total_len(&ip);
    if header_len < IPV4_MIN_HLEN || header_len > total_len {
        return Err(Error::untouched(Counter::BadIpv4HeaderLength));
    }
    let proto = ip[IPV4_PROTO];
    let l4_header_len = match proto {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        // `lb-agent trace`'s copy leaves SCTP out: with it, its recording took the XDP
        // program past the verifier's 1M-instruction budget.
        IPPROTO_SCTP if !maps::dry_run() => SCTP_HLEN + SCTP_CHUNK_HLEN,
        _ => return Err(Error::untouched(Counter::OtherProtocol)),
    };
    let piece = if !is_fragment(&ip) {
        Piece::Whole
    } else if !fragments {
        return Err(Error::untouched(Counter::Fragment));
    } else if fragment_offset(&ip) == 0 {
        Piece::First
    } else {
        Piece::Later
    };
    // An SCTP checksum covers the whole datagram, whose length only the last fragment
    // tells: a fragment's ports cannot be rewritten (SCTP sizes its packets to the path MTU).
    if piece != Piece::Whole && proto == IPPROTO_SCTP {
        return Err(Error::untouched(Counter::Fragment));
    }
    let l4_offset = ETH_HLEN + header_len;
    // The options must be in the frame, the L4 header in the frame and in the IP packet.
    // (Presence is checked with 2-byte loads: see `context::Packet::load`.)
    if header_len > IPV4_MIN_HLEN && pkt.load::<2>(l4_offset - 2).is_none() {
        return Err(Error::untouched(Counter::TruncatedIpv4));
    }
    if piece == Piece::Later {
        if ETH_HLEN + total_len > pkt.frame_len() as usize {
            return Err(Error::untouched(Counter::TruncatedIpv4));
        }
        let (src, dst) = flow_ends(&ip, [0; 4]);
        let flow = Ipv4Flow {
            l4_offset,
            proto,
            src,
            dst,
            tcp_flags: 0,
            l4_len: (total_len - header_len) as u16,
        };
        return Ok((flow, piece));
    }
    if header_len + l4_header_len > total_len
        || pkt.load::<2>(l4_offset + l4_header_len - 2).is_none()
    {
        return Err(Error::untouched(Counter::TruncatedL4));
    }
    // Bytes after the packet are an Ethernet trailer; a packet longer than the frame is cut.
    if ETH_HLEN + total_len > pkt.frame_len() as usize {
        return Err(Error::untouched(Counter::TruncatedIpv4));
    }
    let ports: [u8; 4] = pkt
        .load(l4_offset)
        .ok_or(Error::untouched(Counter::TruncatedL4))?;
    let l4_len = total_len - header_len;
    let tcp_flags = match proto {
        IPPROTO_TCP => tcp_flags_checked(pkt, l4_offset, l4_len)?,
        IPPROTO_SCTP => sctp_flags(pkt, l4_offset)?,
        _ => {
            // A first fragment's UDP length is the whole datagram's, beyond the fragment.
            if piece == Piece::Whole {
                udp_length_checked(pkt, l4_offset, l4_len)?;
            }
            0
        }
    };
    let (src, dst) = flow_ends(&ip, ports);
    let flow = Ipv4Flow {
        l4_offset,
        proto,
        src,
        dst,
        tcp_flags,
        l4_len: l4_len as u16,
    };
    Ok((flow, piece))
}

/// Parses an Ethernet frame carrying an IPv6 TCP or UDP packet, walking its extension headers
/// as the module documentation says. Every error is a reason to leave the packet untouched.
#[inline(always)]
pub fn ipv6_flow<P: Packet>(pkt: &P) -> Result<Ipv6Flow, Error> {
    let ethertype: [u8; 2] = pkt
        .load(ETH_TYPE_OFFSET)
        .ok_or(Error::untouched(Counter::TruncatedEthernet))?;
    if ethertype != ETHERTYPE_IPV6.to_be_bytes() {
        return Err(Error::untouched(Counter::NotIp));
    }
    // The fixed header's first 8 bytes here; the addresses go straight into the flow (the
    // IPv6 program's stack is tight).
    let ip: [u8; 8] = pkt
        .load(ETH_HLEN)
        .ok_or(Error::untouched(Counter::TruncatedIpv6))?;
    let src: [u8; 16] = pkt
        .load(ETH_HLEN + IPV6_SRC)
        .ok_or(Error::untouched(Counter::TruncatedIpv6))?;
    let dst: [u8; 16] = pkt
        .load(ETH_HLEN + IPV6_DST)
        .ok_or(Error::untouched(Counter::TruncatedIpv6))?;
    if ip[0] >> 4 != 6 {
        return Err(Error::untouched(Counter::NotIp));
    }
    let payload_len = usize::from(u16::from_be_bytes([
        ip[IPV6_PAYLOAD_LEN],
        ip[IPV6_PAYLOAD_LEN + 1],
    ]));
    let end = ETH_HLEN + IPV6_HLEN + payload_len;
    // Bytes after the packet are an Ethernet trailer; a packet longer than the frame is cut.
    if end > pkt.frame_len() as usize {
        return Err(Error::untouched(Counter::TruncatedIpv6));
    }
    let (proto, l4_offset) = ipv6_transport(pkt, ip[IPV6_NEXT_HEADER])?;
    // At most 54 + 4 * 2048: masked (a no-op) so the verifier sees the bound wherever the
    // offset is used, after spills and joins.
    let l4_offset = l4_offset & IPV6_L4_OFFSET_MASK;
    let l4_header_len = match proto {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_SCTP => SCTP_HLEN + SCTP_CHUNK_HLEN,
        _ => UDP_HLEN,
    };
    if l4_offset + l4_header_len > end || pkt.load::<2>(l4_offset + l4_header_len - 2).is_none() {
        return Err(Error::untouched(Counter::TruncatedL4));
    }
    let ports: [u8; 4] = pkt
        .load(l4_offset)
        .ok_or(Error::untouched(Counter::TruncatedL4))?;
    let l4_len = end - l4_offset;
    let tcp_flags = match proto {
        IPPROTO_TCP => tcp_flags_checked(pkt, l4_offset, l4_len)?,
        IPPROTO_SCTP => sctp_flags(pkt, l4_offset)?,
        _ => {
            udp_length_checked(pkt, l4_offset, l4_len)?;
            let check: [u8; 2] = pkt
                .load(l4_offset + UDP_CHECKSUM)
                .ok_or(Error::untouched(Counter::TruncatedL4))?;
            if check == [0, 0] {
                return Err(Error::untouched(Counter::UdpZeroChecksum));
            }
            0
        }
    };
    Ok(Ipv6Flow {
        l4_offset,
        proto,
        src: FlowEnd {
            addr: src,
            port: [ports[0], ports[1]],
        },
        dst: FlowEnd {
            addr: dst,
            port: [ports[2], ports[3]],
        },
        tcp_flags,
        l4_len: l4_len as u16,
    })
}

/// Walks the extension headers from `next` (the fixed header's next header) to the TCP, UDP or
/// SCTP header: its protocol and offset in the frame.
#[inline(always)]
fn ipv6_transport<P: Packet>(pkt: &P, mut next: u8) -> Result<(u8, usize), Error> {
    let mut offset = ETH_HLEN + IPV6_HLEN;
    for i in 0..=MAX_IPV6_EXTENSIONS {
        match next {
            // As for IPv4 (`parse`), `lb-agent trace`'s copy leaves SCTP out.
            IPPROTO_SCTP if maps::dry_run() => {
                return Err(Error::untouched(Counter::OtherProtocol))
            }
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => return Ok((next, offset)),
            ipv6_ext::FRAGMENT => return Err(Error::untouched(Counter::Fragment)),
            ipv6_ext::HOP_BY_HOP | ipv6_ext::DESTINATION | ipv6_ext::ROUTING
                if i == MAX_IPV6_EXTENSIONS || (next == ipv6_ext::HOP_BY_HOP && i != 0) =>
            {
                return Err(Error::untouched(Counter::Ipv6ExtensionLimit))
            }
            ipv6_ext::HOP_BY_HOP | ipv6_ext::DESTINATION | ipv6_ext::ROUTING => {}
            _ => return Err(Error::untouched(Counter::OtherProtocol)),
        }
        let header: [u8; 4] = pkt
            .load(offset)
            .ok_or(Error::untouched(Counter::TruncatedIpv6))?;
        if next == ipv6_ext::ROUTING && header[ipv6_ext::ROUTING_SEGMENTS_LEFT] != 0 {
            return Err(Error::untouched(Counter::Ipv6RoutingPending));
        }
        next = header[0];
        offset += (usize::from(header[1]) + 1) * 8;
    }
    Err(Error::untouched(Counter::Ipv6ExtensionLimit))
}

/// The flags of the TCP header at `l4_offset`, whose data offset must count at least the
/// fixed header and fit the packet's `l4_len` bytes.
#[inline(always)]
fn tcp_flags_checked<P: Packet>(pkt: &P, l4_offset: usize, l4_len: usize) -> Result<u8, Error> {
    let [data_offset, flags]: [u8; 2] = pkt
        .load(l4_offset + TCP_DATA_OFFSET)
        .ok_or(Error::untouched(Counter::TruncatedL4))?;
    let header_len = usize::from(data_offset >> 4) * 4;
    if header_len < TCP_HLEN {
        return Err(Error::untouched(Counter::BadL4Length));
    }
    if header_len > l4_len {
        return Err(Error::untouched(Counter::TruncatedL4));
    }
    Ok(flags)
}

/// The TCP flags the first chunk of the SCTP packet at `l4_offset` stands for in conntrack
/// ([`SCTP_CHUNK_FLAGS`]).
#[inline(always)]
fn sctp_flags<P: Packet>(pkt: &P, l4_offset: usize) -> Result<u8, Error> {
    let [chunk_type, _]: [u8; 2] = pkt
        .load(l4_offset + SCTP_HLEN)
        .ok_or(Error::untouched(Counter::TruncatedL4))?;
    Ok(SCTP_CHUNK_FLAGS[usize::from(chunk_type)])
}

/// The TCP flags each SCTP chunk type stands for: INIT a SYN (a new association), INIT ACK a
/// SYN-ACK, ABORT and SHUTDOWN COMPLETE a RST (the association is over), any other an ACK.
/// A table, not a `match`: the verifier then sees the flags as it sees a TCP header's, one
/// unknown byte, instead of following the rest of the program once per constant.
static SCTP_CHUNK_FLAGS: [u8; 256] = {
    let mut flags = [tcp_flags::ACK; 256];
    flags[sctp_chunk::INIT as usize] = tcp_flags::SYN;
    flags[sctp_chunk::INIT_ACK as usize] = tcp_flags::SYN | tcp_flags::ACK;
    flags[sctp_chunk::ABORT as usize] = tcp_flags::RST;
    flags[sctp_chunk::SHUTDOWN_COMPLETE as usize] = tcp_flags::RST;
    flags
};

/// Checks that the UDP length at `l4_offset` is the packet's `l4_len` (an unfragmented
/// datagram fills its IP packet exactly).
#[inline(always)]
fn udp_length_checked<P: Packet>(pkt: &P, l4_offset: usize, l4_len: usize) -> Result<(), Error> {
    let len: [u8; 2] = pkt
        .load(l4_offset + UDP_LEN)
        .ok_or(Error::untouched(Counter::TruncatedL4))?;
    if usize::from(u16::from_be_bytes(len)) != l4_len {
        return Err(Error::untouched(Counter::BadL4Length));
    }
    Ok(())
}

/// One's complement sum of the IPv4 header, options included, for a header whose length
/// `ipv4_flow` found sound.
///
/// The option count comes from the header byte loaded here, not from `Ipv4Flow::l4_offset`:
/// the loop's bounds checks then narrow nothing the caller still uses, so the verifier does
/// not follow the rest of the pipeline once per option count.
#[inline(always)]
fn ipv4_header_sum<P: Packet>(pkt: &P) -> Option<u32> {
    let ip: Ipv4Header = pkt.load(ETH_HLEN)?;
    let option_words = ipv4_header_len(&ip) / 4 - IPV4_MIN_HLEN / 4;
    let mut sum = checksum::add(0, ip);
    for i in 0..MAX_OPTION_WORDS {
        if i < option_words {
            let word: [u8; 4] = pkt.load(ETH_HLEN + IPV4_MIN_HLEN + 4 * i)?;
            sum = checksum::add(sum, word);
        }
    }
    Some(sum)
}

/// Whether the IPv4 header checksum (options included) of a packet `ipv4_flow` parsed
/// verifies.
#[inline(always)]
pub fn ipv4_checksum_valid<P: Packet>(pkt: &P) -> bool {
    ipv4_header_sum(pkt).is_some_and(|sum| checksum::finish(sum) == [0, 0])
}

#[cfg(test)]
mod tests;
