//! ICMPv6 errors about translated flows, as `crate::icmp_error` does for IPv4: a destination
//! unreachable, packet too big (path MTU discovery through a Service depends on it) or time
//! exceeded quoting a packet of a tracked flow is translated the way that flow's packets are,
//! quote included, and sent to the client (a quoted request) or the backend (a quoted reply).
//!
//! Translated: an error whose ICMPv6 header follows the fixed IPv6 header and whose quote's
//! TCP or UDP header follows the quoted fixed header (routers add no extension headers to
//! their errors). Anything else passes untouched as before (`other_protocol`), NDP above all.
//! Checksums are updated incrementally: the quoted TCP/UDP checksum (when quoted) and the
//! ICMPv6 checksum, which covers the message and a pseudo-header of the outer addresses.
//! An error not addressed to the quoted packet's source passes untouched too. Everything read
//! or written lies inside the outer packet's payload length.
//!
//! Each hook runs this in a program of its own (`crate::lb::icmp6_errors`), tail-called by the
//! hook's IPv6 program for frames whose fixed header is followed by ICMPv6: the IPv6 pipeline
//! leaves no room for it in the verifier's 512-byte stack.

use lb_common::{
    conntrack::ct_flags,
    net::{
        icmpv6, ETH_HLEN, ICMP_CHECKSUM, ICMP_HLEN, IPPROTO_ICMPV6, IPV6_DST, IPV6_HLEN,
        IPV6_NEXT_HEADER, IPV6_PAYLOAD_LEN, IPV6_SRC,
    },
    Counter, CtKey,
};

use crate::{
    checksum,
    context::Packet,
    error::Error,
    family::{u64_at, Family, Ipv6},
    icmp_error::{quotable, quoted_l4_checksum, store_quoted_l4_checksum},
    maps::MapAccess,
};

/// Offset of the ICMPv6 header: right after the fixed IPv6 header.
const ICMP: usize = ETH_HLEN + IPV6_HLEN;
/// Offset of the quoted IPv6 header.
const QUOTE: usize = ICMP + ICMP_HLEN;
/// Offset of the quoted TCP or UDP header.
const QUOTE_L4: usize = QUOTE + IPV6_HLEN;

/// An ICMPv6 error about a TCP or UDP packet. The quoted packet's addresses and ports are
/// read only into `answer` (the IPv6 programs' stack is tight).
struct Quote {
    /// Where the outer packet ends in the frame.
    end: usize,
    /// The key of the packet answering the quoted one: the quote's ends swapped.
    answer: CtKey,
    /// Whether the error came from the quoted packet's destination itself.
    from_destination: bool,
}

/// One end of the translated quote: address and port.
type End<'a> = (&'a [u8; 16], [u8; 2]);

/// Translates an ICMPv6 error quoting a packet of a tracked flow; any other packet is left
/// alone (`OtherProtocol`, as before). Call it for packets that are neither TCP nor UDP.
#[inline(always)]
pub fn translate<P: Packet, M: MapAccess>(pkt: &mut P, maps: &mut M) -> Result<Counter, Error> {
    let not_ours = Error::untouched(Counter::OtherProtocol);
    let quote = quote(pkt).ok_or(not_ours)?;
    let answer = &quote.answer;
    let entry = maps.peek_conntrack(answer).ok_or(not_ours)?;
    let nat = (&entry.nat_addr, entry.nat_port);
    let snat = (&entry.snat_addr, entry.snat_port);
    let masqueraded = entry.flags & ct_flags::SNAT != 0;
    let failed = Error::dropped(Counter::DropRewriteFailed, entry.group_id);
    let (quoted_src, quoted_dst) = (
        (&answer.dst_addr, answer.dst_port),
        (&answer.src_addr, answer.src_port),
    );
    // As for IPv4: a quoted reply goes back to being the backend's (to the node when
    // masqueraded), a quoted request to being the client's (to the VIP, from the client).
    let (src, dst) = match entry.flags & ct_flags::DIRECTION {
        ct_flags::FORWARD => (nat, if masqueraded { snat } else { quoted_dst }),
        ct_flags::REPLY => (if masqueraded { snat } else { quoted_src }, nat),
        _ => return Err(not_ours),
    };
    rewrite(pkt, &quote, src, dst).ok_or(failed)?;
    Ok(Counter::IcmpErrorTranslated)
}

