//! kube-proxy's REJECT for a service without a usable backend: the packet is turned into an
//! ICMP destination unreachable / port unreachable (RFC 792; ICMPv6 type 1 code 4, RFC 4443,
//! for IPv6) from the frontend address back to the client, which fails the client's connect
//! or send at once instead of letting it time out.
//!
//! An IPv6 reply quotes as much of the packet as fits in IPv6's minimum MTU ([`MAX_QUOTE6`]
//! bytes, RFC 4443 section 2.4): the whole packet up to that, extension headers and payload
//! included.
//!
//! The reply quotes the original IPv4 header (with options) and the fixed TCP, UDP or SCTP
//! header: at least the 8 bytes RFC 792 asks for, everything a client stack needs to find its
//! socket, and, for TCP and SCTP, the checksum field a `CHECKSUM_PARTIAL` skb must keep (see
//! `TcPacket::make_reply_room`). Replies are rate-limited per client and for the node
//! (`reject_limit`).

use lb_common::net::{
    icmp, icmpv6, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HLEN, ETH_TYPE_OFFSET, ICMP_CHECKSUM,
    ICMP_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_UDP, IPV4_CHECKSUM,
    IPV4_MIN_HLEN, IPV6_HLEN,
};

use crate::{
    checksum,
    context::{load_direct, Packet},
    parse::{Ipv4Flow, Ipv6Flow},
    rewrite::RewriteFailed,
};

/// The reply's own IPv4 and ICMP headers, inserted in front of the quoted packet.
const REPLY_HEADERS_LEN: usize = IPV4_MIN_HLEN + ICMP_HLEN;
/// Type of service of the reply: precedence "internetwork control", as Linux sends ICMP errors.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
const TTL: u8 = 64;
/// The one's complement sum of an IPv4 header whose checksum verifies.
const VERIFIED_HEADER_SUM: u32 = 0xffff;

/// The IPv6 reply's own IPv6 and ICMPv6 headers.
const REPLY6_HEADERS_LEN: usize = IPV6_HLEN + ICMP_HLEN;
/// IPv6's minimum MTU, which an ICMPv6 error must not exceed.
const IPV6_MIN_MTU: usize = 1280;
/// The most of the packet an IPv6 reply quotes: what fits in the minimum MTU after the
/// reply's own headers.
pub const MAX_QUOTE6: usize = IPV6_MIN_MTU - REPLY6_HEADERS_LEN;

/// Rewrites the packet into the ICMP port unreachable answering it: Ethernet addresses
/// swapped, IPv4 from the frontend to the client, ICMP header, the quoted packet. Only for
/// packets whose IPv4 header checksum verifies (`parse::ipv4_checksum_valid`).
#[inline(always)]
pub fn port_unreachable<P: Packet>(pkt: &mut P, flow: &Ipv4Flow) -> Result<(), RewriteFailed> {
    let macs: [u8; 12] = pkt.load(0).ok_or(RewriteFailed)?;
    let quoted_sum = quoted_sum(pkt, flow).ok_or(RewriteFailed)?;
    let quoted_len = flow.l4_offset - ETH_HLEN + flow.l4_header_len();
    let ip_len = REPLY_HEADERS_LEN + quoted_len;

    pkt.make_reply_room(REPLY_HEADERS_LEN as u32, (ETH_HLEN + ip_len) as u32)?;
    let ip = ipv4_header(flow.dst.addr, flow.src.addr, ip_len as u16);
    pkt.store(0, ethernet_header(macs, ETHERTYPE_IPV4))
        .and_then(|()| pkt.store(ETH_HLEN, ip))
        .and_then(|()| pkt.store(ETH_HLEN + IPV4_MIN_HLEN, icmp_header(quoted_sum)))
        .ok_or(RewriteFailed)
}

