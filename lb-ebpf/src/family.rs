//! The two address families the pipeline is instantiated for: what differs between an IPv4 and
//! an IPv6 packet once parsed (address size and offsets, the IPv4 header checksum, who may
//! get an ICMP error), so that everything else is written once ([`crate::lb`]) and
//! monomorphised per family. Maps hold 16-byte addresses: IPv4 as IPv4-mapped IPv6.

use core::fmt::Debug;

use lb_common::{
    config::{HAIRPIN_ADDR, HAIRPIN_ADDR6},
    ipv4_mapped,
    net::{ETH_HLEN, IPV4_DST, IPV4_SRC, IPV6_DST, IPV6_SRC},
    NodeConfig,
};

use crate::{
    checksum, conntrack,
    context::Packet,
    error::Error,
    parse::{self, Flow, IPV4_CHECKSUM_OFFSET},
};

/// An address family.
pub trait Family: Copy + Debug + PartialEq + Eq {
    /// An address as it sits in the packet, network byte order.
    type Addr: Copy + Debug + PartialEq + Eq;
    /// Whether this is IPv6 (a constant the compiler folds: code for the other family is gone).
    const IPV6: bool;
    /// Offset of the source address in the frame.
    const SRC_OFFSET: usize;
    /// Offset of the destination address in the frame.
    const DST_OFFSET: usize;
    /// Offset of the IP header checksum in the frame (IPv6 has none).
    const HEADER_CHECKSUM_OFFSET: Option<usize>;
    /// Number of 4-byte words in an address (checksum updates go word by word).
    const WORDS: usize;
    /// The address hairpin flows are source-NATed to, as maps hold it.
    const HAIRPIN: [u8; 16];

    /// The address as maps hold it.
    fn mapped(addr: &Self::Addr) -> [u8; 16];
    /// The packet address of a map address of this family.
    fn unmapped(addr: &[u8; 16]) -> &Self::Addr;
    /// Whether a map address is of this family (IPv4-mapped or not).
    fn holds(addr: &[u8; 16]) -> bool;
    /// Whether two addresses are equal (for IPv6 compared as two 8-byte words: LLVM's BPF
    /// backend crashes on the byte-wise compare of 16-byte arrays).
    fn same(a: &Self::Addr, b: &Self::Addr) -> bool;
    /// Word `i` (< `WORDS`) of `addr`.
    fn word(addr: &Self::Addr, i: usize) -> [u8; 4];
    /// An Internet checksum updated for `old` becoming `new` (`checksum::replace`).
    fn replace(check: [u8; 2], old: &Self::Addr, new: &Self::Addr) -> [u8; 2];
    /// Writes `addr` at `offset` of the packet.
    fn store<P: Packet>(pkt: &mut P, offset: usize, addr: &Self::Addr) -> Option<()>;
    /// The address `config` masquerades flows of this family to, as maps hold it; `None` when
    /// it masquerades none.
    fn snat_addr(config: &NodeConfig) -> Option<&[u8; 16]>;
    /// Parses an unfragmented TCP or UDP packet of this family (`parse::ipv4_flow`,
    /// `parse::ipv6_flow`).
    fn parse<P: Packet>(pkt: &P) -> Result<Flow<Self>, Error>;
    /// Whether an ICMP error may be sent to `client` at all: never to an unspecified,
    /// loopback, multicast or (IPv4) reserved or broadcast source address (RFC 1812 4.3.2.7,
    /// RFC 4443 2.4 (e)).
    fn may_answer(client: &Self::Addr) -> bool;
}

/// IPv4: 4-byte addresses, a header checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4;

/// IPv6: 16-byte addresses, no header checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6;

/// Bytes `at..at + 8` of `addr`.
#[inline(always)]
fn word8(addr: &[u8; 16], at: usize) -> [u8; 8] {
    let mut word = [0; 8];
    word.copy_from_slice(&addr[at..at + 8]);
    word
}

/// Bytes `at..at + 8` of `addr` as a native-endian integer (compares only).
#[inline(always)]
pub fn u64_at(addr: &[u8; 16], at: usize) -> u64 {
    u64::from_ne_bytes(word8(addr, at))
}

/// Bytes `at..at + 4` of `addr` as a native-endian integer (compares only).
#[inline(always)]
fn u32_at(addr: &[u8; 16], at: usize) -> u32 {
    u32::from_ne_bytes([addr[at], addr[at + 1], addr[at + 2], addr[at + 3]])
}

impl Family for Ipv4 {
    type Addr = [u8; 4];
    const IPV6: bool = false;
    const SRC_OFFSET: usize = ETH_HLEN + IPV4_SRC;
    const DST_OFFSET: usize = ETH_HLEN + IPV4_DST;
    const HEADER_CHECKSUM_OFFSET: Option<usize> = Some(IPV4_CHECKSUM_OFFSET);
    const WORDS: usize = 1;
    const HAIRPIN: [u8; 16] = ipv4_mapped(HAIRPIN_ADDR);

    #[inline(always)]
    fn mapped(addr: &[u8; 4]) -> [u8; 16] {
        ipv4_mapped(*addr)
    }

