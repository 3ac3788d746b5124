//! The load balancer, shared by the XDP and TC hooks and by both address families
//! ([`Front`]: each family's program is this pipeline instantiated for it): parse -> conntrack -> service ->
//! backend selection (session affinity, flow hash) -> conntrack create -> rewrite; or, for a
//! service without backends, a reject or a drop. ICMP errors about tracked flows go to
//! `icmp_error`. IP fragments follow their datagram's first fragment (`fragment`): only that
//! one may start a flow. At egress ([`Hook::Egress`]) the pipeline stops after conntrack: it
//! only translates the replies (and ICMP errors) the node's own stack sends for tracked flows.

use lb_common::{
    config::reply_path,
    conntrack::ct_flags,
    service::{scope, service_flags},
    Counter, CtKey, CtValue, ServiceKey, ServiceValue, IPPROTO_UDP,
};

use crate::{
    conntrack::{self, NewFlowScratch},
    context::Packet,
    error::{Error, Verdict},
    event,
    family::{Family, Ipv4, Ipv6},
    fragment, icmp_error, icmp_error6,
    maps::MapAccess,
    masquerade, pairs,
    parse::{self, Flow, FlowEnd, Ipv4Flow, Piece},
    port_reuse, reject, reject_limit,
    rewrite::{self, RewriteFailed, Side},
    select, stats,
};

/// Where the pipeline runs, and so what it may do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A packet entering the node: tracked flows are translated both ways, and a new flow to
    /// a Service looked up in `scope` (`lb_common::service::scope`) gets a backend. Every
    /// packet is counted.
    Ingress { scope: u8 },
    /// A packet the node's own stack sends (TC egress): only replies of tracked flows, and
    /// ICMP errors about them, are translated, e.g. a host-network backend answering a pod or
    /// an outside client. Only those and drops are counted, so `packets` stays the count of
    /// packets that entered.
    Egress,
}

impl Hook {
    /// TC ingress on pod-facing interfaces: traffic from pods, in the internal scope.
    pub const POD_FACING: Hook = Hook::Ingress {
        scope: scope::INTERNAL,
    };
    /// XDP on the external interface: traffic from outside the node, in the external scope.
    pub const EXTERNAL: Hook = Hook::Ingress {
        scope: scope::EXTERNAL,
    };
}

/// What was done to a packet the pipeline let through: its counter, and whether its new
/// addresses are ones the redirect reply path sends on itself: a reply translated back, a
/// masqueraded (or hairpinned) packet, a translated ICMP error. The first two are the packets
/// that may carry one of the node's own addresses as their source.
#[derive(Clone, Copy)]
pub struct Done {
    outcome: Counter,
    forward: bool,
}

impl Done {
    #[inline(always)]
    fn kept(outcome: Counter) -> Self {
        Done {
            outcome,
            forward: false,
        }
    }
}

/// Handles one packet: translates it if it belongs to a flow or (at ingress) a service, counts
/// the outcome and returns what the hook should do with it. At egress the node's stack has
/// routed the packet already: nothing is forwarded there.
#[inline(always)]
pub fn process<F: Front, P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    hook: Hook,
) -> Verdict {
    count_packet(maps, hook);
    let result = try_process::<F, P, M>(pkt, maps, hook);
    account::<F, P, M>(pkt, maps, hook, result)
}

/// Handles an IPv6 packet that may be an ICMPv6 error about a tracked flow, as [`process`]
/// would; its own program's (see `icmp_error6`).
#[inline(always)]
pub fn icmp6_errors<P: Packet, M: MapAccess>(pkt: &mut P, maps: &mut M, hook: Hook) -> Verdict {
    count_packet(maps, hook);
    let result = icmp_error6::translate(pkt, maps).map(|outcome| Done {
        outcome,
        forward: true,
    });
    account::<Ipv6, P, M>(pkt, maps, hook, result)
}

/// Counts a packet at ingress (egress counts only what it translates or drops).
#[inline(always)]
fn count_packet<M: MapAccess>(maps: &mut M, hook: Hook) {
    if hook != Hook::Egress {
        stats::count(maps, Counter::Packets);
    }
}