/// Rewrites an IPv6 packet into the ICMPv6 port unreachable answering it: Ethernet addresses
/// swapped, IPv6 from the frontend to the client, ICMPv6 header, the quoted packet.
#[inline(always)]
pub fn port_unreachable6<P: Packet>(pkt: &mut P, flow: &Ipv6Flow) -> Result<(), RewriteFailed> {
    let macs: [u8; 12] = pkt.load(0).ok_or(RewriteFailed)?;
    // The packet ends where its L4 part does (`parse::ipv6_flow` checked both are in the frame).
    let packet_len = flow.l4() - ETH_HLEN + usize::from(flow.l4_len);
    let quoted_len = packet_len.min(MAX_QUOTE6);
    let icmp_len = ICMP_HLEN + quoted_len;
    // The ICMPv6 checksum covers the pseudo-header (addresses, length, next header) too.
    let mut sum = pkt.quote_sum(quoted_len).ok_or(RewriteFailed)?;
    sum = checksum::add(sum, flow.dst.addr);
    sum = checksum::add(sum, flow.src.addr);
    sum = checksum::add(sum, [0, 0, (icmp_len >> 8) as u8, icmp_len as u8]);
    sum = checksum::add(sum, [0, IPPROTO_ICMPV6]);
    let mut icmp = [icmpv6::DEST_UNREACH, icmpv6::PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    let check = checksum::finish(checksum::add(sum, icmp));
    icmp[ICMP_CHECKSUM..ICMP_CHECKSUM + 2].copy_from_slice(&check);

    pkt.make_reply_room(
        REPLY6_HEADERS_LEN as u32,
        (ETH_HLEN + REPLY6_HEADERS_LEN + quoted_len) as u32,
    )?;
    let [len_hi, len_lo] = (icmp_len as u16).to_be_bytes();
    let fixed = [0x60, 0, 0, 0, len_hi, len_lo, IPPROTO_ICMPV6, TTL];
    pkt.store(0, ethernet_header(macs, ETHERTYPE_IPV6))
        .and_then(|()| pkt.store(ETH_HLEN, fixed))
        .and_then(|()| pkt.store(ETH_HLEN + 8, flow.dst.addr))
        .and_then(|()| pkt.store(ETH_HLEN + 24, flow.src.addr))
        .and_then(|()| pkt.store(ETH_HLEN + IPV6_HLEN, icmp))
        .ok_or(RewriteFailed)
}

/// One's complement sum of what an IPv6 reply quotes: the first `len` bytes (at most
/// [`MAX_QUOTE6`], and at least 8) after the Ethernet header of the frame between `data` and
/// `data_end`. 8-byte words, then the last 8 bytes with those already counted masked off
/// (an odd start sums byte-swapped, RFC 1071 section 2(B)). The programs call it through
/// `Packet::quote_sum`, whose global functions read no stack.
#[inline(always)]
pub fn quoted_sum6(data: usize, data_end: usize, len: usize) -> Option<u32> {
    // Bounds the offsets below for the verifier, which sees `len` as any number.
    let len = len.min(MAX_QUOTE6);
    if len < 8 {
        return None;
    }
    let mut sum = 0;
    for i in 0..MAX_QUOTE6 / 8 {
        if 8 * i + 8 > len {
            break;
        }
        sum += words_sum(load_direct(data, data_end, ETH_HLEN + 8 * i)?);
    }
    let rest = len & 7;
    if rest != 0 {
        let last = u64::from_be_bytes(load_direct(data, data_end, ETH_HLEN + len - 8)?);
        let tail = checksum::fold(words_sum(
            (last & (u64::MAX >> (64 - 8 * rest))).to_be_bytes(),
        ));
        sum += u32::from(if len & 1 == 1 {
            tail.swap_bytes()
        } else {
            tail
        });
    }
    Some(sum)
}

/// The sum of 8 bytes as four big-endian 16-bit words, computed in registers
/// (`checksum::add`'s byte loop cost the global functions stack, which adds to the callers').
#[inline(always)]
fn words_sum(bytes: [u8; 8]) -> u32 {
    let v = u64::from_be_bytes(bytes);
    ((v >> 48) + ((v >> 32) & 0xffff) + ((v >> 16) & 0xffff) + (v & 0xffff)) as u32
}

/// One's complement sum of what the reply quotes: the IPv4 header with its options and the
/// fixed TCP, UDP or SCTP header. A header whose checksum verifies sums to 0xffff, so only the
/// transport header is read.
#[inline(always)]
fn quoted_sum<P: Packet>(pkt: &P, flow: &Ipv4Flow) -> Option<u32> {
    l4_header_sum(pkt, flow.proto, flow.l4_offset, VERIFIED_HEADER_SUM)
}

/// `sum` plus the fixed TCP, UDP or SCTP header at `l4_offset` (`Flow::l4_header_len` bytes).
#[inline(always)]
fn l4_header_sum<P: Packet>(pkt: &P, proto: u8, l4_offset: usize, sum: u32) -> Option<u32> {
    let ports_and_more: [u8; 8] = pkt.load(l4_offset)?;
    let sum = checksum::add(sum, ports_and_more);
    Some(match proto {
        IPPROTO_UDP => sum,
        IPPROTO_SCTP => checksum::add(sum, pkt.load::<4>(l4_offset + 8)?),
        _ => checksum::add(sum, pkt.load::<12>(l4_offset + 8)?),
    })
}

/// The arriving frame's destination and source MAC addresses (`macs`), swapped.
#[inline(always)]
fn ethernet_header(macs: [u8; ETH_TYPE_OFFSET], ethertype: u16) -> [u8; ETH_HLEN] {
    let mut eth = [0; ETH_HLEN];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..ETH_TYPE_OFFSET].copy_from_slice(&macs[..6]);
    eth[ETH_TYPE_OFFSET..].copy_from_slice(&ethertype.to_be_bytes());
    eth
}