/// Parses an ICMPv6 error (right after the fixed header, sent to the quoted packet's source,
/// as RFC 4443 has it) quoting a TCP or UDP packet's ports.
#[inline(always)]
fn quote<P: Packet>(pkt: &P) -> Option<Quote> {
    let outer: [u8; 8] = pkt.load(ETH_HLEN)?;
    if outer[IPV6_NEXT_HEADER] != IPPROTO_ICMPV6 {
        return None;
    }
    let [icmp_type, _code]: [u8; 2] = pkt.load(ICMP)?;
    if !matches!(
        icmp_type,
        icmpv6::DEST_UNREACH | icmpv6::PACKET_TOO_BIG | icmpv6::TIME_EXCEEDED
    ) {
        return None;
    }
    let payload_len = u16::from_be_bytes([outer[IPV6_PAYLOAD_LEN], outer[IPV6_PAYLOAD_LEN + 1]]);
    let end = ICMP + usize::from(payload_len);
    if QUOTE_L4 + 4 > end || end > pkt.frame_len() as usize {
        return None;
    }
    let inner: [u8; 8] = pkt.load(QUOTE)?;
    let proto = inner[IPV6_NEXT_HEADER];
    if inner[0] >> 4 != 6 || !quotable(proto) {
        return None;
    }
    let ports: [u8; 4] = pkt.load(QUOTE_L4)?;
    let answer = CtKey {
        src_addr: pkt.load(QUOTE + IPV6_DST)?,
        dst_addr: pkt.load(QUOTE + IPV6_SRC)?,
        src_port: [ports[2], ports[3]],
        dst_port: [ports[0], ports[1]],
        proto,
        _pad: [0; 3],
    };
    if !same_as(pkt, ETH_HLEN + IPV6_DST, &answer.dst_addr)? {
        return None;
    }
    Some(Quote {
        end,
        from_destination: same_as(pkt, ETH_HLEN + IPV6_SRC, &answer.src_addr)?,
        answer,
    })
}

/// Makes the quote `src -> dst`, the outer destination the quote's new source, and the outer
/// source, when it was the quote's old destination (the erring host was the quoted packet's
/// destination itself), the quote's new destination; keeps every checksum valid.
#[inline(always)]
fn rewrite<P: Packet>(pkt: &mut P, quote: &Quote, src: End, dst: End) -> Option<()> {
    let answer = &quote.answer;
    let mut icmp_checksum: [u8; 2] = pkt.load(ICMP + ICMP_CHECKSUM)?;
    let proto = answer.proto;
    if let Some((at, old)) = quoted_l4_checksum(pkt, QUOTE_L4, quote.end, proto) {
        let new = replace_ends(old, answer, src, dst);
        icmp_checksum = store_quoted_l4_checksum(pkt, proto, at, (old, new), icmp_checksum)?;
    }
    // The quote is part of the message; the outer addresses are in the checksum's
    // pseudo-header. The outer destination is the quote's source (checked by `quote`).
    icmp_checksum = replace_ends(icmp_checksum, answer, src, dst);
    Ipv6::store(pkt, QUOTE + IPV6_SRC, src.0)?;
    Ipv6::store(pkt, QUOTE + IPV6_DST, dst.0)?;
    pkt.store(QUOTE_L4, src.1)?;
    pkt.store(QUOTE_L4 + 2, dst.1)?;
    if quote.from_destination {
        icmp_checksum = checksum::replace(icmp_checksum, &answer.src_addr, dst.0);
        Ipv6::store(pkt, ETH_HLEN + IPV6_SRC, dst.0)?;
    }
    icmp_checksum = checksum::replace(icmp_checksum, &answer.dst_addr, src.0);
    Ipv6::store(pkt, ETH_HLEN + IPV6_DST, src.0)?;
    pkt.store(ICMP + ICMP_CHECKSUM, icmp_checksum)
}

/// `check` updated for the quoted packet (the reverse of `answer`) becoming `src -> dst`.
#[inline(always)]
fn replace_ends(check: [u8; 2], answer: &CtKey, src: End, dst: End) -> [u8; 2] {
    let check = checksum::replace(check, &answer.dst_addr, src.0);
    let check = checksum::replace(check, &answer.src_addr, dst.0);
    let check = checksum::replace2(check, answer.dst_port, src.1);
    checksum::replace2(check, answer.src_port, dst.1)
}

/// Whether the 16 bytes at `offset` are `addr`, read and compared 8 bytes at a time (not
/// copied whole to the stack).
#[inline(always)]
fn same_as<P: Packet>(pkt: &P, offset: usize, addr: &[u8; 16]) -> Option<bool> {
    let (high, low): ([u8; 8], [u8; 8]) = (pkt.load(offset)?, pkt.load(offset + 8)?);
    Some(u64::from_ne_bytes(high) == u64_at(addr, 0) && u64::from_ne_bytes(low) == u64_at(addr, 8))
}