/// Counts what became of a packet and returns what the hook should do with it.
#[inline(always)]
fn account<F: Family, P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    hook: Hook,
    result: Result<Done, Error>,
) -> Verdict {
    let counts_all = hook != Hook::Egress;
    match result {
        Ok(done) => {
            stats::count(maps, done.outcome);
            if matches!(
                done.outcome,
                Counter::RejectNoBackend | Counter::RejectUnexposedPort
            ) {
                Verdict::SendBack
            } else if done.forward
                && counts_all
                && maps
                    .config()
                    .is_some_and(|config| config.reply_path == reply_path::REDIRECT)
            {
                Verdict::Forward
            } else {
                Verdict::Pass
            }
        }
        Err(e) => {
            let verdict = e.verdict();
            if counts_all || verdict == Verdict::Drop {
                stats::count(maps, e.reason);
            }
            if verdict == Verdict::Drop {
                stats::dropped(maps, e.group_id);
                event::dropped::<F, P, M>(pkt, maps, hook, e.reason, e.group_id);
            }
            verdict
        }
    }
}

/// What a family's front end made of a packet: a TCP or UDP flow for the pipeline, or a
/// packet it handled itself.
pub enum Start<F: Family> {
    #[doc(hidden)]
    Flow(Flow<F>),
    Done(Done),
}

/// A family's front end: parses the packet into a flow, or handles what only this family has
/// (IPv4: ICMP errors about tracked flows and fragments).
pub trait Front: Family {
    #[doc(hidden)]
    fn start<P: Packet, M: MapAccess>(
        pkt: &mut P,
        maps: &mut M,
        hook: Hook,
    ) -> Result<Start<Self>, Error>;

    /// Turns the packet of `flow` into the port unreachable answering it (`reject`).
    fn port_unreachable<P: Packet>(pkt: &mut P, flow: &Flow<Self>) -> Result<(), RewriteFailed>;
}

impl Front for Ipv4 {
    #[inline(always)]
    fn start<P: Packet, M: MapAccess>(
        pkt: &mut P,
        maps: &mut M,
        hook: Hook,
    ) -> Result<Start<Self>, Error> {
        match parse::ipv4_flow(pkt) {
            Ok(flow) => Ok(Start::Flow(flow)),
            Err(e) if e.reason == Counter::OtherProtocol => {
                let outcome = icmp_error::translate(pkt, maps)?;
                Ok(Start::Done(Done {
                    outcome,
                    forward: true,
                }))
            }
            Err(e) if e.reason == Counter::Fragment => {
                let (mut flow, piece) = parse::fragment_flow(pkt)?;
                if hook != Hook::Egress {
                    stats::count(maps, Counter::Fragment);
                }
                fragment::follow(pkt, maps, &mut flow, piece)?;
                if piece == Piece::Later {
                    return later_fragment(pkt, maps, &flow, hook).map(Start::Done);
                }
                Ok(Start::Flow(flow))
            }
            Err(e) => Err(e),
        }
    }

    #[inline(always)]
    fn port_unreachable<P: Packet>(pkt: &mut P, flow: &Ipv4Flow) -> Result<(), RewriteFailed> {
        reject::port_unreachable(pkt, flow)
    }
}

/// IPv6: TCP and UDP only; ICMPv6 errors about them have their own programs
/// ([`icmp6_errors`]), other ICMPv6 (NDP above all) and fragments pass untouched.
impl Front for Ipv6 {
    #[inline(always)]
    fn start<P: Packet, M: MapAccess>(
        pkt: &mut P,
        _: &mut M,
        _: Hook,
    ) -> Result<Start<Self>, Error> {
        parse::ipv6_flow(pkt).map(Start::Flow)
    }

    #[inline(always)]
    fn port_unreachable<P: Packet>(pkt: &mut P, flow: &Flow<Ipv6>) -> Result<(), RewriteFailed> {
        reject::port_unreachable6(pkt, flow)
    }
}

