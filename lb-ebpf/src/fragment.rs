//! IPv4 fragments follow their datagram's flow (as Cilium's `ipv4_handle_fragmentation`): the
//! first fragment, which has the TCP or UDP header, records the datagram's ports in
//! `LB_FRAGMENTS` and is handled as any packet; a later fragment takes its ports from there and
//! is handled as a packet of that flow, whose conntrack entry then translates its addresses.
//! A later fragment whose first one was not seen keeps its unknown ports and passes untouched.

use lb_common::{ipv4_mapped, Counter, FragKey, FragPorts};

use crate::{
    context::Packet,
    error::Error,
    maps::MapAccess,
    parse::{Ipv4Flow, Piece, IPV4_ID_OFFSET},
};

/// Records the ports of a first fragment's datagram, or fills in a later fragment's from it.
#[inline(always)]
pub fn follow<P: Packet, M: MapAccess>(
    pkt: &P,
    maps: &mut M,
    flow: &mut Ipv4Flow,
    piece: Piece,
) -> Result<(), Error> {
    // Parsing loaded the whole fixed IPv4 header: the identification is there.
    let id = pkt
        .load(IPV4_ID_OFFSET)
        .ok_or(Error::untouched(Counter::TruncatedIpv4))?;
    let key = FragKey {
        src_addr: ipv4_mapped(flow.src.addr),
        dst_addr: ipv4_mapped(flow.dst.addr),
        id,
        proto: flow.proto,
        _pad: 0,
    };
    match piece {
        Piece::Whole => {}
        Piece::First => maps.set_fragment(
            &key,
            &FragPorts {
                src_port: flow.src.port,
                dst_port: flow.dst.port,
            },
        ),
        Piece::Later => {
            let ports = maps
                .fragment(&key)
                .ok_or(Error::untouched(Counter::FragmentUnknown))?;
            flow.src.port = ports.src_port;
            flow.dst.port = ports.dst_port;
        }
    }
    Ok(())
}
