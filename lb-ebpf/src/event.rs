//! Typed events (`lb_common::event`) for the ring buffer `LB_EVENTS`, read by the agent: drops
//! for its log and `lb-agent monitor`; rejects, new flows and masquerade allocations for
//! `lb-agent monitor` only. Called only where a packet is dropped, rejected or starts a flow,
//! never for a packet of an established flow.
//!
//! The cgroup socket programs report their translations (new flows) and refused calls
//! (rejects, drops) the same way, at hook [`hook::SOCKET`], only while a monitor listens.
//!
//! A packet's drop is written when its level is enabled (`LB_EVENT_LEVEL`, set by the agent at load
//! from `--log-level`; a disabled level costs one comparison with a constant the verifier
//! prunes) or a monitor listens; the others only while a monitor listens (`LB_MONITOR`, one
//! array lookup). Fields are written through the reserved entry's pointer ([`MapAccess::write_event`]):
//! the XDP program has almost no stack to spare for a copy.

use lb_common::{
    event::{drop_level, hook, kind, level, Event},
    ipv4_mapped, Backend, Counter, CtKey,
};

use crate::{
    conntrack,
    context::Packet,
    family::Family,
    lb::Hook,
    maps::MapAccess,
    parse::FlowEnd,
    sock::{SockAddr, SockFlow},
    stats,
};

/// The [`hook`] constant of a packet of `P` handled at `at`.
#[inline(always)]
fn hook_of<P: Packet>(at: Hook) -> u8 {
    match at {
        Hook::Ingress { .. } => P::INGRESS_HOOK,
        Hook::Egress => hook::TC_EGRESS,
    }
}

/// Writes one event of a packet seen at `hook`, filled by `fill` after the time, interface
/// and hook.
#[inline(always)]
fn write<P: Packet, M: MapAccess>(pkt: &P, maps: &mut M, hook: u8, fill: impl FnOnce(&mut Event)) {
    write_at(maps, pkt.ifindex(), hook, fill);
}

/// Writes one event seen at `hook` on interface `ifindex`, filled by `fill` after them and
/// the time; an event the ring buffer has no room for is counted as
/// [`Counter::EventsLost`].
#[inline(always)]
fn write_at<M: MapAccess>(maps: &mut M, ifindex: u32, hook: u8, fill: impl FnOnce(&mut Event)) {
    let now = maps.now_ns();
    let written = maps.write_event(|event| {
        event.timestamp_ns = now;
        event.ifindex = ifindex;
        event.hook = hook;
        fill(event);
    });
    if !written {
        stats::count(maps, Counter::EventsLost);
    }
}

/// Copies a flow's original tuple into `event`.
#[inline(always)]
fn tuple(event: &mut Event, key: &CtKey) {
    event.proto = key.proto;
    event.src_addr = key.src_addr;
    event.dst_addr = key.dst_addr;
    event.src_port = key.src_port;
    event.dst_port = key.dst_port;
}

/// Reports the drop of a packet of service `group_id` for `reason` if its level is enabled or
/// a monitor listens, with its tuple when it parses as a TCP or UDP packet.
#[inline(always)]
pub fn dropped<F: Family, P: Packet, M: MapAccess>(
    pkt: &P,
    maps: &mut M,
    at: Hook,
    reason: Counter,
    group_id: u32,
) {
    let event_level = drop_level(reason);
    if event_level == level::OFF || (event_level > maps.event_level() && !maps.monitored()) {
        return;
    }
    let flow = F::parse(pkt).ok();
    write(pkt, maps, hook_of::<P>(at), |event| {
        event.kind = kind::DROP;
        event.level = event_level;
        event.reason = reason as u32;
        event.group_id = group_id;
        if let Some(flow) = &flow {
            tuple(event, &conntrack::key_of(flow));
        }
    });
}

