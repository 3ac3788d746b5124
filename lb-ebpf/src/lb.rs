//! The load balancer, shared by the XDP and TC hooks: parse -> conntrack -> service ->
//! backend selection -> conntrack create -> rewrite.

use lb_common::{
    conntrack::ct_flags, ipv4_unmapped, BackendSlotKey, Counter, CtKey, CtValue, ServiceKey,
};

use crate::{
    conntrack,
    context::Packet,
    error::{Error, Verdict},
    maps::Maps,
    parse::{self, Endpoint, Ipv4Flow},
    rewrite::Side,
    select, stats,
};

/// Handles one packet: translates it if it belongs to a flow or a service, counts the outcome
/// and returns what the hook should do with it. `scope` is the hook's service lookup scope
/// (`lb_common::service::scope`).
#[inline(always)]
pub fn process<P: Packet, M: Maps>(pkt: &mut P, maps: &mut M, scope: u8) -> Verdict {
    stats::count(maps, Counter::Packets);
    match try_process(pkt, maps, scope) {
        Ok(outcome) => {
            stats::count(maps, outcome);
            Verdict::Pass
        }
        Err(e) => {
            stats::count(maps, e.reason);
            let verdict = e.verdict();
            if verdict == Verdict::Drop {
                stats::dropped(maps, e.service_id);
            }
            verdict
        }
    }
}

/// Translates the packet; returns the counter of the translation done.
#[inline(always)]
fn try_process<P: Packet, M: Maps>(pkt: &mut P, maps: &mut M, scope: u8) -> Result<Counter, Error> {
    let flow = parse::ipv4_flow(pkt)?;
    let key = conntrack::key_of(&flow);
    if let Some(entry) = maps.conntrack(&key) {
        if let Some((side, outcome)) = established(maps, &flow, &entry) {
            return translate(pkt, maps, &flow, side, &entry, outcome);
        }
        forget(maps, &key, &entry);
    }
    new_flow(pkt, maps, &flow, &key, scope)
}

/// Which side of a packet with a conntrack entry to translate, or `None` when the flow must
/// start over.
#[inline(always)]
fn established<M: Maps>(maps: &mut M, flow: &Ipv4Flow, entry: &CtValue) -> Option<(Side, Counter)> {
    match entry.flags {
        ct_flags::REPLY => Some((Side::Source, Counter::ReplyTranslated)),
        // Established flows keep their backend even after it left the service; only a new
        // connection attempt on a vanished backend starts over.
        ct_flags::FORWARD if !(flow.is_tcp_syn() && backend_gone(maps, entry)) => {
            Some((Side::Destination, Counter::ForwardTranslated))
        }
        _ => None,
    }
}

/// Assigns a backend to the first packet of a flow, records both directions and translates.
#[inline(always)]
fn new_flow<P: Packet, M: Maps>(
    pkt: &mut P,
    maps: &mut M,
    flow: &Ipv4Flow,
    key: &CtKey,
    scope: u8,
) -> Result<Counter, Error> {
    let service = maps
        .service(&ServiceKey {
            addr: key.dst_addr,
            port: key.dst_port,
            proto: key.proto,
            scope,
        })
        .ok_or(Error::untouched(Counter::NotService))?;
    let service_id = service.id;
    if service.backend_count == 0 {
        return Err(Error::dropped(Counter::DropNoBackend, service_id));
    }
    let missing = Error::dropped(Counter::DropBackendMissing, service_id);
    let slot = select::slot(key, service.backend_count);
    let backend_id = maps
        .slot(&BackendSlotKey { service_id, slot })
        .ok_or(missing)?;
    let backend = maps
        .backend(backend_id)
        .filter(|b| ipv4_unmapped(&b.addr).is_some())
        .ok_or(missing)?;

    let now = maps.now_ns();
    let (forward, reply_key, reply) =
        conntrack::new_flow(key, service_id, backend_id, &backend, now);
    let full = Error::dropped(Counter::DropConntrackFull, service_id);
    maps.insert_conntrack(key, &forward).map_err(|()| full)?;
    if maps.insert_conntrack(&reply_key, &reply).is_err() {
        maps.remove_conntrack(key);
        return Err(full);
    }
    let outcome = translate(
        pkt,
        maps,
        flow,
        Side::Destination,
        &forward,
        Counter::NewFlows,
    )?;
    stats::new_flow(maps, service_id);
    Ok(outcome)
}

