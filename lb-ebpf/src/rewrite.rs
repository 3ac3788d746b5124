//! NAT rewrites of one end of a flow, and the in-program version used by XDP.

use crate::{
    checksum,
    context::Packet,
    parse::{FlowEnd, Ipv4Flow, IPV4_CHECKSUM_OFFSET, IPV4_DST_OFFSET, IPV4_SRC_OFFSET},
};

/// Which end of the packet a rewrite replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Source address and port (replies: backend -> VIP).
    Source,
    /// Destination address and port (requests: VIP -> backend).
    Destination,
}

impl Side {
    /// The other end of the packet.
    #[inline(always)]
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Destination,
            Side::Destination => Side::Source,
        }
    }

    /// Offsets of this side's address and port in the frame, and their current values.
    #[inline(always)]
    pub fn locate(self, flow: &Ipv4Flow) -> (usize, usize, FlowEnd) {
        match self {
            Side::Source => (IPV4_SRC_OFFSET, flow.l4_offset, flow.src),
            Side::Destination => (IPV4_DST_OFFSET, flow.l4_offset + 2, flow.dst),
        }
    }
}

/// A rewrite could not be done (bounds or helper failure); the packet may be half written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewriteFailed;

/// Rewrites one end of a later fragment, which has no TCP or UDP header (its datagram's ports
/// and checksum are in the first fragment): the address and the IPv4 checksum only.
#[inline(always)]
pub fn addresses<P: Packet>(
    pkt: &mut P,
    flow: &Ipv4Flow,
    side: Side,
    to: FlowEnd,
) -> Result<(), RewriteFailed> {
    let (addr_offset, _, from) = side.locate(flow);
    if from.addr != to.addr {
        let ip_check = pkt.load(IPV4_CHECKSUM_OFFSET).ok_or(RewriteFailed)?;
        let ip_check = checksum::replace4(ip_check, from.addr, to.addr);
        pkt.store(IPV4_CHECKSUM_OFFSET, ip_check)
            .ok_or(RewriteFailed)?;
        pkt.store(addr_offset, to.addr).ok_or(RewriteFailed)?;
    }
    Ok(())
}

/// Rewrites one end of the flow with plain stores, updating the IPv4 and TCP/UDP checksums
/// incrementally (for contexts that rewrite in place). A UDP checksum of 0 (none) stays 0; a
/// computed 0 is sent as 0xffff.
#[inline(always)]
pub fn in_place<P: Packet>(
    pkt: &mut P,
    flow: &Ipv4Flow,
    side: Side,
    to: FlowEnd,
) -> Result<(), RewriteFailed> {
    let (addr_offset, port_offset, from) = side.locate(flow);
    let l4_checksum_offset = flow.l4_checksum_offset();
    let mut l4_check: [u8; 2] = pkt.load(l4_checksum_offset).ok_or(RewriteFailed)?;
    let l4_has_checksum = !(flow.is_udp() && l4_check == [0, 0]);
    if from.addr != to.addr {
        let ip_check = pkt.load(IPV4_CHECKSUM_OFFSET).ok_or(RewriteFailed)?;
        let ip_check = checksum::replace4(ip_check, from.addr, to.addr);
        pkt.store(IPV4_CHECKSUM_OFFSET, ip_check)
            .ok_or(RewriteFailed)?;
        pkt.store(addr_offset, to.addr).ok_or(RewriteFailed)?;
        l4_check = checksum::replace4(l4_check, from.addr, to.addr);
    }
    if from.port != to.port {
        pkt.store(port_offset, to.port).ok_or(RewriteFailed)?;
        l4_check = checksum::replace2(l4_check, from.port, to.port);
    }
    if l4_has_checksum {
        if flow.is_udp() && l4_check == [0, 0] {
            l4_check = [0xff, 0xff];
        }
        pkt.store(l4_checksum_offset, l4_check)
            .ok_or(RewriteFailed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