/// Translates the packet, or turns it into a reject; says what was done.
#[inline(always)]
fn try_process<F: Front, P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    hook: Hook,
) -> Result<Done, Error> {
    let flow = match F::start(pkt, maps, hook)? {
        Start::Flow(flow) => flow,
        Start::Done(done) => return Ok(done),
    };
    let key = conntrack::key_of(&flow);
    let Hook::Ingress { scope } = hook else {
        return reply(pkt, maps, &flow, &key).map(Done::kept);
    };
    if let Some(found) = maps.conntrack(&key) {
        let entry = &found.entry;
        match established(maps, &flow, entry) {
            Some((side, outcome)) if pairs::whole(maps, &key, &found, side) => {
                port_reuse::note_connection_end(maps, &flow, &key, entry);
                let outcome = translate(pkt, maps, &flow, side, entry, outcome)?;
                return Ok(Done {
                    outcome,
                    forward: side == Side::Source || entry.flags & ct_flags::SNAT != 0,
                });
            }
            // Its reply key belongs to another flow now: only the forward entry is this one's.
            Some(_) => maps.remove_conntrack(&key),
            None => forget(maps, &key, entry),
        }
    }
    new_flow(pkt, maps, &flow, &key, scope)
}

/// At egress: translates a reply of a tracked flow back to the frontend; anything else,
/// including a packet matching a forward entry, passes untouched and the entries stay.
#[inline(always)]
fn reply<F: Family, P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    flow: &Flow<F>,
    key: &CtKey,
) -> Result<Counter, Error> {
    let found = maps
        .conntrack(key)
        .filter(|found| found.entry.flags & ct_flags::DIRECTION == ct_flags::REPLY)
        .ok_or(Error::untouched(Counter::NotService))?;
    pairs::reply_whole(maps, key, &found);
    port_reuse::note_connection_end(maps, flow, key, &found.entry);
    translate(
        pkt,
        maps,
        flow,
        Side::Source,
        &found.entry,
        Counter::ReplyTranslated,
    )
}

/// Which side of a packet with a conntrack entry to translate, or `None` when the flow must
/// start over.
#[inline(always)]
fn established<F: Family, M: MapAccess>(
    maps: &mut M,
    flow: &Flow<F>,
    entry: &CtValue,
) -> Option<(Side, Counter)> {
    match entry.flags & ct_flags::DIRECTION {
        ct_flags::REPLY => Some((Side::Source, Counter::ReplyTranslated)),
        // Established TCP connections (SCTP associations) keep their backend even after it
        // left the service, so they can finish; a new connection attempt on a vanished backend
        // starts over. UDP has no connection to finish: its flow moves on rather than feed a
        // backend that is gone (kube-proxy deletes such conntrack entries for the same reason).
        // A SYN (INIT) on a flow that was closing is a new connection reusing the tuple.
        ct_flags::FORWARD
            if !(restarts_when_gone(flow) && backend_gone(maps, entry)
                || flow.is_connection_start() && entry.flags & ct_flags::CLOSING != 0) =>
        {
            Some((Side::Destination, Counter::ForwardTranslated))
        }
        _ => None,
    }
}

/// Assigns a backend to the first packet of a flow, records both directions and translates.
#[inline(always)]
fn new_flow<F: Front, P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    flow: &Flow<F>,
    key: &CtKey,
    scope: u8,
) -> Result<Done, Error> {
    let Some(service) = maps.service(&ServiceKey {
        addr: key.dst_addr,
        port: key.dst_port,
        proto: key.proto,
        scope,
    }) else {
        return not_service(pkt, maps, flow, key).map(Done::kept);
    };
    let group_id = service.group_id;
    checksum_verified::<F, P>(pkt)?;
    if service.flags & service_flags::SOURCE_RANGES != 0
        && !maps.source_allowed(group_id, &key.src_addr)
    {
        return Err(Error::dropped(Counter::DropSourceRange, group_id));
    }
    if service.backend_count == 0 {
        return no_backend(pkt, maps, flow, key, &service).map(Done::kept);
    }
    let missing = Error::dropped(Counter::DropBackendMissing, group_id);
    let now = maps.now_ns();
    let choice = select::choose(maps, &key.src_addr, || select::flow(key), &service, now);
    let (slot, backend_id) = choice.ok_or(missing)?;
    let full = Error::dropped(Counter::DropConntrackFull, group_id);
    // SAFETY: this CPU's map memory (or the test maps' own box), which nothing else touches
    // while this packet is processed. Never null in practice: one element of a per-CPU array.
    let Some(scratch) = (unsafe { maps.new_flow_scratch().as_mut() }) else {
        return Err(full);
    };
    // The reply entry goes in first: masquerading must find it a free key before the flow
    // exists. One value serves as both entries.
    scratch.backend = select::backend::<F, M>(maps, backend_id, group_id)?;
    scratch.entry = conntrack::reply_entry(key, group_id, backend_id, now);
    scratch.reply_key = conntrack::reply_key(key, scratch.backend.addr, scratch.backend.port);
    let masqueraded = masquerade::insert_reply::<F, M>(maps, scope, key, scratch)?;
    let NewFlowScratch {
        reply_key,
        entry,
        backend,
        ..
    } = scratch;
    if !masqueraded {
        maps.insert_conntrack(reply_key, entry).map_err(|()| full)?;
    }
    conntrack::make_forward(entry, backend, reply_key);
    if maps.insert_conntrack(key, entry).is_err() {
        maps.remove_conntrack(reply_key);
        return Err(full);
    }
    let outcome = translate(pkt, maps, flow, Side::Destination, entry, Counter::NewFlows)?;
    select::remember(maps, &key.src_addr, &service, (slot, backend_id), now);
    stats::new_flow(maps, group_id);
    let snat = masqueraded.then(|| (&*reply_key, masquerade::counter(scope)));
    if let Some((_, counter)) = snat {
        stats::count(maps, counter);
    }
    event::new_flow(pkt, maps, key, group_id, backend, snat);
    Ok(Done {
        outcome,
        forward: masqueraded,
    })
}