/// The reply's IPv4 header: `total_len` bytes from `src` to `dst`, not fragmented.
#[inline(always)]
fn ipv4_header(src: [u8; 4], dst: [u8; 4], total_len: u16) -> [u8; IPV4_MIN_HLEN] {
    let len = total_len.to_be_bytes();
    let mut ip = [
        0x45,
        TOS_INTERNETWORK_CONTROL,
        len[0],
        len[1],
        0,
        0, // identification
        0,
        0, // flags, fragment offset
        TTL,
        IPPROTO_ICMP,
        0,
        0, // checksum
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let check = checksum::finish(checksum::add(0, ip));
    ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&check);
    ip
}

/// The ICMP header, checksummed over itself and the quoted bytes (which sum to `quoted_sum`).
#[inline(always)]
fn icmp_header(quoted_sum: u32) -> [u8; ICMP_HLEN] {
    let mut header = [icmp::DEST_UNREACH, icmp::PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    let check = checksum::finish(checksum::add(quoted_sum, header));
    header[ICMP_CHECKSUM..ICMP_CHECKSUM + 2].copy_from_slice(&check);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        family::{Family, Ipv4},
        parse::ipv4_flow,
        testing::{frame, full_checksum, FrameSpec, Lcg, SlicePacket, CLIENT, VIP},
    };

    #[test]
    fn the_ipv6_quote_sums_as_a_full_checksum_at_every_length() {
        let frame: [u8; ETH_HLEN + 1300] = Lcg(7).bytes();
        for len in 8..=1300 {
            let data = frame.as_ptr() as usize;
            // The frame ends where the packet does: no read beyond it.
            let sum = quoted_sum6(data, data + ETH_HLEN + len, len).unwrap();
            let quoted = &frame[ETH_HLEN..ETH_HLEN + len.min(MAX_QUOTE6)];
            assert_eq!(checksum::finish(sum), full_checksum(quoted), "len {len}");
        }
        assert_eq!(quoted_sum6(frame.as_ptr() as usize, usize::MAX, 7), None);
    }

    /// Runs `spec`'s frame through [`port_unreachable`].
    fn rejected(spec: &FrameSpec) -> Vec<u8> {
        let mut pkt = SlicePacket::new(frame(spec));
        let flow = ipv4_flow(&pkt).unwrap();
        port_unreachable(&mut pkt, &flow).unwrap();
        pkt.bytes
    }

    /// The expected reply, built field by field from the original frame.
    fn expected_reply(original: &[u8], quoted_l4_len: usize) -> Vec<u8> {
        let ihl = usize::from(original[14] & 0x0f) * 4;
        let quoted = &original[14..14 + ihl + quoted_l4_len];
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        let check = full_checksum(&icmp);
        icmp[2..4].copy_from_slice(&check);
        let total = (20 + icmp.len()) as u16;
        let mut ip = vec![0x45, 0xc0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&original[30..34]); // from the frontend
        ip.extend_from_slice(&original[26..30]); // to the client
        let check = full_checksum(&ip);
        ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&check);
        let mut reply = original[6..12].to_vec();
        reply.extend_from_slice(&original[0..6]);
        reply.extend_from_slice(&[0x08, 0x00]);
        reply.extend_from_slice(&ip);
        reply.extend_from_slice(&icmp);
        reply
    }

    #[test]
    fn a_udp_datagram_becomes_port_unreachable_quoting_8_bytes() {
        let spec = FrameSpec::udp();
        let original = frame(&spec);
        let reply = rejected(&spec);
        assert_eq!(reply, expected_reply(&original, 8));
        assert_eq!(reply.len(), 14 + 20 + 8 + 20 + 8);
        assert_eq!(full_checksum(&reply[14..34]), [0, 0]);
        assert_eq!(full_checksum(&reply[34..]), [0, 0]);
    }

    #[test]
    fn a_tcp_syn_becomes_port_unreachable_quoting_the_tcp_header() {
        let spec = FrameSpec {
            payload: b"data beyond the header is not quoted".to_vec(),
            ..FrameSpec::tcp_syn()
        };
        let original = frame(&spec);
        assert_eq!(rejected(&spec), expected_reply(&original, 20));
    }

    #[test]
    fn ip_options_are_quoted_and_summed() {
        for words in [1, 3, 10] {
            let spec = FrameSpec {
                ip_options: (0..words * 4).map(|i| i as u8 ^ 0x5a).collect(),
                ..FrameSpec::udp()
            };
            let original = frame(&spec);
            let reply = rejected(&spec);
            assert_eq!(reply, expected_reply(&original, 8), "{words} option words");
            assert_eq!(full_checksum(&reply[34..]), [0, 0]);
        }
    }

    #[test]
    fn the_reply_goes_from_the_frontend_to_the_client() {
        let reply = rejected(&FrameSpec::tcp_syn());
        assert_eq!(&reply[26..30], &VIP.addr);
        assert_eq!(&reply[30..34], &CLIENT.addr);
        assert_eq!(&reply[0..6], &frame(&FrameSpec::tcp_syn())[6..12]);
    }

    #[test]
    fn failed_resizes_and_stores_are_reported() {
        let mut refusing = SlicePacket::new(frame(&FrameSpec::udp()));
        refusing.fail_resize = true;
        let flow = ipv4_flow(&refusing).unwrap();
        assert_eq!(port_unreachable(&mut refusing, &flow), Err(RewriteFailed));
        let mut read_only = SlicePacket::new(frame(&FrameSpec::udp()));
        read_only.fail_stores = true;
        assert_eq!(port_unreachable(&mut read_only, &flow), Err(RewriteFailed));
    }

    #[test]
    fn only_unicast_sources_are_answered() {
        for ok in [[198, 18, 0, 10], [10, 0, 0, 1], [223, 255, 255, 254]] {
            assert!(Ipv4::may_answer(&ok), "{ok:?}");
        }
        for never in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [255, 255, 255, 255],
        ] {
            assert!(!Ipv4::may_answer(&never), "{never:?}");
        }
    }
}
