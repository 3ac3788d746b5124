//! Masquerading: external flows to backends on other nodes are also source-NATed to the node's
//! address and a port allocated for the flow, so that the backend answers this node, which
//! translates the answer back (see `lb_common::config` and `ct_flags::SNAT`).
//!
//! Hairpin: an internal flow from a pod balanced to itself is source-NATed the same way, to
//! `config::HAIRPIN_ADDR`, so the pod does not receive its own address as the source.
//! A port taken by an idle or closed flow is taken over (see `port_reuse`).

use lb_common::{
    config::{HAIRPIN_ADDR, SNAT_PORT_ATTEMPTS, SNAT_PORT_MAX, SNAT_PORT_MIN},
    conntrack::ct_flags,
    flow_hash, ipv4_mapped, ipv4_unmapped,
    service::{backend_flags, scope},
    Backend, Counter, CtKey, CtValue, NodeConfig,
};

use crate::{conntrack, error::Error, family::Family, maps::MapAccess, port_reuse};

/// Whether a new flow found in `scope` to `backend` is to be masqueraded (if the node
/// masquerades at all): external flows to backends not on this node.
#[inline(always)]
fn wanted(scope: u8, backend: &Backend) -> bool {
    scope == scope::EXTERNAL && backend.flags & backend_flags::LOCAL == 0
}

/// Whether a new flow found in `scope` is a hairpin: an internal flow whose client, `key`'s
/// source, is the chosen backend itself. Both addresses are IPv4-mapped (the key is built
/// from an IPv4 packet, the pipeline takes IPv4 backends only), so comparing the IPv4 part
/// suffices.
#[inline(always)]
fn hairpin(scope: u8, key: &CtKey, backend: &Backend) -> bool {
    scope == scope::INTERNAL && conntrack::v4(&key.src_addr) == conntrack::v4(&backend.addr)
}

/// The counter of a new flow source-NATed in `scope`: internal flows are only ever hairpins.
#[inline(always)]
pub fn counter(scope: u8) -> Counter {
    if scope == scope::INTERNAL {
        Counter::Hairpinned
    } else {
        Counter::Masqueraded
    }
}

/// Inserts a new flow's reply entry source-NATed when it is to be: a hairpin always (to
/// `HAIRPIN_ADDR`), a flow [`wanted`] for masquerading if the node masquerades (to its
/// `snat_addr`; never a backend at that address itself, a host-network endpoint of this node
/// listed without its `nodeName`, whose replies to the node's own address would never leave
/// it). Tries ports of the configured range (for a hairpin the default range while
/// none is configured) until the reply key (backend -> address:port) is free or taken over. `reply_key` and
/// `reply` are the flow's plain reply key and entry and become the source-NATed ones. Returns
/// `Ok(false)`, having inserted nothing, when the flow is not source-NATed.
#[inline(always)]
pub fn insert_reply<F: Family, M: MapAccess>(
    maps: &mut M,
    scope: u8,
    key: &CtKey,
    backend: &Backend,
    reply_key: &mut CtKey,
    reply: &mut CtValue,
) -> Result<bool, Error> {
    // IPv6 flows are neither masqueraded nor hairpinned (yet): no IPv6 node or hairpin
    // address to take.
    if F::IPV6 {
        return Ok(false);
    }
    let hairpin = hairpin(scope, key, backend);
    if !hairpin && !wanted(scope, backend) {
        return Ok(false);
    }
    let mut config = maps.config();
    if hairpin {
        config.snat_addr = ipv4_mapped(HAIRPIN_ADDR);
        if config.snat_port_min == [0; 2] && config.snat_port_max == [0; 2] {
            config.snat_port_min = SNAT_PORT_MIN.to_be_bytes();
            config.snat_port_max = SNAT_PORT_MAX.to_be_bytes();
        }
    } else if ipv4_unmapped(&config.snat_addr).is_none() || config.snat_addr == backend.addr {
        return Ok(false);
    }
    mark(key, &config.snat_addr, reply_key, reply);
    let hash = port_hash(key, backend);
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let Some(port) = port(&config, hash, attempt) else {
            break;
        };
        reply_key.dst_port = port;
        if maps.insert_conntrack_new(reply_key, reply).is_ok() {
            return Ok(true);
        }
        if port_reuse::take_over(maps, reply_key, reply.last_seen_ns)
            && maps.insert_conntrack_new(reply_key, reply).is_ok()
        {
            return Ok(true);
        }
    }
    Err(Error::dropped(
        Counter::DropSnatPortsExhausted,
        reply.group_id,
    ))
}

/// Makes a new flow's reply key the backend's answer to the node (the port is set per
/// attempt), and makes its entry also rewrite the destination back to the client.
#[inline(always)]
fn mark(key: &CtKey, node_addr: &[u8; 16], reply_key: &mut CtKey, reply: &mut CtValue) {
    reply_key.dst_addr = *node_addr;
    reply.flags |= ct_flags::SNAT;
    reply.snat_addr = key.src_addr;
    reply.snat_port = key.src_port;
}

/// Where a flow starts looking for a port: a hash of the flow as the backend would see it
/// unmasqueraded (not the slot-selection hash, whose residues the flows of one backend share).
#[inline(always)]
fn port_hash(key: &CtKey, backend: &Backend) -> u32 {
    flow_hash(
        &key.src_addr,
        &backend.addr,
        key.src_port,
        backend.port,
        key.proto,
    )
}

/// The port (network byte order) a flow with `hash` tries at `attempt` (0-based): consecutive
/// ports of the configured range from a hash-derived offset, wrapping around. `None` when the
/// range is empty (min above max).
#[inline(always)]
fn port(config: &NodeConfig, hash: u32, attempt: u32) -> Option<[u8; 2]> {
    let min = u32::from(config.snat_port_min());
    let max = u32::from(config.snat_port_max());
    if max < min {
        return None;
    }
    let span = max - min + 1;
    let port = min + (hash % span + attempt % span) % span;
    Some((port as u16).to_be_bytes())
}

#[cfg(test)]
mod tests;