/// A new flow to no Service: passed untouched, unless its destination is a ClusterIP (on a
/// port or protocol the Service does not expose), which kube-proxy's nftables mode rejects,
/// or another address inside the service CIDRs, which it drops.
#[inline(always)]
fn not_service<F: Front, P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    flow: &Flow<F>,
    key: &CtKey,
) -> Result<Counter, Error> {
    if !maps.is_cluster_ip(&key.dst_addr) {
        // Inside the service CIDRs, no Service holds the address (kube-proxy nftables'
        // `cluster-ips-check` drops it); elsewhere the flow is simply not ours.
        return Err(match maps.in_service_cidr(&key.dst_addr) {
            true => Error::dropped(Counter::DropUnallocatedServiceIp, 0),
            false => Error::untouched(Counter::NotService),
        });
    }
    checksum_verified::<F, P>(pkt)?;
    if !F::may_answer(&flow.src.addr) {
        return Err(Error::dropped(Counter::DropUnexposedPort, 0));
    }
    if !reject_limit::allow(maps, &key.src_addr) {
        return Err(Error::dropped(Counter::DropRejectSuppressed, 0));
    }
    F::port_unreachable(pkt, flow).map_err(|_| Error::dropped(Counter::DropRewriteFailed, 0))?;
    event::rejected(pkt, maps, key, Counter::RejectUnexposedPort, 0);
    Ok(Counter::RejectUnexposedPort)
}

/// A new flow for a service without a usable backend: rejected with ICMP port unreachable
/// (kube-proxy's REJECT), or dropped when the service says so, no ICMP error may be sent or the
/// reject is over its rate limit (counted as the service's drop, not its reject).
#[inline(always)]
fn no_backend<F: Front, P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    flow: &Flow<F>,
    key: &CtKey,
    service: &ServiceValue,
) -> Result<Counter, Error> {
    let group_id = service.group_id;
    if service.flags & service_flags::DROP_IF_NO_BACKEND != 0 {
        return Err(Error::dropped(Counter::DropNoBackend, group_id));
    }
    if !F::may_answer(&flow.src.addr) {
        return Err(Error::dropped(Counter::DropRejectSource, group_id));
    }
    if !reject_limit::allow(maps, &key.src_addr) {
        return Err(Error::dropped(Counter::DropRejectSuppressed, group_id));
    }
    F::port_unreachable(pkt, flow)
        .map_err(|_| Error::dropped(Counter::DropRewriteFailed, group_id))?;
    stats::rejected(maps, group_id);
    event::rejected(pkt, maps, key, Counter::RejectNoBackend, group_id);
    Ok(Counter::RejectNoBackend)
}