/// Rewrites `side` of the packet to the entry's NAT address and accounts it to the service.
#[inline(always)]
fn translate<P: Packet, M: Maps>(
    pkt: &mut P,
    maps: &mut M,
    flow: &Ipv4Flow,
    side: Side,
    entry: &CtValue,
    outcome: Counter,
) -> Result<Counter, Error> {
    let to = Endpoint {
        addr: conntrack::v4(&entry.nat_addr),
        port: entry.nat_port,
    };
    let service_id = entry.service_id;
    pkt.rewrite(flow, side, to)
        .map_err(|_| Error::dropped(Counter::DropRewriteFailed, service_id))?;
    stats::translated(maps, service_id, pkt.frame_len());
    Ok(outcome)
}

/// Whether a forward entry's backend was removed or replaced since the flow started.
#[inline(always)]
fn backend_gone<M: Maps>(maps: &mut M, entry: &CtValue) -> bool {
    !conntrack::backend_matches(entry, maps.backend(entry.backend_id).as_ref())
}

/// Removes both entries of a flow, given its forward key and entry.
#[inline(always)]
fn forget<M: Maps>(maps: &mut M, key: &CtKey, entry: &CtValue) {
    maps.remove_conntrack(&conntrack::reply_key(key, entry.nat_addr, entry.nat_port));
    maps.remove_conntrack(key);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{checksums_valid, frame, FakeMaps, FrameSpec, SlicePacket, VIP};
    use lb_common::{ipv4_mapped, service::scope, Backend, ServiceValue, IPPROTO_TCP, IPPROTO_UDP};

    const SERVICE_ID: u32 = 3;
    const BACKENDS: [(u32, Endpoint); 2] = [
        (
            10,
            Endpoint {
                addr: [198, 18, 1, 1],
                port: 8080u16.to_be_bytes(),
            },
        ),
        (
            11,
            Endpoint {
                addr: [198, 18, 1, 2],
                port: 8080u16.to_be_bytes(),
            },
        ),
    ];

    fn backend(ep: Endpoint) -> Backend {
        Backend::new(ipv4_mapped(ep.addr), u16::from_be_bytes(ep.port))
    }

    /// A service at VIP with both backends, for `proto`.
    fn maps_with_service(proto: u8) -> FakeMaps {
        let mut maps = FakeMaps {
            now_ns: 10_000_000_000,
            ..FakeMaps::default()
        };
        let key = ServiceKey::new(
            ipv4_mapped(VIP.addr),
            u16::from_be_bytes(VIP.port),
            proto,
            scope::INTERNAL,
        );
        maps.services.insert(
            key,
            ServiceValue {
                id: SERVICE_ID,
                backend_count: BACKENDS.len() as u32,
                ..ServiceValue::default()
            },
        );
        for (slot, (id, ep)) in BACKENDS.iter().enumerate() {
            maps.backends.insert(*id, backend(*ep));
            let slot = slot as u32 + 1;
            maps.slots.insert(
                BackendSlotKey {
                    service_id: SERVICE_ID,
                    slot,
                },
                *id,
            );
        }
        maps
    }

    /// Runs `spec`'s frame through the pipeline; returns the verdict and the output frame.
    fn run(maps: &mut FakeMaps, spec: &FrameSpec) -> (Verdict, Vec<u8>) {
        let mut pkt = SlicePacket::new(frame(spec));
        let verdict = process(&mut pkt, maps, scope::INTERNAL);
        (verdict, pkt.bytes)
    }

    /// The backend the pipeline will pick for `spec`'s flow.
    fn chosen(spec: &FrameSpec) -> (u32, Endpoint) {
        let flow = parse::ipv4_flow(&SlicePacket::new(frame(spec))).unwrap();
        let slot = select::slot(&conntrack::key_of(&flow), BACKENDS.len() as u32);
        BACKENDS[slot as usize - 1]
    }

    fn ack(spec: &FrameSpec) -> FrameSpec {
        FrameSpec {
            tcp_flags: 0x10,
            ..spec.clone()
        }
    }

    #[test]
    fn new_flow_is_translated_to_the_selected_backend() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let syn = FrameSpec::tcp_syn();
        let (_, target) = chosen(&syn);
        let (verdict, out) = run(&mut maps, &syn);
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(out, frame(&FrameSpec { dst: target, ..syn }));
        assert!(checksums_valid(&out));
        assert_eq!(maps.conntrack.len(), 2);
        assert_eq!(maps.counter_value(Counter::Packets), 1);
        assert_eq!(maps.counter_value(Counter::NewFlows), 1);
        let stats = maps.stats_of(SERVICE_ID);
        assert_eq!(
            (stats.packets, stats.bytes, stats.new_flows),
            (1, out.len() as u64, 1)
        );
    }

    #[test]
    fn replies_are_translated_back_to_the_vip() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let syn = FrameSpec::tcp_syn();
        let (_, target) = chosen(&syn);
        run(&mut maps, &syn);
        let syn_ack = FrameSpec {
            src: target,
            tcp_flags: 0x12,
            ..syn.reversed()
        };
        let (verdict, out) = run(&mut maps, &syn_ack);
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            out,
            frame(&FrameSpec {
                src: VIP,
                ..syn_ack
            })
        );
        assert_eq!(maps.counter_value(Counter::ReplyTranslated), 1);
        assert_eq!(maps.stats_of(SERVICE_ID).packets, 2);
        assert_eq!(maps.stats_of(SERVICE_ID).new_flows, 1);
    }

    #[test]
    fn established_flows_keep_their_backend_when_it_leaves_the_service() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let syn = FrameSpec::tcp_syn();
        let (id, target) = chosen(&syn);
        run(&mut maps, &syn);
        maps.backends.remove(&id);
        maps.slots.clear();
        maps.services.values_mut().for_each(|s| s.backend_count = 0);
        let (verdict, out) = run(&mut maps, &ack(&syn));
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            out,
            frame(&FrameSpec {
                dst: target,
                ..ack(&syn)
            })
        );
        assert_eq!(maps.counter_value(Counter::ForwardTranslated), 1);
    }

    #[test]
    fn a_syn_for_a_removed_backend_selects_anew() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let syn = FrameSpec::tcp_syn();
        let (gone_id, gone) = chosen(&syn);
        run(&mut maps, &syn);
        // The service now has only the other backend, in slot 1.
        let (other_id, other) = *BACKENDS.iter().find(|(id, _)| *id != gone_id).unwrap();
        maps.backends.remove(&gone_id);
        maps.slots.clear();
        maps.slots.insert(
            BackendSlotKey {
                service_id: SERVICE_ID,
                slot: 1,
            },
            other_id,
        );
        maps.services.values_mut().for_each(|s| s.backend_count = 1);

        let (verdict, out) = run(&mut maps, &syn);
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            out,
            frame(&FrameSpec {
                dst: other,
                ..syn.clone()
            })
        );
        assert_eq!(maps.counter_value(Counter::NewFlows), 2);
        // The old reply entry is gone, the new one is there.
        let stale = conntrack::reply_key(&key(&syn), ipv4_mapped(gone.addr), gone.port);
        assert!(!maps.conntrack.contains_key(&stale));
        let fresh = conntrack::reply_key(&key(&syn), ipv4_mapped(other.addr), other.port);
        assert!(maps.conntrack.contains_key(&fresh));
        assert_eq!(maps.conntrack.len(), 2);
    }

    #[test]
    fn a_syn_for_a_replaced_backend_selects_anew() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let syn = FrameSpec::tcp_syn();
        let (id, _) = chosen(&syn);
        run(&mut maps, &syn);
        let moved = Endpoint {
            addr: [198, 18, 1, 99],
            port: 9090u16.to_be_bytes(),
        };
        maps.backends.insert(id, backend(moved));
        let (_, out) = run(&mut maps, &syn);
        assert_eq!(out, frame(&FrameSpec { dst: moved, ..syn }));
    }

    #[test]
    fn a_syn_for_a_live_backend_follows_conntrack() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let syn = FrameSpec::tcp_syn();
        let (_, target) = chosen(&syn);
        run(&mut maps, &syn);
        let (_, out) = run(&mut maps, &syn);
        assert_eq!(out, frame(&FrameSpec { dst: target, ..syn }));
        assert_eq!(maps.counter_value(Counter::ForwardTranslated), 1);
        assert_eq!(maps.counter_value(Counter::NewFlows), 1);
    }

    #[test]
    fn a_syn_for_a_removed_service_passes_untouched_and_forgets_the_flow() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let syn = FrameSpec::tcp_syn();
        let (id, _) = chosen(&syn);
        run(&mut maps, &syn);
        maps.services.clear();
        maps.backends.remove(&id);
        let (verdict, out) = run(&mut maps, &syn);
        assert_eq!((verdict, out), (Verdict::Pass, frame(&syn)));
        assert_eq!(maps.counter_value(Counter::NotService), 1);
        assert!(maps.conntrack.is_empty());
    }

    #[test]
    fn udp_flows_work_both_ways() {
        let mut maps = maps_with_service(IPPROTO_UDP);
        let query = FrameSpec::udp();
        let (_, target) = chosen(&query);
        let (_, out) = run(&mut maps, &query);
        assert_eq!(
            out,
            frame(&FrameSpec {
                dst: target,
                ..query.clone()
            })
        );
        let answer = FrameSpec {
            src: target,
            ..query.reversed()
        };
        let (_, out) = run(&mut maps, &answer);
        assert_eq!(out, frame(&FrameSpec { src: VIP, ..answer }));
    }

    #[test]
    fn other_traffic_passes_untouched() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let other_port = FrameSpec {
            dst: Endpoint {
                port: 443u16.to_be_bytes(),
                ..VIP
            },
            ..FrameSpec::tcp_syn()
        };
        let udp_same_port = FrameSpec::udp();
        for spec in [other_port, udp_same_port] {
            let (verdict, out) = run(&mut maps, &spec);
            assert_eq!((verdict, out), (Verdict::Pass, frame(&spec)));
        }
        assert_eq!(maps.counter_value(Counter::NotService), 2);
        assert!(maps.conntrack.is_empty());
    }

    #[test]
    fn malformed_packets_pass_untouched_and_are_counted() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let mut fragment = frame(&FrameSpec::tcp_syn());
        fragment[20] |= 0x20; // more fragments
        let mut pkt = SlicePacket::new(fragment.clone());
        assert_eq!(process(&mut pkt, &mut maps, scope::INTERNAL), Verdict::Pass);
        assert_eq!(pkt.bytes, fragment);
        assert_eq!(maps.counter_value(Counter::Fragment), 1);
        assert_eq!(maps.counter_value(Counter::Packets), 1);
    }

    #[test]
    fn a_service_without_backends_drops() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        maps.services.values_mut().for_each(|s| s.backend_count = 0);
        let (verdict, _) = run(&mut maps, &FrameSpec::tcp_syn());
        assert_eq!(verdict, Verdict::Drop);
        assert_eq!(maps.counter_value(Counter::DropNoBackend), 1);
        assert_eq!(maps.stats_of(SERVICE_ID).drops, 1);
        assert!(maps.conntrack.is_empty());
    }

    #[test]
    fn missing_slots_or_backends_drop() {
        let syn = FrameSpec::tcp_syn();
        let (id, _) = chosen(&syn);
        let mut no_slots = maps_with_service(IPPROTO_TCP);
        no_slots.slots.clear();
        let mut no_backend = maps_with_service(IPPROTO_TCP);
        no_backend.backends.remove(&id);
        let mut ipv6_backend = maps_with_service(IPPROTO_TCP);
        ipv6_backend.backends.get_mut(&id).unwrap().addr =
            [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        for mut maps in [no_slots, no_backend, ipv6_backend] {
            assert_eq!(run(&mut maps, &syn).0, Verdict::Drop);
            assert_eq!(maps.counter_value(Counter::DropBackendMissing), 1);
            assert_eq!(maps.stats_of(SERVICE_ID).drops, 1);
            assert!(maps.conntrack.is_empty());
        }
    }

    #[test]
    fn a_full_conntrack_drops_instead_of_translating_statelessly() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        maps.conntrack_full = true;
        let (verdict, out) = run(&mut maps, &FrameSpec::tcp_syn());
        assert_eq!(
            (verdict, out),
            (Verdict::Drop, frame(&FrameSpec::tcp_syn()))
        );
        assert_eq!(maps.counter_value(Counter::DropConntrackFull), 1);
    }

    #[test]
    fn a_failed_rewrite_drops() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let mut pkt = SlicePacket::new(frame(&FrameSpec::tcp_syn()));
        pkt.fail_stores = true;
        assert_eq!(process(&mut pkt, &mut maps, scope::INTERNAL), Verdict::Drop);
        assert_eq!(maps.counter_value(Counter::DropRewriteFailed), 1);
        assert_eq!(maps.counter_value(Counter::NewFlows), 0);
        assert_eq!(maps.stats_of(SERVICE_ID).drops, 1);
    }

    #[test]
    fn last_seen_is_refreshed_at_most_once_a_second() {
        let mut maps = maps_with_service(IPPROTO_TCP);
        let syn = FrameSpec::tcp_syn();
        run(&mut maps, &syn);
        let start = maps.now_ns;
        let last_seen = |maps: &FakeMaps| maps.conntrack[&key(&syn)].last_seen_ns;
        maps.now_ns = start + 500_000_000;
        run(&mut maps, &ack(&syn));
        assert_eq!(last_seen(&maps), start);
        maps.now_ns = start + 1_500_000_000;
        run(&mut maps, &ack(&syn));
        assert_eq!(last_seen(&maps), start + 1_500_000_000);
    }

    fn key(spec: &FrameSpec) -> CtKey {
        conntrack::key_of(&parse::ipv4_flow(&SlicePacket::new(frame(spec))).unwrap())
    }
}
