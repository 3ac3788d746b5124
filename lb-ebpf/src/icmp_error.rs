//! ICMP errors about translated flows: a destination unreachable (including "fragmentation
//! needed", which path MTU discovery relies on) or time exceeded quotes the packet that caused
//! it, as that packet was after translation. The error is translated the way that flow's
//! packets are, quote included, so the socket it is meant for recognises its own packet, as
//! Linux conntrack's NAT does for kube-proxy:
//!
//! - quoting a request (client -> backend, or node -> backend when masqueraded): the quote
//!   becomes client -> VIP again and the error goes to the client, from the VIP when the
//!   backend itself sent it (a closed UDP port then fails the client's socket at once);
//! - quoting a reply (VIP -> client): the quote becomes backend -> client (or -> node) and the
//!   error goes to the backend.
//!
//! The flow is found with the quote's reverse, the packet answering the quoted one: the reply
//! entry for a quoted request, the forward entry for a quoted reply. Checksums are updated
//! incrementally: the outer IPv4 header's, the quoted IPv4 and TCP/UDP headers' (when quoted)
//! and the ICMP message's. Everything read or written lies inside the outer IPv4 packet's
//! total length: bytes after it are an Ethernet trailer, never part of the quote.

use lb_common::{
    conntrack::ct_flags,
    ipv4_mapped,
    net::{
        icmp, ETH_HLEN, ICMP_CHECKSUM, ICMP_HLEN, IPPROTO_ICMP, IPV4_CHECKSUM, IPV4_DST,
        IPV4_MIN_HLEN, IPV4_PROTO, IPV4_SRC, TCP_CHECKSUM, UDP_CHECKSUM,
    },
    Counter, CtKey, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    checksum,
    conntrack::v4,
    context::Packet,
    error::Error,
    maps::MapAccess,
    parse::{
        flow_ends, ipv4_header_len, ipv4_total_len, is_fragment, is_ipv4, FlowEnd, Ipv4Header,
        IPV4_CHECKSUM_OFFSET, IPV4_DST_OFFSET, IPV4_SRC_OFFSET,
    },
};

/// Where the quoted packet sits in the frame and what it was.
struct Quote {
    icmp: usize,
    ip: usize,
    l4: usize,
    /// Where the outer IPv4 packet, and so the quote, ends in the frame.
    end: usize,
    proto: u8,
    src: FlowEnd,
    dst: FlowEnd,
}

/// Translates an ICMP error quoting a packet of a tracked flow; any other packet is left
/// alone (`OtherProtocol`, as before). Call it for packets that are neither TCP nor UDP.
#[inline(always)]
pub fn translate<P: Packet, M: MapAccess>(pkt: &mut P, maps: &mut M) -> Result<Counter, Error> {
    let not_ours = Error::untouched(Counter::OtherProtocol);
    let quote = quote(pkt).ok_or(not_ours)?;
    let answer = CtKey {
        src_addr: ipv4_mapped(quote.dst.addr),
        dst_addr: ipv4_mapped(quote.src.addr),
        src_port: quote.dst.port,
        dst_port: quote.src.port,
        proto: quote.proto,
        _pad: [0; 3],
    };
    let entry = maps.peek_conntrack(&answer).ok_or(not_ours)?;
    let nat = FlowEnd {
        addr: v4(&entry.nat_addr),
        port: entry.nat_port,
    };
    let snat = FlowEnd {
        addr: v4(&entry.snat_addr),
        port: entry.snat_port,
    };
    let masqueraded = entry.flags & ct_flags::SNAT != 0;
    let group_id = entry.group_id;
    // A quoted reply (the answer is the forward entry's) goes back to being the backend's:
    // from the backend, to the node when masqueraded. A quoted request goes back to being the
    // client's: to the VIP, from the client when masqueraded.
    let (src, dst) = match entry.flags & ct_flags::DIRECTION {
        ct_flags::FORWARD => (nat, if masqueraded { snat } else { quote.dst }),
        ct_flags::REPLY => (if masqueraded { snat } else { quote.src }, nat),
        _ => return Err(not_ours),
    };
    let failed = Error::dropped(Counter::DropRewriteFailed, group_id);
    rewrite(pkt, &quote, src, dst).ok_or(failed)?;
    Ok(Counter::IcmpErrorTranslated)
}

/// Parses an unfragmented IPv4 ICMP error quoting an IPv4 TCP, UDP or SCTP packet's ports.
#[inline(always)]
fn quote<P: Packet>(pkt: &P) -> Option<Quote> {
    let outer: Ipv4Header = pkt.load(ETH_HLEN)?;
    if outer[IPV4_PROTO] != IPPROTO_ICMP || is_fragment(&outer) {
        return None;
    }
    let icmp = ETH_HLEN + ipv4_header_len(&outer);
    let [icmp_type, _code]: [u8; 2] = pkt.load(icmp)?;
    if icmp_type != icmp::DEST_UNREACH && icmp_type != icmp::TIME_EXCEEDED {
        return None;
    }
    let ip = icmp + ICMP_HLEN;
    let inner: Ipv4Header = pkt.load(ip)?;
    let header_len = ipv4_header_len(&inner);
    let proto = inner[IPV4_PROTO];
    if !is_ipv4(&inner) || header_len < IPV4_MIN_HLEN || !quotable(proto) {
        return None;
    }
    let l4 = ip + header_len;
    let end = ETH_HLEN + ipv4_total_len(&outer);
    if l4 + 4 > end || end > pkt.frame_len() as usize {
        return None;
    }
    let ports: [u8; 4] = pkt.load(l4)?;
    let (src, dst) = flow_ends(&inner, ports);
    Some(Quote {
        icmp,
        ip,
        l4,
        end,
        proto,
        src,
        dst,
    })
}