/// A later fragment of a tracked flow's datagram: its addresses translated as the flow's
/// packets are (it has no ports to rewrite). It never starts a flow: without one it passes.
#[inline(always)]
fn later_fragment<P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    flow: &Ipv4Flow,
    hook: Hook,
) -> Result<Done, Error> {
    let untracked = Error::untouched(Counter::NotService);
    let entry = maps
        .conntrack(&conntrack::key_of(flow))
        .ok_or(untracked)?
        .entry;
    let (side, outcome) = match hook {
        Hook::Ingress { .. } => established(maps, flow, &entry),
        Hook::Egress => (entry.flags & ct_flags::DIRECTION == ct_flags::REPLY)
            .then_some((Side::Source, Counter::ReplyTranslated)),
    }
    .ok_or(untracked)?;
    let outcome = translate_ends(pkt, maps, flow, side, &entry, outcome, false)?;
    Ok(Done {
        outcome,
        forward: hook != Hook::Egress
            && (side == Side::Source || entry.flags & ct_flags::SNAT != 0),
    })
}

/// Rewrites `side` of the packet to the entry's NAT address (and, for a masqueraded flow, the
/// other side to its SNAT address) and accounts it to the service.
#[inline(always)]
fn translate<F: Family, P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    flow: &Flow<F>,
    side: Side,
    entry: &CtValue,
    outcome: Counter,
) -> Result<Counter, Error> {
    translate_ends(pkt, maps, flow, side, entry, outcome, true)
}

/// [`translate`], rewriting addresses and ports (`with_ports`), or the addresses only (a later
/// fragment's, see `rewrite::addresses`). Callers pass a constant: each copy has one of them.
#[inline(always)]
fn translate_ends<F: Family, P: Packet, M: MapAccess>(
    pkt: &mut P,
    maps: &mut M,
    flow: &Flow<F>,
    side: Side,
    entry: &CtValue,
    outcome: Counter,
    with_ports: bool,
) -> Result<Counter, Error> {
    let to = FlowEnd {
        addr: *F::unmapped(&entry.nat_addr),
        port: entry.nat_port,
    };
    let group_id = entry.group_id;
    let failed = Error::dropped(Counter::DropRewriteFailed, group_id);
    rewrite_end(pkt, flow, side, to, with_ports).map_err(|_| failed)?;
    if entry.flags & ct_flags::SNAT != 0 {
        let other = FlowEnd {
            addr: *F::unmapped(&entry.snat_addr),
            port: entry.snat_port,
        };
        rewrite_end(pkt, flow, side.other(), other, with_ports).map_err(|_| failed)?;
    }
    stats::translated(maps, group_id, pkt.frame_len());
    Ok(outcome)
}

/// Rewrites `side` of the packet to `to`: address and port (`with_ports`), or the address only.
/// A function, not a closure: closures are outlined at opt-level "s", and the call's stack
/// frame would add to the program's.
#[inline(always)]
fn rewrite_end<F: Family, P: Packet>(
    pkt: &mut P,
    flow: &Flow<F>,
    side: Side,
    to: FlowEnd<F::Addr>,
    with_ports: bool,
) -> Result<(), RewriteFailed> {
    if with_ports {
        pkt.rewrite(flow, side, to)
    } else {
        rewrite::addresses(pkt, flow, side, to)
    }
}

/// Passes a packet whose IPv4 header checksum is wrong on untouched before anything is
/// tracked or answered for it: the kernel drops it after XDP and TC anyway. Packets of
/// tracked flows are not checked (their rewrite keeps a wrong checksum wrong).
#[inline(always)]
fn checksum_verified<F: Family, P: Packet>(pkt: &P) -> Result<(), Error> {
    if F::IPV6 || parse::ipv4_checksum_valid(pkt) {
        Ok(())
    } else {
        Err(Error::untouched(Counter::BadIpv4Checksum))
    }
}

/// Whether a packet of an established flow starts the flow over when its backend is gone:
/// a TCP SYN or SCTP INIT, or any UDP datagram.
#[inline(always)]
fn restarts_when_gone<F: Family>(flow: &Flow<F>) -> bool {
    flow.proto == IPPROTO_UDP || flow.is_connection_start()
}

/// Whether a forward entry's backend was removed or replaced since the flow started.
#[inline(always)]
fn backend_gone<M: MapAccess>(maps: &mut M, entry: &CtValue) -> bool {
    !conntrack::backend_matches(entry, maps.backend(entry.backend_id).as_ref())
}

/// Removes both entries of a flow, given its forward key and entry.
#[inline(always)]
fn forget<M: MapAccess>(maps: &mut M, key: &CtKey, entry: &CtValue) {
    maps.remove_conntrack(&entry.reply_key(key));
    maps.remove_conntrack(key);
}

#[cfg(test)]
mod tests;
