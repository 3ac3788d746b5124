//! NAT rewrites of one end of a flow, and the in-program version used by XDP. IPv6 has no
//! header checksum; its addresses enter the TCP/UDP checksum as four words each.
//!
//! SCTP ([`sctp_port_checksum`], both hooks): its CRC32c covers no pseudo-header, so an
//! address change keeps it; a port change updates it from the packet's length alone
//! (`lb_common::crc32c`).
//! A checksum field of 0 is one the kernel fills in later (`CHECKSUM_PARTIAL` with SCTP
//! checksum offload, as local senders on a veth leave it) and stays 0. A complete checksum
//! that happens to be 0 (one packet in 2^32) is then left stale and the peer drops that packet.

use lb_common::{crc32c, net::SCTP_CHECKSUM};

use crate::{
    checksum,
    context::Packet,
    family::Family,
    parse::{Flow, FlowEnd},
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
    pub fn locate<F: Family>(self, flow: &Flow<F>) -> (usize, usize, FlowEnd<F::Addr>) {
        match self {
            Side::Source => (F::SRC_OFFSET, flow.l4(), flow.src),
            Side::Destination => (F::DST_OFFSET, flow.l4() + 2, flow.dst),
        }
    }
}

/// A rewrite could not be done (bounds or helper failure); the packet may be half written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewriteFailed;

/// Rewrites one end of a later fragment, which has no TCP or UDP header (its datagram's ports
/// and checksum are in the first fragment): the address and the IPv4 checksum only.
#[inline(always)]
pub fn addresses<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &Flow<F>,
    side: Side,
    to: FlowEnd<F::Addr>,
) -> Result<(), RewriteFailed> {
    let (addr_offset, _, from) = side.locate(flow);
    if !F::same(&from.addr, &to.addr) {
        header_checksum::<F, P>(pkt, &from.addr, &to.addr)?;
        F::store(pkt, addr_offset, &to.addr).ok_or(RewriteFailed)?;
    }
    Ok(())
}

/// Updates the IPv4 header checksum (IPv6 has none) for the address `from` becoming `to`.
#[inline(always)]
fn header_checksum<F: Family, P: Packet>(
    pkt: &mut P,
    from: &F::Addr,
    to: &F::Addr,
) -> Result<(), RewriteFailed> {
    if let Some(offset) = F::HEADER_CHECKSUM_OFFSET {
        let ip_check = pkt.load(offset).ok_or(RewriteFailed)?;
        let ip_check = F::replace(ip_check, from, to);
        pkt.store(offset, ip_check).ok_or(RewriteFailed)?;
    }
    Ok(())
}

/// Updates an SCTP packet's CRC32c for `side`'s port having changed `from` -> `to`, as the
/// module documentation says (a checksum of 0 stays 0).
#[inline(always)]
pub fn sctp_port_checksum<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &Flow<F>,
    side: Side,
    from: [u8; 2],
    to: [u8; 2],
) -> Result<(), RewriteFailed> {
    let check_offset = flow.l4() + SCTP_CHECKSUM;
    let check: [u8; 4] = pkt.load(check_offset).ok_or(RewriteFailed)?;
    if check == [0; 4] {
        return Ok(());
    }
    let [a, b] = [from[0] ^ to[0], from[1] ^ to[1]];
    let delta = match side {
        Side::Source => u32::from_le_bytes([a, b, 0, 0]),
        Side::Destination => u32::from_le_bytes([0, 0, a, b]),
    };
    let check = u32::from_le_bytes(check) ^ sctp_checksum_change(delta, u32::from(flow.l4_len));
    pkt.store(check_offset, check.to_le_bytes())
        .ok_or(RewriteFailed)
}

/// `crc32c::change` as a global function: the verifier checks it once, on its own, instead of
/// on every path through every rewrite that calls it, which took the TC program past its
/// 1M-instruction budget. Inline, its copies also grew the programs until LLVM outlined their
/// bodies.
#[no_mangle]
#[inline(never)]
pub extern "C" fn sctp_checksum_change(delta: u32, len: u32) -> u32 {
    crc32c::change(delta, len as u16)
}

/// Rewrites one end of the flow with plain stores, updating the IPv4 and TCP/UDP (or SCTP)
/// checksums incrementally (for contexts that rewrite in place). A UDP checksum of 0 (none)
/// stays 0; a computed 0 is sent as 0xffff.
#[inline(always)]
pub fn in_place<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &Flow<F>,
    side: Side,
    to: FlowEnd<F::Addr>,
) -> Result<(), RewriteFailed> {
    let (addr_offset, port_offset, from) = side.locate(flow);
    let l4_checksum_offset = flow.l4_checksum_offset();
    let mut l4_check: [u8; 2] = pkt.load(l4_checksum_offset).ok_or(RewriteFailed)?;
    let l4_has_checksum = !(flow.is_udp() && l4_check == [0, 0] || flow.is_sctp());
    if !F::same(&from.addr, &to.addr) {
        header_checksum::<F, P>(pkt, &from.addr, &to.addr)?;
        F::store(pkt, addr_offset, &to.addr).ok_or(RewriteFailed)?;
        l4_check = F::replace(l4_check, &from.addr, &to.addr);
    }
    if from.port != to.port {
        pkt.store(port_offset, to.port).ok_or(RewriteFailed)?;
        if flow.is_sctp() {
            sctp_port_checksum(pkt, flow, side, from.port, to.port)?;
        }
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
