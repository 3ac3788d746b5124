use super::*;
use crate::affinity;
use crate::testing::{checksums_valid, frame, FakeMaps, FrameSpec, SlicePacket, CLIENT, VIP};
use lb_common::{
    ipv4_mapped,
    net::{sctp_chunk, tcp_flags},
    service::scope,
    Backend, BackendSlotKey, FragKey, FragPorts, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_frames::Frame;
use std::net::SocketAddrV4;

const GROUP_ID: u32 = 3;
const BACKENDS: [(u32, FlowEnd); 2] = [
    (
        10,
        FlowEnd {
            addr: [198, 18, 1, 1],
            port: 8080u16.to_be_bytes(),
        },
    ),
    (
        11,
        FlowEnd {
            addr: [198, 18, 1, 2],
            port: 8080u16.to_be_bytes(),
        },
    ),
];

fn backend(ep: FlowEnd) -> Backend {
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
            group_id: GROUP_ID,
            backend_count: BACKENDS.len() as u32,
            ..ServiceValue::default()
        },
    );
    for (slot, (id, ep)) in BACKENDS.iter().enumerate() {
        maps.backends.insert(*id, backend(*ep));
        let slot = slot as u32 + 1;
        maps.slots.insert(
            BackendSlotKey {
                group_id: GROUP_ID,
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
    let verdict = process::<Ipv4, _, _>(
        &mut pkt,
        maps,
        Hook::Ingress {
            scope: scope::INTERNAL,
        },
    );
    (verdict, pkt.bytes)
}

/// The backend the pipeline will pick for `spec`'s flow.
fn chosen(spec: &FrameSpec) -> (u32, FlowEnd) {
    let flow = parse::ipv4_flow(&SlicePacket::new(frame(spec))).unwrap();
    let slot = select::slot(
        select::flow(&conntrack::key_of(&flow)),
        BACKENDS.len() as u32,
    );
    BACKENDS[slot as usize - 1]
}

fn ack(spec: &FrameSpec) -> FrameSpec {
    FrameSpec {
        tcp_flags: tcp_flags::ACK,
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
    let stats = maps.stats_of(GROUP_ID);
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
        tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
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
    assert_eq!(maps.stats_of(GROUP_ID).packets, 2);
    assert_eq!(maps.stats_of(GROUP_ID).new_flows, 1);
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
    let other = only_the_other_backend(&mut maps, gone_id);

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

/// Leaves only the backend other than `gone_id` in the service, in slot 1; returns it.
fn only_the_other_backend(maps: &mut FakeMaps, gone_id: u32) -> FlowEnd {
    let (other_id, other) = *BACKENDS.iter().find(|(id, _)| *id != gone_id).unwrap();
    maps.backends.remove(&gone_id);
    maps.slots.clear();
    maps.slots.insert(
        BackendSlotKey {
            group_id: GROUP_ID,
            slot: 1,
        },
        other_id,
    );
    maps.services.values_mut().for_each(|s| s.backend_count = 1);
    other
}

#[test]
fn a_udp_flow_whose_backend_left_moves_to_a_live_one() {
    let mut maps = maps_with_service(IPPROTO_UDP);
    let udp = FrameSpec::udp();
    let (gone_id, gone) = chosen(&udp);
    run(&mut maps, &udp);
    let other = only_the_other_backend(&mut maps, gone_id);

    let (verdict, out) = run(&mut maps, &udp);
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(
        out,
        frame(&FrameSpec {
            dst: other,
            ..udp.clone()
        })
    );
    assert_eq!(maps.counter_value(Counter::NewFlows), 2);
    let stale = conntrack::reply_key(&key(&udp), ipv4_mapped(gone.addr), gone.port);
    assert!(!maps.conntrack.contains_key(&stale));
    assert_eq!(maps.conntrack.len(), 2);
    // The live backend's answers come back from the VIP.
    let answer = FrameSpec {
        src: other,
        ..udp.reversed()
    };
    let (_, out) = run(&mut maps, &answer);
    assert_eq!(out, frame(&FrameSpec { src: VIP, ..answer }));
}

#[test]
fn a_udp_flow_keeps_a_live_backend_when_the_slots_change() {
    let mut maps = maps_with_service(IPPROTO_UDP);
    let udp = FrameSpec::udp();
    let (_, target) = chosen(&udp);
    run(&mut maps, &udp);
    for backend in maps.slots.values_mut() {
        *backend = BACKENDS[usize::from(*backend == BACKENDS[0].0)].0;
    }
    let (_, out) = run(&mut maps, &udp);
    assert_eq!(out, frame(&FrameSpec { dst: target, ..udp }));
    assert_eq!(maps.counter_value(Counter::ForwardTranslated), 1);
}

#[test]
fn a_syn_for_a_replaced_backend_selects_anew() {
    let mut maps = maps_with_service(IPPROTO_TCP);
    let syn = FrameSpec::tcp_syn();
    let (id, _) = chosen(&syn);
    run(&mut maps, &syn);
    let moved = FlowEnd {
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

/// A TCP SYN to the VIP on a port the TCP service does not expose, and UDP to its port.
fn unexposed_by_the_tcp_service() -> [FrameSpec; 2] {
    let other_port = FrameSpec {
        dst: FlowEnd {
            port: 443u16.to_be_bytes(),
            ..VIP
        },
        ..FrameSpec::tcp_syn()
    };
    [other_port, FrameSpec::udp()]
}

#[test]
fn other_traffic_passes_untouched() {
    let mut maps = maps_with_service(IPPROTO_TCP);
    for spec in unexposed_by_the_tcp_service() {
        let (verdict, out) = run(&mut maps, &spec);
        assert_eq!((verdict, out), (Verdict::Pass, frame(&spec)));
    }
    assert_eq!(maps.counter_value(Counter::NotService), 2);
    assert!(maps.conntrack.is_empty());
}

/// `maps_with_service(proto)` with VIP listed as a ClusterIP.
fn cluster_ip_service(proto: u8) -> FakeMaps {
    let mut maps = maps_with_service(proto);
    maps.cluster_ips.push(ipv4_mapped(VIP.addr));
    maps
}

#[test]
fn a_cluster_ip_rejects_ports_and_protocols_it_does_not_expose() {
    let mut maps = cluster_ip_service(IPPROTO_TCP);
    for spec in unexposed_by_the_tcp_service() {
        let (verdict, out) = run(&mut maps, &spec);
        assert_eq!(verdict, Verdict::SendBack);
        let original = frame(&spec);
        assert_eq!(&out[0..6], &original[6..12], "back to the sender's MAC");
        assert_eq!(out[14 + 9], 1, "ICMP");
        assert_eq!(&out[26..34], &[VIP.addr, spec.src.addr].concat());
        assert_eq!(&out[34..36], &[3, 3], "port unreachable");
        assert_eq!(&out[42..62], &original[14..34], "quotes the IPv4 header");
    }
    assert_eq!(maps.counter_value(Counter::RejectUnexposedPort), 2);
    assert_eq!(maps.counter_value(Counter::NotService), 0);
    assert!(maps.conntrack.is_empty());
}

#[test]
fn a_cluster_ip_still_serves_the_ports_it_exposes() {
    let mut maps = cluster_ip_service(IPPROTO_TCP);
    let syn = FrameSpec::tcp_syn();
    let (verdict, out) = run(&mut maps, &syn);
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(
        out,
        frame(&FrameSpec {
            dst: chosen(&syn).1,
            ..syn
        })
    );
    assert_eq!(maps.counter_value(Counter::RejectUnexposedPort), 0);
}

#[test]
fn an_unexposed_port_from_a_broadcast_source_is_dropped() {
    let mut maps = cluster_ip_service(IPPROTO_TCP);
    let spec = FrameSpec {
        src: FlowEnd {
            addr: [255, 255, 255, 255],
            ..CLIENT
        },
        ..FrameSpec::udp()
    };
    assert_eq!(run(&mut maps, &spec), (Verdict::Drop, frame(&spec)));
    assert_eq!(maps.counter_value(Counter::DropUnexposedPort), 1);
}

#[test]
fn an_unexposed_port_reject_that_cannot_be_written_drops() {
    let mut maps = cluster_ip_service(IPPROTO_TCP);
    let mut pkt = SlicePacket::new(frame(&FrameSpec::udp()));
    pkt.fail_resize = true;
    assert_eq!(
        process::<Ipv4, _, _>(&mut pkt, &mut maps, Hook::POD_FACING),
        Verdict::Drop
    );
    assert_eq!(maps.counter_value(Counter::DropRewriteFailed), 1);
    assert_eq!(maps.counter_value(Counter::RejectUnexposedPort), 0);
}

/// `cluster_ip_service(proto)` with the service CIDR 198.19.0.0/24 around VIP.
fn in_service_cidr(proto: u8) -> FakeMaps {
    let mut maps = cluster_ip_service(proto);
    maps.service_cidrs.push(([198, 19, 0, 0], 24));
    maps
}

/// A TCP SYN and a UDP datagram to `addr` on the VIP's port.
fn to_addr(addr: [u8; 4]) -> [FrameSpec; 2] {
    [FrameSpec::tcp_syn(), FrameSpec::udp()].map(|spec| FrameSpec {
        dst: FlowEnd { addr, ..VIP },
        ..spec
    })
}

#[test]
fn an_unallocated_address_in_the_service_cidrs_is_dropped() {
    let mut maps = in_service_cidr(IPPROTO_TCP);
    for spec in to_addr([198, 19, 0, 2])
        .into_iter()
        .chain(to_addr([198, 19, 0, 255]))
    {
        assert_eq!(run(&mut maps, &spec), (Verdict::Drop, frame(&spec)));
    }
    assert_eq!(maps.counter_value(Counter::DropUnallocatedServiceIp), 4);
    assert_eq!(maps.counter_value(Counter::NotService), 0);
    assert!(maps.conntrack.is_empty());
}

#[test]
fn outside_the_service_cidrs_and_on_cluster_ips_nothing_changes() {
    let mut maps = in_service_cidr(IPPROTO_TCP);
    for spec in to_addr([198, 19, 1, 0]) {
        assert_eq!(run(&mut maps, &spec), (Verdict::Pass, frame(&spec)));
    }
    assert_eq!(maps.counter_value(Counter::NotService), 2);
    // The ClusterIP still rejects what it does not expose and serves what it does.
    for spec in unexposed_by_the_tcp_service() {
        assert_eq!(run(&mut maps, &spec).0, Verdict::SendBack);
    }
    let syn = FrameSpec::tcp_syn();
    let (verdict, out) = run(&mut maps, &syn);
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(
        out,
        frame(&FrameSpec {
            dst: chosen(&syn).1,
            ..syn
        })
    );
    assert_eq!(maps.counter_value(Counter::RejectUnexposedPort), 2);
    assert_eq!(maps.counter_value(Counter::DropUnallocatedServiceIp), 0);
}

#[test]
fn an_established_flow_outlives_its_service_in_the_service_cidrs() {
    let mut maps = in_service_cidr(IPPROTO_TCP);
    let syn = FrameSpec::tcp_syn();
    run(&mut maps, &syn);
    // The Service is deleted: its address is unallocated now, but only new flows are
    // dropped (kube-proxy checks `ct state new`).
    maps.services.clear();
    maps.cluster_ips.clear();
    let (verdict, out) = run(&mut maps, &ack(&syn));
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(
        out,
        frame(&FrameSpec {
            dst: chosen(&syn).1,
            ..ack(&syn)
        })
    );
    assert_eq!(maps.counter_value(Counter::ForwardTranslated), 1);
    assert_eq!(maps.counter_value(Counter::DropUnallocatedServiceIp), 0);
}

#[test]
fn malformed_packets_pass_untouched_and_are_counted() {
    let mut maps = maps_with_service(IPPROTO_TCP);
    let mut fragment = frame(&FrameSpec::tcp_syn());
    fragment[21] = 8; // a later fragment, whose first one was not seen
    let mut pkt = SlicePacket::new(fragment.clone());
    assert_eq!(
        process::<Ipv4, _, _>(
            &mut pkt,
            &mut maps,
            Hook::Ingress {
                scope: scope::INTERNAL
            }
        ),
        Verdict::Pass
    );
    assert_eq!(pkt.bytes, fragment);
    assert_eq!(maps.counter_value(Counter::Fragment), 1);
    assert_eq!(maps.counter_value(Counter::FragmentUnknown), 1);
    assert_eq!(maps.counter_value(Counter::Packets), 1);
}

#[test]
fn fragments_follow_their_first_fragment_both_ways() {
    let mut maps = maps_with_service(IPPROTO_UDP);
    let (_, target) = chosen(&FrameSpec::udp());
    let datagram = |src: FlowEnd, dst: FlowEnd| {
        let end = |e: FlowEnd| SocketAddrV4::new(e.addr.into(), u16::from_be_bytes(e.port));
        Frame::udp(end(src), end(dst), &[7; 3000])
    };
    let request = datagram(CLIENT, VIP);
    let answer = datagram(target, CLIENT);
    for (sent, expected) in [
        (request.clone(), datagram(CLIENT, target)),
        (answer, datagram(VIP, CLIENT)),
    ] {
        let mut out = Vec::new();
        for fragment in sent.to_fragments(1500) {
            let mut pkt = SlicePacket::new(fragment);
            assert_eq!(
                process::<Ipv4, _, _>(&mut pkt, &mut maps, Hook::POD_FACING),
                Verdict::Pass
            );
            out.push(pkt.bytes);
        }
        assert_eq!(out, expected.to_fragments(1500));
    }
    assert_eq!(maps.counter_value(Counter::Fragment), 6);
    assert_eq!(maps.counter_value(Counter::NewFlows), 1);
    assert_eq!(maps.counter_value(Counter::ForwardTranslated), 2);
    assert_eq!(maps.counter_value(Counter::ReplyTranslated), 3);
    assert_eq!(maps.fragments.len(), 2);
}

#[test]
fn a_later_fragment_never_starts_a_flow() {
    let mut maps = maps_with_service(IPPROTO_UDP);
    let mut later = frame(&FrameSpec::udp());
    later[20..22].copy_from_slice(&[0, 8]);
    // Its ports are known, as if its first fragment had passed, and still no flow starts.
    let key = FragKey {
        src_addr: ipv4_mapped(CLIENT.addr),
        dst_addr: ipv4_mapped(VIP.addr),
        id: [0x42, 0x42],
        proto: IPPROTO_UDP,
        _pad: 0,
    };
    let ports = FragPorts {
        src_port: CLIENT.port,
        dst_port: VIP.port,
    };
    maps.fragments.insert(key, ports);
    assert_eq!(run_bytes(&mut maps, later.clone()), (Verdict::Pass, later));
    assert!(maps.conntrack.is_empty());
    assert_eq!(maps.counter_value(Counter::NotService), 1);
}

/// `maps` with the service's backend count set to 0 and `flags` set.
fn without_backends(mut maps: FakeMaps, flags: u32) -> FakeMaps {
    for s in maps.services.values_mut() {
        s.backend_count = 0;
        s.flags = flags;
    }
    maps
}

#[test]
fn a_service_without_backends_rejects_tcp_and_udp() {
    for (proto, spec) in [
        (IPPROTO_TCP, FrameSpec::tcp_syn()),
        (IPPROTO_UDP, FrameSpec::udp()),
    ] {
        let mut maps = without_backends(maps_with_service(proto), 0);
        let (verdict, out) = run(&mut maps, &spec);
        assert_eq!(verdict, Verdict::SendBack, "{proto}");
        let original = frame(&spec);
        assert_eq!(&out[0..6], &original[6..12], "back to the sender's MAC");
        assert_eq!(out[14 + 9], 1, "ICMP");
        assert_eq!(&out[26..34], &[VIP.addr, spec.src.addr].concat());
        assert_eq!(&out[34..36], &[3, 3], "port unreachable");
        assert_eq!(&out[42..62], &original[14..34], "quotes the IPv4 header");
        assert_eq!(maps.counter_value(Counter::RejectNoBackend), 1);
        assert_eq!(maps.counter_value(Counter::Packets), 1);
        let stats = maps.stats_of(GROUP_ID);
        assert_eq!((stats.rejects, stats.drops, stats.packets), (1, 0, 0));
        assert!(maps.conntrack.is_empty());
    }
}

#[test]
fn a_service_without_backends_that_drops_instead_drops() {
    let mut maps = without_backends(
        maps_with_service(IPPROTO_TCP),
        service_flags::DROP_IF_NO_BACKEND,
    );
    let syn = FrameSpec::tcp_syn();
    let (verdict, out) = run(&mut maps, &syn);
    assert_eq!((verdict, out), (Verdict::Drop, frame(&syn)));
    assert_eq!(maps.counter_value(Counter::DropNoBackend), 1);
    assert_eq!(maps.counter_value(Counter::RejectNoBackend), 0);
    let stats = maps.stats_of(GROUP_ID);
    assert_eq!((stats.drops, stats.rejects), (1, 0));
}

#[test]
fn no_icmp_error_goes_to_a_broadcast_or_multicast_source() {
    let mut maps = without_backends(maps_with_service(IPPROTO_UDP), 0);
    let spec = FrameSpec {
        src: FlowEnd {
            addr: [255, 255, 255, 255],
            ..CLIENT
        },
        ..FrameSpec::udp()
    };
    assert_eq!(run(&mut maps, &spec).0, Verdict::Drop);
    assert_eq!(maps.counter_value(Counter::DropRejectSource), 1);
    assert_eq!(maps.counter_value(Counter::DropNoBackend), 0);
    assert_eq!(maps.stats_of(GROUP_ID).drops, 1);
}

#[test]
fn a_reject_that_cannot_be_written_drops() {
    let mut maps = without_backends(maps_with_service(IPPROTO_UDP), 0);
    let mut pkt = SlicePacket::new(frame(&FrameSpec::udp()));
    pkt.fail_resize = true;
    assert_eq!(
        process::<Ipv4, _, _>(
            &mut pkt,
            &mut maps,
            Hook::Ingress {
                scope: scope::INTERNAL
            }
        ),
        Verdict::Drop
    );
    assert_eq!(maps.counter_value(Counter::DropRewriteFailed), 1);
    assert_eq!(maps.counter_value(Counter::RejectNoBackend), 0);
    assert_eq!(maps.stats_of(GROUP_ID).drops, 1);
}

/// `maps` with session affinity of `timeout_s` seconds on the service.
fn with_affinity(mut maps: FakeMaps, timeout_s: u32) -> FakeMaps {
    for s in maps.services.values_mut() {
        s.flags = service_flags::AFFINITY;
        s.affinity_timeout_s = timeout_s;
    }
    maps
}

/// A SYN from `client` port `port` to the VIP.
fn syn_from(client: [u8; 4], port: u16) -> FrameSpec {
    FrameSpec {
        src: FlowEnd {
            addr: client,
            port: port.to_be_bytes(),
        },
        ..FrameSpec::tcp_syn()
    }
}

/// The backend a new flow's output frame was translated to.
fn target_of(out: &[u8]) -> [u8; 4] {
    out[30..34].try_into().unwrap()
}

/// A source port from `client` whose flow hashes to a backend other than `not`.
fn port_hashing_away_from(client: [u8; 4], not: FlowEnd) -> u16 {
    (41_000..42_000)
        .find(|p| chosen(&syn_from(client, *p)).1 != not)
        .expect("some port hashes to the other backend")
}

#[test]
fn affinity_keeps_a_client_on_its_first_backend() {
    let mut maps = with_affinity(maps_with_service(IPPROTO_TCP), 60);
    let first = syn_from(CLIENT.addr, 40_000);
    let (first_id, first_backend) = chosen(&first);
    run(&mut maps, &first);
    for port in 40_001..40_033 {
        let (verdict, out) = run(&mut maps, &syn_from(CLIENT.addr, port));
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(target_of(&out), first_backend.addr, "port {port}");
        assert!(checksums_valid(&out));
    }
    assert_eq!(maps.counter_value(Counter::NewFlows), 33);
    let entry = maps.affinity[&affinity::key(ipv4_mapped(CLIENT.addr), GROUP_ID)];
    assert_eq!(entry.backend_id, first_id);
    assert_eq!(entry.last_used_ns, maps.now_ns);
}

#[test]
fn affinity_is_per_client() {
    let mut maps = with_affinity(maps_with_service(IPPROTO_TCP), 60);
    let (_, first) = chosen(&syn_from(CLIENT.addr, 40_000));
    run(&mut maps, &syn_from(CLIENT.addr, 40_000));
    let other = [198, 18, 0, 11];
    let port = port_hashing_away_from(other, first);
    let (_, out) = run(&mut maps, &syn_from(other, port));
    assert_ne!(target_of(&out), first.addr);
    assert_eq!(maps.affinity.len(), 2);
}

#[test]
fn an_expired_affinity_selects_anew_and_is_renewed() {
    let mut maps = with_affinity(maps_with_service(IPPROTO_TCP), 10);
    let (_, first) = chosen(&syn_from(CLIENT.addr, 40_000));
    run(&mut maps, &syn_from(CLIENT.addr, 40_000));
    let away = port_hashing_away_from(CLIENT.addr, first);

    maps.now_ns += 10_000_000_000 - 1;
    let (_, out) = run(&mut maps, &syn_from(CLIENT.addr, away));
    assert_eq!(target_of(&out), first.addr, "within the timeout");

    // That flow renewed the entry: 10 s later it has expired.
    maps.now_ns += 10_000_000_000;
    let also_away = (away + 1..away + 1_000)
        .find(|p| chosen(&syn_from(CLIENT.addr, *p)).1 != first)
        .unwrap();
    let (moved_id, moved) = chosen(&syn_from(CLIENT.addr, also_away));
    let (_, out) = run(&mut maps, &syn_from(CLIENT.addr, also_away));
    assert_eq!(
        target_of(&out),
        moved.addr,
        "expired: the flow hash decides"
    );
    let entry = maps.affinity[&affinity::key(ipv4_mapped(CLIENT.addr), GROUP_ID)];
    assert_eq!(
        (entry.backend_id, entry.last_used_ns),
        (moved_id, maps.now_ns)
    );

    let (_, out) = run(&mut maps, &syn_from(CLIENT.addr, 39_999));
    assert_eq!(target_of(&out), moved.addr, "the renewed entry holds");
}

#[test]
fn affinity_to_a_removed_backend_selects_anew() {
    let mut maps = with_affinity(maps_with_service(IPPROTO_TCP), 60);
    let (gone_id, gone) = chosen(&syn_from(CLIENT.addr, 40_000));
    run(&mut maps, &syn_from(CLIENT.addr, 40_000));
    let (other_id, other) = *BACKENDS.iter().find(|(id, _)| *id != gone_id).unwrap();
    maps.slots.clear();
    maps.slots.insert(
        BackendSlotKey {
            group_id: GROUP_ID,
            slot: 1,
        },
        other_id,
    );
    maps.backends.remove(&gone_id);
    maps.services.values_mut().for_each(|s| s.backend_count = 1);
    let (verdict, out) = run(&mut maps, &syn_from(CLIENT.addr, 40_001));
    assert_eq!(verdict, Verdict::Pass);
    assert_ne!(gone.addr, other.addr);
    assert_eq!(target_of(&out), other.addr);
    let entry = maps.affinity[&affinity::key(ipv4_mapped(CLIENT.addr), GROUP_ID)];
    assert_eq!((entry.backend_id, entry.slot), (other_id, 1));
}

#[test]
fn affinity_to_a_slot_that_changed_hands_selects_anew() {
    let mut maps = with_affinity(maps_with_service(IPPROTO_TCP), 60);
    let first = syn_from(CLIENT.addr, 40_000);
    let remembered_slot = select::slot(select::flow(&key(&first)), 2);
    run(&mut maps, &first);
    // Swap the two backends' slots: the remembered slot now holds the other backend.
    for backend in maps.slots.values_mut() {
        *backend = BACKENDS[usize::from(*backend == BACKENDS[0].0)].0;
    }
    // A flow hashing to the other slot, so that following the remembered slot blindly
    // would give a different answer than selecting anew.
    let next = (40_001..41_000)
        .map(|p| syn_from(CLIENT.addr, p))
        .find(|s| select::slot(select::flow(&key(s)), 2) != remembered_slot)
        .unwrap();
    let hashed = maps.slots[&BackendSlotKey {
        group_id: GROUP_ID,
        slot: select::slot(select::flow(&key(&next)), 2),
    }];
    let (_, out) = run(&mut maps, &next);
    assert_eq!(target_of(&out), backend_addr(hashed));
    let entry = maps.affinity[&affinity::key(ipv4_mapped(CLIENT.addr), GROUP_ID)];
    assert_eq!(entry.backend_id, hashed);
}

fn backend_addr(id: u32) -> [u8; 4] {
    BACKENDS.iter().find(|(i, _)| *i == id).unwrap().1.addr
}

#[test]
fn services_without_affinity_leave_the_affinity_map_alone() {
    let mut maps = maps_with_service(IPPROTO_TCP);
    for port in 40_000..40_008 {
        run(&mut maps, &syn_from(CLIENT.addr, port));
    }
    assert!(maps.affinity.is_empty());
    assert_eq!(maps.counter_value(Counter::NewFlows), 8);
}

#[test]
fn established_flows_follow_conntrack_not_affinity() {
    let mut maps = with_affinity(maps_with_service(IPPROTO_TCP), 60);
    let syn = syn_from(CLIENT.addr, 40_000);
    let (_, target) = chosen(&syn);
    run(&mut maps, &syn);
    // Another backend is remembered now (as if another flow had renewed the entry).
    let other = BACKENDS.iter().position(|(_, ep)| *ep != target).unwrap();
    let client = affinity::key(ipv4_mapped(CLIENT.addr), GROUP_ID);
    maps.affinity.insert(
        client,
        affinity::record(BACKENDS[other].0, other as u32 + 1, maps.now_ns),
    );
    let (_, out) = run(&mut maps, &ack(&syn));
    assert_eq!(target_of(&out), target.addr);
    assert_eq!(maps.counter_value(Counter::ForwardTranslated), 1);
}

#[test]
fn each_hook_looks_up_its_own_scope() {
    // The INTERNAL entry balances to backend 10 only, the EXTERNAL one to backend 11 only.
    let mut maps = maps_with_service(IPPROTO_TCP);
    let internal = *maps.services.keys().next().unwrap();
    let external = ServiceKey {
        scope: scope::EXTERNAL,
        ..internal
    };
    let one_backend = |id| ServiceValue {
        group_id: id,
        backend_count: 1,
        ..ServiceValue::default()
    };
    maps.services.insert(internal, one_backend(GROUP_ID));
    maps.services.insert(external, one_backend(GROUP_ID + 1));
    maps.slots.insert(
        BackendSlotKey {
            group_id: GROUP_ID + 1,
            slot: 1,
        },
        BACKENDS[1].0,
    );
    let syn = FrameSpec::tcp_syn();
    for (hook_scope, id, backend) in [
        (scope::INTERNAL, GROUP_ID, BACKENDS[0].1),
        (scope::EXTERNAL, GROUP_ID + 1, BACKENDS[1].1),
    ] {
        maps.conntrack.clear();
        let mut pkt = SlicePacket::new(frame(&syn));
        assert_eq!(
            process::<Ipv4, _, _>(&mut pkt, &mut maps, Hook::Ingress { scope: hook_scope }),
            Verdict::Pass
        );
        assert_eq!(
            pkt.bytes,
            frame(&FrameSpec {
                dst: backend,
                ..syn.clone()
            })
        );
        assert_eq!(maps.stats_of(id).new_flows, 1, "scope {hook_scope}");
    }
}

#[test]
fn a_scope_without_an_entry_is_not_a_service() {
    let mut maps = maps_with_service(IPPROTO_TCP);
    let syn = FrameSpec::tcp_syn();
    let mut pkt = SlicePacket::new(frame(&syn));
    assert_eq!(
        process::<Ipv4, _, _>(
            &mut pkt,
            &mut maps,
            Hook::Ingress {
                scope: scope::EXTERNAL
            }
        ),
        Verdict::Pass
    );
    assert_eq!(pkt.bytes, frame(&syn));
    assert_eq!(maps.counter_value(Counter::NotService), 1);
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
        assert_eq!(maps.stats_of(GROUP_ID).drops, 1);
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
    assert_eq!(
        process::<Ipv4, _, _>(
            &mut pkt,
            &mut maps,
            Hook::Ingress {
                scope: scope::INTERNAL
            }
        ),
        Verdict::Drop
    );
    assert_eq!(maps.counter_value(Counter::DropRewriteFailed), 1);
    assert_eq!(maps.counter_value(Counter::NewFlows), 0);
    assert_eq!(maps.stats_of(GROUP_ID).drops, 1);
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

/// Runs `spec`'s frame through the pipeline at egress.
fn run_egress(maps: &mut FakeMaps, spec: &FrameSpec) -> (Verdict, Vec<u8>) {
    let mut pkt = SlicePacket::new(frame(spec));
    let verdict = process::<Ipv4, _, _>(&mut pkt, maps, Hook::Egress);
    (verdict, pkt.bytes)
}

#[test]
fn egress_translates_a_reply_the_node_sends_and_counts_only_that() {
    let mut maps = maps_with_service(IPPROTO_TCP);
    let syn = FrameSpec::tcp_syn();
    let (_, target) = chosen(&syn);
    run(&mut maps, &syn);
    let packets = maps.counter_value(Counter::Packets);
    let syn_ack = FrameSpec {
        src: target,
        tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
        ..syn.reversed()
    };
    let (verdict, out) = run_egress(&mut maps, &syn_ack);
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(
        out,
        frame(&FrameSpec {
            src: VIP,
            ..syn_ack
        })
    );
    assert!(checksums_valid(&out));
    assert_eq!(maps.counter_value(Counter::ReplyTranslated), 1);
    assert_eq!(maps.counter_value(Counter::Packets), packets);
    assert_eq!(maps.stats_of(GROUP_ID).packets, 2);
}

#[test]
fn egress_leaves_requests_and_unknown_packets_alone_and_creates_no_flow() {
    let mut maps = maps_with_service(IPPROTO_TCP);
    // A packet to the VIP (a node socket nobody translated): no new flow at egress.
    let syn = FrameSpec::tcp_syn();
    let (verdict, out) = run_egress(&mut maps, &syn);
    assert_eq!((verdict, out), (Verdict::Pass, frame(&syn)));
    assert!(maps.conntrack.is_empty());

    // With the flow tracked, its request direction still passes untouched and both entries
    // stay; so does an unrelated reply.
    run(&mut maps, &syn);
    let entries = maps.conntrack.clone();
    let counters = maps.counters.clone();
    let stranger = FrameSpec {
        src: FlowEnd {
            addr: [198, 18, 9, 9],
            port: 8080u16.to_be_bytes(),
        },
        ..syn.reversed()
    };
    for spec in [ack(&syn), stranger] {
        let (verdict, out) = run_egress(&mut maps, &spec);
        assert_eq!((verdict, out), (Verdict::Pass, frame(&spec)), "{spec:?}");
    }
    assert_eq!(maps.conntrack, entries);
    assert_eq!(maps.counters, counters);
}

/// `maps_with_service` whose entry admits new flows only from `ranges`.
fn with_source_ranges(mut maps: FakeMaps, ranges: &[([u8; 4], u8)]) -> FakeMaps {
    for value in maps.services.values_mut() {
        value.flags |= service_flags::SOURCE_RANGES;
    }
    maps.source_ranges.insert(GROUP_ID, ranges.to_vec());
    maps
}

#[test]
fn source_ranges_admit_new_flows_from_inside_and_drop_the_rest() {
    let mut maps = with_source_ranges(
        maps_with_service(IPPROTO_TCP),
        &[([198, 18, 0, 8], 30), ([203, 0, 113, 0], 24)],
    );
    let inside = FrameSpec::tcp_syn();
    let (_, target) = chosen(&inside);
    let (verdict, out) = run(&mut maps, &inside);
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(
        out,
        frame(&FrameSpec {
            dst: target,
            ..inside.clone()
        })
    );
    let outside = FrameSpec {
        src: FlowEnd {
            addr: [198, 18, 0, 12],
            ..CLIENT
        },
        ..FrameSpec::tcp_syn()
    };
    let (verdict, out) = run(&mut maps, &outside);
    assert_eq!((verdict, out), (Verdict::Drop, frame(&outside)));
    assert_eq!(maps.counter_value(Counter::DropSourceRange), 1);
    assert_eq!(maps.stats_of(GROUP_ID).drops, 1);
    assert_eq!(maps.conntrack.len(), 2, "only the inside flow is tracked");
    // An established flow is decided by conntrack: the ranges are not read again.
    maps.source_ranges.clear();
    assert_eq!(run(&mut maps, &ack(&inside)).0, Verdict::Pass);
    assert_eq!(maps.counter_value(Counter::ForwardTranslated), 1);
}

#[test]
fn source_ranges_are_checked_before_a_reject() {
    let mut maps = with_source_ranges(
        without_backends(maps_with_service(IPPROTO_UDP), 0),
        &[([203, 0, 113, 0], 24)],
    );
    let (verdict, _) = run(&mut maps, &FrameSpec::udp());
    assert_eq!(verdict, Verdict::Drop);
    assert_eq!(maps.counter_value(Counter::DropSourceRange), 1);
    assert_eq!(maps.counter_value(Counter::RejectNoBackend), 0);
}

#[test]
fn rejects_over_the_rate_limit_are_dropped_and_counted_as_drops() {
    let limits = lb_common::RejectLimits {
        per_source: lb_common::reject_limit::Limit::new(1, 2),
        ..lb_common::RejectLimits::default()
    };
    let mut maps = without_backends(maps_with_service(IPPROTO_UDP), 0);
    maps.reject_limits = limits;
    let spec = FrameSpec::udp();
    let verdicts: Vec<_> = (0..3).map(|_| run(&mut maps, &spec)).collect();
    assert_eq!(verdicts[1].0, Verdict::SendBack);
    assert_eq!(verdicts[2], (Verdict::Drop, frame(&spec)));
    assert_eq!(maps.counter_value(Counter::RejectNoBackend), 2);
    assert_eq!(maps.counter_value(Counter::DropRejectSuppressed), 1);
    let stats = maps.stats_of(GROUP_ID);
    assert_eq!((stats.rejects, stats.drops), (2, 1));

    // A reject of an unexposed ClusterIP port is limited alike.
    let mut maps = cluster_ip_service(IPPROTO_TCP);
    maps.reject_limits = limits;
    let [unexposed, _] = unexposed_by_the_tcp_service();
    let verdicts: Vec<_> = (0..3).map(|_| run(&mut maps, &unexposed).0).collect();
    assert_eq!(
        verdicts,
        [Verdict::SendBack, Verdict::SendBack, Verdict::Drop]
    );
    assert_eq!(maps.counter_value(Counter::DropRejectSuppressed), 1);
}

/// Runs `bytes` through the pipeline at TC ingress.
fn run_bytes(maps: &mut FakeMaps, bytes: Vec<u8>) -> (Verdict, Vec<u8>) {
    let mut pkt = SlicePacket::new(bytes);
    let verdict = process::<Ipv4, _, _>(
        &mut pkt,
        maps,
        Hook::Ingress {
            scope: scope::INTERNAL,
        },
    );
    (verdict, pkt.bytes)
}

/// `spec`'s frame with its IPv4 header checksum off by one.
fn with_wrong_header_checksum(spec: &FrameSpec) -> Vec<u8> {
    let mut bytes = frame(spec);
    bytes[14 + 11] ^= 0x01;
    bytes
}

#[test]
fn a_wrong_header_checksum_starts_no_flow_and_gets_no_reject() {
    let mut maps = maps_with_service(IPPROTO_TCP);
    let bad = with_wrong_header_checksum(&FrameSpec::tcp_syn());
    assert_eq!(run_bytes(&mut maps, bad.clone()), (Verdict::Pass, bad));
    assert_eq!(maps.counter_value(Counter::BadIpv4Checksum), 1);
    assert!(maps.conntrack.is_empty());

    let mut maps = without_backends(maps_with_service(IPPROTO_UDP), 0);
    let bad = with_wrong_header_checksum(&FrameSpec::udp());
    assert_eq!(run_bytes(&mut maps, bad.clone()), (Verdict::Pass, bad));
    assert_eq!(maps.counter_value(Counter::RejectNoBackend), 0);
    assert_eq!(maps.counter_value(Counter::BadIpv4Checksum), 1);
}

#[test]
fn an_established_flows_packet_is_translated_whatever_its_header_checksum() {
    let mut maps = maps_with_service(IPPROTO_TCP);
    let syn = FrameSpec::tcp_syn();
    assert_eq!(run(&mut maps, &syn).0, Verdict::Pass);
    let (verdict, out) = run_bytes(&mut maps, with_wrong_header_checksum(&ack(&syn)));
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(target_of(&out), chosen(&syn).1.addr);
    assert_eq!(maps.counter_value(Counter::ForwardTranslated), 1);
    assert_eq!(maps.counter_value(Counter::BadIpv4Checksum), 0);
}

#[test]
fn sctp_association_is_translated_with_its_checksum_and_ends_with_abort() {
    let mut maps = maps_with_service(IPPROTO_SCTP);
    let init = FrameSpec::sctp_init();
    let (_, backend) = chosen(&init);
    let (verdict, out) = run(&mut maps, &init);
    assert_eq!(verdict, Verdict::Pass);
    let expected = frame(&FrameSpec {
        dst: backend,
        ..init.clone()
    });
    assert_eq!(out, expected, "ports rewritten, CRC32c recomputed");
    assert!(checksums_valid(&out));

    let answer = FrameSpec {
        src: backend,
        dst: CLIENT,
        sctp_chunk: sctp_chunk::INIT_ACK,
        ..init.clone()
    };
    let (_, out) = run(&mut maps, &answer);
    let expected = frame(&FrameSpec { src: VIP, ..answer });
    assert_eq!(out, expected, "the answer comes from the VIP");

    let abort = FrameSpec {
        sctp_chunk: sctp_chunk::ABORT,
        ..init.clone()
    };
    run(&mut maps, &abort);
    let key = conntrack::key_of(&parse::ipv4_flow(&SlicePacket::new(frame(&init))).unwrap());
    assert_ne!(maps.conntrack[&key].flags & ct_flags::CLOSING, 0);
}

#[test]
fn sctp_checksum_left_to_the_device_stays_zero() {
    let mut maps = maps_with_service(IPPROTO_SCTP);
    let init = FrameSpec::sctp_init();
    let mut bytes = frame(&init);
    bytes[34 + 8..34 + 12].fill(0);
    let mut pkt = SlicePacket::new(bytes);
    process::<Ipv4, _, _>(
        &mut pkt,
        &mut maps,
        Hook::Ingress {
            scope: scope::INTERNAL,
        },
    );
    let (_, backend) = chosen(&init);
    assert_eq!(pkt.bytes[34 + 2..34 + 4], backend.port);
    assert_eq!(pkt.bytes[34 + 8..34 + 12], [0; 4]);
}