    #[inline(always)]
    fn unmapped(addr: &[u8; 16]) -> &[u8; 4] {
        let [_, _, _, _, _, _, _, _, _, _, _, _, v4 @ ..] = addr;
        v4
    }

    #[inline(always)]
    fn holds(addr: &[u8; 16]) -> bool {
        lb_common::ipv4_unmapped(addr).is_some()
    }

    #[inline(always)]
    fn same(a: &[u8; 4], b: &[u8; 4]) -> bool {
        a == b
    }

    #[inline(always)]
    fn word(addr: &[u8; 4], _: usize) -> [u8; 4] {
        *addr
    }

    #[inline(always)]
    fn replace(check: [u8; 2], old: &[u8; 4], new: &[u8; 4]) -> [u8; 2] {
        checksum::replace4(check, *old, *new)
    }

    #[inline(always)]
    fn store<P: Packet>(pkt: &mut P, offset: usize, addr: &[u8; 4]) -> Option<()> {
        pkt.store(offset, *addr)
    }

    #[inline(always)]
    fn snat_addr(config: &NodeConfig) -> Option<&[u8; 16]> {
        Self::holds(&config.snat_addr).then_some(&config.snat_addr)
    }

    #[inline(always)]
    fn parse<P: Packet>(pkt: &P) -> Result<Flow<Self>, Error> {
        parse::ipv4_flow(pkt)
    }

    #[inline(always)]
    fn may_answer(client: &[u8; 4]) -> bool {
        !matches!(client[0], 0 | 127 | 224..=255)
    }
}

impl Family for Ipv6 {
    type Addr = [u8; 16];
    const IPV6: bool = true;
    const SRC_OFFSET: usize = ETH_HLEN + IPV6_SRC;
    const DST_OFFSET: usize = ETH_HLEN + IPV6_DST;
    const HEADER_CHECKSUM_OFFSET: Option<usize> = None;
    const WORDS: usize = 4;
    const HAIRPIN: [u8; 16] = HAIRPIN_ADDR6;

    #[inline(always)]
    fn mapped(addr: &[u8; 16]) -> [u8; 16] {
        *addr
    }

    #[inline(always)]
    fn unmapped(addr: &[u8; 16]) -> &[u8; 16] {
        addr
    }

    #[inline(always)]
    fn holds(addr: &[u8; 16]) -> bool {
        let (prefix, mapped) = (u64_at(addr, 0), u32_at(addr, 8));
        !(prefix == 0 && mapped == u32::from_ne_bytes([0, 0, 0xff, 0xff]))
    }

    #[inline(always)]
    fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
        conntrack::same_addr(a, b)
    }

    #[inline(always)]
    fn word(addr: &[u8; 16], i: usize) -> [u8; 4] {
        let at = 4 * (i & 3);
        [addr[at], addr[at + 1], addr[at + 2], addr[at + 3]]
    }

    #[inline(always)]
    fn replace(check: [u8; 2], old: &[u8; 16], new: &[u8; 16]) -> [u8; 2] {
        checksum::replace(check, old, new)
    }

    #[inline(always)]
    fn store<P: Packet>(pkt: &mut P, offset: usize, addr: &[u8; 16]) -> Option<()> {
        pkt.store(offset, word8(addr, 0))?;
        pkt.store(offset + 8, word8(addr, 8))
    }

    #[inline(always)]
    fn snat_addr(config: &NodeConfig) -> Option<&[u8; 16]> {
        let addr = &config.snat_addr6;
        (u64_at(addr, 0) | u64_at(addr, 8) != 0).then_some(addr)
    }

    #[inline(always)]
    fn parse<P: Packet>(pkt: &P) -> Result<Flow<Self>, Error> {
        parse::ipv6_flow(pkt)
    }

    #[inline(always)]
    fn may_answer(client: &[u8; 16]) -> bool {
        let low = u64::from_be_bytes(word8(client, 8));
        let unspecified_or_loopback = u64_at(client, 0) == 0 && low <= 1;
        !unspecified_or_loopback && client[0] != 0xff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_and_unmap_per_family() {
        let v4 = [198, 18, 0, 10];
        assert_eq!(Ipv4::unmapped(&Ipv4::mapped(&v4)), &v4);
        assert!(Ipv4::holds(&Ipv4::mapped(&v4)) && !Ipv6::holds(&Ipv4::mapped(&v4)));
        let v6 = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
        assert!(Ipv6::holds(&v6) && !Ipv4::holds(&v6));
        assert_eq!(Ipv6::word(&v6, 3), [0, 0, 0, 0x0a]);
    }

    #[test]
    fn icmp_errors_go_to_unicast_sources_only() {
        let v6 = |last: u8, first: u8| {
            let mut a = [0; 16];
            (a[0], a[15]) = (first, last);
            a
        };
        assert!(!Ipv6::may_answer(&v6(0, 0)) && !Ipv6::may_answer(&v6(1, 0)));
        assert!(!Ipv6::may_answer(&v6(1, 0xff)) && Ipv6::may_answer(&v6(2, 0)));
        assert!(Ipv6::may_answer(&v6(1, 0x20)));
        assert!(!Ipv4::may_answer(&[127, 0, 0, 1]) && Ipv4::may_answer(&[198, 18, 0, 1]));
    }
}