/// Reports a new flow `key` rejected for `reason` (an ICMP error sent back), if a monitor
/// listens. Only ingress hooks reject.
#[inline(always)]
pub fn rejected<P: Packet, M: MapAccess>(
    pkt: &P,
    maps: &mut M,
    key: &CtKey,
    reason: Counter,
    group_id: u32,
) {
    if !maps.monitored() {
        return;
    }
    write(pkt, maps, P::INGRESS_HOOK, |event| {
        event.kind = kind::REJECT;
        event.reason = reason as u32;
        event.group_id = group_id;
        tuple(event, key);
    });
}

/// Reports a new flow `key` of service `group_id` balanced to `backend` (at an ingress hook),
/// if a monitor listens; `masqueraded`: it was also source-NATed, to its reply key's destination, counted
/// as `reason`.
#[inline(always)]
pub fn new_flow<P: Packet, M: MapAccess>(
    pkt: &P,
    maps: &mut M,
    key: &CtKey,
    group_id: u32,
    backend: &Backend,
    masqueraded: Option<(&CtKey, Counter)>,
) {
    if !maps.monitored() {
        return;
    }
    write(pkt, maps, P::INGRESS_HOOK, |event| {
        event.group_id = group_id;
        tuple(event, key);
        event.backend_addr = backend.addr;
        event.backend_port = backend.port;
        match masqueraded {
            Some((reply_key, reason)) => {
                event.kind = kind::MASQUERADE;
                event.reason = reason as u32;
                event.nat_addr = reply_key.dst_addr;
                event.nat_port = reply_key.dst_port;
            }
            None => {
                event.kind = kind::NEW_FLOW;
                event.reason = Counter::NewFlows as u32;
            }
        }
    });
}

/// Reports a socket call translated to `flow`'s backend (by `connect4`, or `sendmsg4` when
/// `sendmsg`), if a monitor listens.
#[inline(always)]
pub fn sock_flow<S: SockAddr, M: MapAccess>(
    sock: &mut S,
    maps: &mut M,
    sendmsg: bool,
    flow: &SockFlow,
) {
    if !maps.monitored() {
        return;
    }
    write_sock(sock, maps, sendmsg, flow.service, |event| {
        event.kind = kind::NEW_FLOW;
        event.reason = Counter::NewFlows as u32;
        event.group_id = flow.group_id;
        event.backend_addr = ipv4_mapped(flow.backend.addr);
        event.backend_port = flow.backend.port;
    });
}

/// Reports a socket call refused for `reason`, if a monitor listens: a reject when it fails
/// with `ECONNREFUSED`, else a drop at the reason's level. Not logged by the agent when no
/// monitor listens, as a packet's drop is: the caller has the error.
#[inline(always)]
pub fn sock_refused<S: SockAddr, M: MapAccess>(
    sock: &mut S,
    maps: &mut M,
    sendmsg: bool,
    reason: Counter,
    group_id: u32,
) {
    if !maps.monitored() {
        return;
    }
    let event_level = drop_level(reason);
    // Not translated: the call still names the address it asked for.
    let destination = sock.addr();
    write_sock(sock, maps, sendmsg, destination, |event| {
        event.kind = match event_level {
            level::OFF => kind::REJECT,
            _ => kind::DROP,
        };
        event.level = event_level;
        event.reason = reason as u32;
        event.group_id = group_id;
    });
}

/// Writes one event of a socket call to `destination` (hook [`hook::SOCKET`], no interface),
/// with the socket's protocol and local address as known, filled by `fill`.
#[inline(always)]
fn write_sock<S: SockAddr, M: MapAccess>(
    sock: &mut S,
    maps: &mut M,
    sendmsg: bool,
    destination: FlowEnd,
    fill: impl FnOnce(&mut Event),
) {
    let proto = sock.proto();
    let source = sock.source(sendmsg);
    let source_port = sock.source_port();
    write_at(maps, 0, hook::SOCKET, |event| {
        event.proto = proto;
        event.src_addr = ipv4_mapped(source);
        event.src_port = source_port;
        event.dst_addr = ipv4_mapped(destination.addr);
        event.dst_port = destination.port;
        fill(event);
    });
}

#[cfg(test)]
mod tests;