/// Makes the quote `src -> dst`, the outer destination the quote's new source, and the
/// outer source, when it was the quote's old destination (the erring host was the quoted
/// packet's destination itself), the quote's new destination; keeps every checksum valid.
#[inline(always)]
fn rewrite<P: Packet>(pkt: &mut P, quote: &Quote, src: FlowEnd, dst: FlowEnd) -> Option<()> {
    let icmp_checksum: [u8; 2] = pkt.load(quote.icmp + ICMP_CHECKSUM)?;
    let ip_checksum: [u8; 2] = pkt.load(quote.ip + IPV4_CHECKSUM)?;
    let ip_checksum_new = checksum::replace4(
        checksum::replace4(ip_checksum, quote.src.addr, src.addr),
        quote.dst.addr,
        dst.addr,
    );
    let icmp_checksum = checksum::replace2(icmp_checksum, ip_checksum, ip_checksum_new);
    let mut icmp_checksum = replace_ends(icmp_checksum, quote, src, dst);

    if let Some((at, old)) = quoted_l4_checksum(pkt, quote.l4, quote.end, quote.proto) {
        let new = replace_ends(old, quote, src, dst);
        icmp_checksum = store_quoted_l4_checksum(pkt, quote.proto, at, (old, new), icmp_checksum)?;
    }
    pkt.store(quote.ip + IPV4_SRC, src.addr)?;
    pkt.store(quote.ip + IPV4_DST, dst.addr)?;
    pkt.store(quote.ip + IPV4_CHECKSUM, ip_checksum_new)?;
    pkt.store(quote.l4, src.port)?;
    pkt.store(quote.l4 + 2, dst.port)?;
    pkt.store(quote.icmp + ICMP_CHECKSUM, icmp_checksum)?;

    let outer_src: [u8; 4] = pkt.load(IPV4_SRC_OFFSET)?;
    let outer_dst: [u8; 4] = pkt.load(IPV4_DST_OFFSET)?;
    let new_src = if outer_src == quote.dst.addr {
        dst.addr
    } else {
        outer_src
    };
    let outer_checksum: [u8; 2] = pkt.load(IPV4_CHECKSUM_OFFSET)?;
    let outer_checksum = checksum::replace4(
        checksum::replace4(outer_checksum, outer_src, new_src),
        outer_dst,
        src.addr,
    );
    pkt.store(IPV4_SRC_OFFSET, new_src)?;
    pkt.store(IPV4_DST_OFFSET, src.addr)?;
    pkt.store(IPV4_CHECKSUM_OFFSET, outer_checksum)
}

/// Whether errors quoting packets of `proto` are translated: TCP, UDP and SCTP, whose ports
/// open their headers alike.
#[inline(always)]
pub fn quotable(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

/// Where the quoted TCP/UDP checksum sits and what it holds, when the quote (ending at
/// `end`) reaches it and it is in use (a UDP 0 means none). `l4`: the quoted L4 header.
/// A quoted SCTP checksum is left as it is: it covers the whole original packet, and SCTP
/// matches an error to its association by the verification tag, not by the quote's checksum.
#[inline(always)]
pub fn quoted_l4_checksum<P: Packet>(
    pkt: &P,
    l4: usize,
    end: usize,
    proto: u8,
) -> Option<(usize, [u8; 2])> {
    if proto == IPPROTO_SCTP {
        return None;
    }
    let at = l4
        + if proto == IPPROTO_UDP {
            UDP_CHECKSUM
        } else {
            TCP_CHECKSUM
        };
    let checksum = pkt.load::<2>(at).filter(|_| at + 2 <= end)?;
    (!(proto == IPPROTO_UDP && checksum == [0, 0])).then_some((at, checksum))
}

/// Writes the quoted L4 checksum's `new` value over `old` at `at` (a UDP result of 0 sent as
/// 0xffff) and returns `icmp_checksum` updated for the change.
#[inline(always)]
pub fn store_quoted_l4_checksum<P: Packet>(
    pkt: &mut P,
    proto: u8,
    at: usize,
    (old, mut new): ([u8; 2], [u8; 2]),
    icmp_checksum: [u8; 2],
) -> Option<[u8; 2]> {
    if proto == IPPROTO_UDP && new == [0, 0] {
        new = [0xff, 0xff];
    }
    pkt.store(at, new)?;
    Some(checksum::replace2(icmp_checksum, old, new))
}

/// `check` updated for the quoted packet's addresses and ports becoming `src -> dst`.
#[inline(always)]
fn replace_ends(check: [u8; 2], quote: &Quote, src: FlowEnd, dst: FlowEnd) -> [u8; 2] {
    let check = checksum::replace4(check, quote.src.addr, src.addr);
    let check = checksum::replace4(check, quote.dst.addr, dst.addr);
    let check = checksum::replace2(check, quote.src.port, src.port);
    checksum::replace2(check, quote.dst.port, dst.port)
}

#[cfg(test)]
mod tests;
