//! Masquerading: external flows to backends on other nodes are also source-NATed to the node's
//! address and a port allocated for the flow, so that the backend answers this node, which
//! translates the answer back (see `lb_common::config` and `ct_flags::SNAT`).
//!
//! Hairpin: an internal flow from a pod balanced to itself is source-NATed the same way, to
//! `config::HAIRPIN_ADDR` (IPv6: `HAIRPIN_ADDR6`), so the pod does not receive its own address
//! as the source. Each family has its own node address (`NodeConfig::snat_addr`, `snat_addr6`);
//! the port range is shared.
//! A port taken by an idle or closed flow is taken over (see `port_reuse`).

use lb_common::{
    config::{SNAT_PORT_ATTEMPTS, SNAT_PORT_MAX, SNAT_PORT_MIN},
    conntrack::ct_flags,
    flow_hash,
    service::{backend_flags, scope},
    Backend, Counter, CtKey, CtValue,
};

use crate::{conntrack::NewFlowScratch, error::Error, family::Family, maps::MapAccess, port_reuse};

/// Whether a new flow found in `scope` to `backend` is to be masqueraded (if the node
/// masquerades at all): external flows to backends not on this node.
#[inline(always)]
fn wanted(scope: u8, backend: &Backend) -> bool {
    scope == scope::EXTERNAL && backend.flags & backend_flags::LOCAL == 0
}

/// Whether a new flow found in `scope` is a hairpin: an internal flow whose client, `key`'s
/// source, is the chosen backend itself (compared as the family's addresses: one word for
/// IPv4).
#[inline(always)]
fn hairpin<F: Family>(scope: u8, key: &CtKey, backend: &Backend) -> bool {
    scope == scope::INTERNAL && F::same(F::unmapped(&key.src_addr), F::unmapped(&backend.addr))
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
/// the family's hairpin address), a flow [`wanted`] for masquerading if the node masquerades
/// the family (to its `snat_addr` or `snat_addr6`; never a backend at that address itself, a
/// host-network endpoint of this node listed without its `nodeName`, whose replies to the
/// node's own address would never leave it). Tries ports of the configured range (for a hairpin the default range while
/// none is configured) until the reply key (backend -> address:port) is free or taken over.
/// `scratch` holds the flow's plain reply key and entry, which become the source-NATed ones.
/// Returns `Ok(false)`, having inserted nothing, when the flow is not source-NATed.
#[inline(always)]
pub fn insert_reply<F: Family, M: MapAccess>(
    maps: &mut M,
    scope: u8,
    key: &CtKey,
    scratch: &mut NewFlowScratch,
) -> Result<bool, Error> {
    let NewFlowScratch {
        reply_key,
        entry: reply,
        taken_key,
        backend,
    } = scratch;
    let backend = &*backend;
    let hairpin = hairpin::<F>(scope, key, backend);
    if !hairpin && !wanted(scope, backend) {
        return Ok(false);
    }
    let Some(config) = maps.config() else {
        return Ok(false);
    };
    let mut ports = (config.snat_port_min(), config.snat_port_max());
    if hairpin {
        reply_key.dst_addr = F::HAIRPIN;
        if ports == (0, 0) {
            ports = (SNAT_PORT_MIN, SNAT_PORT_MAX);
        }
    } else {
        match F::snat_addr(config) {
            Some(addr) if !F::same(F::unmapped(addr), F::unmapped(&backend.addr)) => {
                reply_key.dst_addr = *addr
            }
            _ => return Ok(false),
        }
    }
    mark(key, reply);
    let hash = port_hash(key, backend);
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let Some(port) = port(ports, hash, attempt) else {
            break;
        };
        reply_key.dst_port = port;
        if maps.insert_conntrack_new(reply_key, reply).is_ok() {
            return Ok(true);
        }
        if port_reuse::take_over(maps, reply_key, reply.last_seen_ns, taken_key)
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

/// Makes a new flow's entry, whose reply key now goes to the node's address (the port is set
/// per attempt), also rewrite the destination back to the client.
#[inline(always)]
fn mark(key: &CtKey, reply: &mut CtValue) {
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
/// ports of the range `(min, max)` from a hash-derived offset, wrapping around. `None` when
/// the range is empty (min above max).
#[inline(always)]
fn port((min, max): (u16, u16), hash: u32, attempt: u32) -> Option<[u8; 2]> {
    let (min, max) = (u32::from(min), u32::from(max));
    if max < min {
        return None;
    }
    let span = max - min + 1;
    let port = min + (hash % span + attempt % span) % span;
    Some((port as u16).to_be_bytes())
}

#[cfg(test)]
mod tests;
