//! Filling a data path's conntrack map with distinct TCP flows through the map API, as a busy
//! node's would be: the per-packet workload's "90% full", the scrape cost at a full map.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use aya::maps::{HashMap, MapData};
use lb_common::{CtKey, CtValue, IPPROTO_TCP};
use lb_userspace::model::map_addr;

use crate::bench::error::{map_context, Result};

/// Sources of filler entries: 198.18.96.0/19 (no traffic uses them).
pub const FILLER_SOURCES: u32 = u32::from_be_bytes([198, 18, 96, 0]);

/// Inserts forward entries `from..to` of flows from numbered sources above `base` to `dst`,
/// each with `value`.
pub fn fill(
    conntrack: &mut HashMap<MapData, CtKey, CtValue>,
    (from, to): (u32, u32),
    base: u32,
    dst: SocketAddrV4,
    value: CtValue,
) -> Result<()> {
    for k in from..to {
        conntrack
            .insert(ct_key(numbered_source(base, k), dst), value, 0)
            .map_err(map_context("filling conntrack"))?;
    }
    Ok(())
}

/// The conntrack key of a TCP packet `src -> dst` as it arrives.
pub fn ct_key(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> CtKey {
    let (src, dst) = (src.into(), dst.into());
    CtKey {
        src_addr: map_addr(src.ip()),
        dst_addr: map_addr(dst.ip()),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        proto: IPPROTO_TCP,
        ..CtKey::default()
    }
}

/// The `n`th distinct source address and port above `base` (50,000 ports per address).
pub fn numbered_source(base: u32, n: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(base + n / 50_000),
        10_000 + (n % 50_000) as u16,
    )
}
