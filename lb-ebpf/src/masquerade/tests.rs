use super::*;
use crate::{
    conntrack,
    error::Verdict,
    family::Ipv4,
    lb::{process, Hook},
    parse::{ipv4_flow, FlowEnd},
    testing::{checksums_valid, frame, FakeMaps, FrameSpec, SlicePacket, CLIENT, VIP},
};
use lb_common::{
    config::{SNAT_PORT_MAX, SNAT_PORT_MIN},
    ipv4_mapped,
    net::tcp_flags,
    NodeConfig, IPPROTO_TCP, IPPROTO_UDP,
};

const GROUP_ID: u32 = 4;
const BACKEND_ID: u32 = 20;
const BACKEND: FlowEnd = FlowEnd {
    addr: [198, 18, 2, 7],
    port: 8080u16.to_be_bytes(),
};
const NODE: [u8; 4] = [198, 18, 0, 1];

fn masquerading(min: u16, max: u16) -> NodeConfig {
    NodeConfig::masquerading(ipv4_mapped(NODE), min, max)
}

/// An external- and internal-scope service at VIP with one backend (`backend_flags`),
/// masquerading with `config`.
fn maps(proto: u8, backend_flags: u8, config: NodeConfig) -> FakeMaps {
    let mut backend = Backend::new(ipv4_mapped(BACKEND.addr), 8080);
    backend.flags = backend_flags;
    let mut maps = FakeMaps::one_backend(proto, GROUP_ID, BACKEND_ID, backend);
    maps.config = config;
    maps
}

fn remote(proto: u8) -> FakeMaps {
    maps(proto, 0, masquerading(SNAT_PORT_MIN, SNAT_PORT_MAX))
}

fn run(maps: &mut FakeMaps, spec: &FrameSpec, hook_scope: u8) -> (Verdict, Vec<u8>) {
    let mut pkt = SlicePacket::new(frame(spec));
    let verdict = process::<Ipv4, _, _>(&mut pkt, maps, Hook::Ingress { scope: hook_scope });
    (verdict, pkt.bytes)
}

/// The source endpoint of an output frame (no IPv4 options).
fn source_of(out: &[u8]) -> FlowEnd {
    FlowEnd {
        addr: out[26..30].try_into().unwrap(),
        port: out[34..36].try_into().unwrap(),
    }
}

fn key_of(spec: &FrameSpec) -> CtKey {
    conntrack::key_of(&ipv4_flow(&SlicePacket::new(frame(spec))).unwrap())
}

fn in_range(port: [u8; 2]) -> bool {
    (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&u16::from_be_bytes(port))
}

#[test]
fn ports_start_at_the_hash_offset_and_wrap_within_the_range() {
    let at = |hash, attempt| u16::from_be_bytes(port((61_000, 61_009), hash, attempt).unwrap());
    assert_eq!(at(0, 0), 61_000);
    assert_eq!(at(13, 0), 61_003);
    assert_eq!(at(13, 6), 61_009);
    assert_eq!(at(13, 7), 61_000, "wraps");
    assert_eq!(at(u32::MAX, SNAT_PORT_ATTEMPTS), 61_001);
    let tried: std::collections::HashSet<_> = (0..10).map(|a| at(12_345, a)).collect();
    assert_eq!(tried.len(), 10, "every attempt a different port");
}

#[test]
fn port_ranges_of_one_port_and_the_whole_space_work_and_an_empty_one_has_none() {
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        assert_eq!(
            port((62_000, 62_000), 0xdead_beef, attempt),
            Some(62_000u16.to_be_bytes())
        );
    }
    assert_eq!(port((0, u16::MAX), 70_000, 1), Some(4_465u16.to_be_bytes()));
    assert_eq!(port((62_001, 62_000), 0, 0), None);
}

#[test]
fn wanted_only_for_external_flows_to_backends_elsewhere() {
    let remote = Backend::new(ipv4_mapped(BACKEND.addr), 80);
    let local = Backend {
        flags: backend_flags::LOCAL,
        ..remote
    };
    assert!(wanted(scope::EXTERNAL, &remote));
    assert!(!wanted(scope::EXTERNAL, &local));
    assert!(!wanted(scope::INTERNAL, &remote));
    assert!(!wanted(scope::INTERNAL, &local));
}

#[test]
fn a_flow_to_a_remote_backend_leaves_from_the_node() {
    let mut maps = remote(IPPROTO_TCP);
    let syn = FrameSpec::tcp_syn();
    let (verdict, out) = run(&mut maps, &syn, scope::EXTERNAL);
    assert_eq!(verdict, Verdict::Pass);
    let from = source_of(&out);
    assert_eq!(from.addr, NODE);
    assert!(in_range(from.port), "{from:?}");
    let expected = FrameSpec {
        src: from,
        dst: BACKEND,
        ..syn.clone()
    };
    assert_eq!(out, frame(&expected));
    assert!(checksums_valid(&out));
    assert_eq!(maps.counter_value(Counter::Masqueraded), 1);
    assert_eq!(maps.counter_value(Counter::NewFlows), 1);

    let key = key_of(&syn);
    let forward = maps.conntrack[&key];
    assert_eq!(forward.flags, ct_flags::FORWARD | ct_flags::SNAT);
    assert_eq!(
        (forward.nat_addr, forward.nat_port),
        (ipv4_mapped(BACKEND.addr), BACKEND.port)
    );
    assert_eq!(
        (forward.snat_addr, forward.snat_port),
        (ipv4_mapped(NODE), from.port)
    );
    let reply_key = CtKey {
        src_addr: ipv4_mapped(BACKEND.addr),
        dst_addr: ipv4_mapped(NODE),
        src_port: BACKEND.port,
        dst_port: from.port,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let reply = maps.conntrack[&reply_key];
    assert_eq!(reply.flags, ct_flags::REPLY | ct_flags::SNAT);
    assert_eq!(
        (reply.nat_addr, reply.nat_port),
        (ipv4_mapped(VIP.addr), VIP.port)
    );
    assert_eq!(
        (reply.snat_addr, reply.snat_port),
        (ipv4_mapped(CLIENT.addr), CLIENT.port)
    );
    assert_eq!((reply.group_id, reply.backend_id), (GROUP_ID, BACKEND_ID));
    assert_eq!(maps.conntrack.len(), 2);
}

#[test]
fn masqueraded_flows_are_translated_both_ways_in_either_hook() {
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        for reply_scope in [scope::EXTERNAL, scope::INTERNAL] {
            let mut maps = remote(proto);
            let request = if proto == IPPROTO_TCP {
                FrameSpec::tcp_syn()
            } else {
                FrameSpec::udp()
            };
            let (_, out) = run(&mut maps, &request, scope::EXTERNAL);
            let node = source_of(&out);
            let answer = FrameSpec {
                src: BACKEND,
                dst: node,
                tcp_flags: request.tcp_flags | tcp_flags::ACK,
                ..request.clone()
            };
            for round in 0..3 {
                let (verdict, out) = run(&mut maps, &answer, reply_scope);
                assert_eq!(verdict, Verdict::Pass);
                let back = FrameSpec {
                    src: VIP,
                    dst: CLIENT,
                    ..answer.clone()
                };
                assert_eq!(
                    out,
                    frame(&back),
                    "proto {proto} scope {reply_scope} round {round}"
                );
                let (_, out) = run(&mut maps, &request, scope::EXTERNAL);
                let on = FrameSpec {
                    src: node,
                    dst: BACKEND,
                    ..request.clone()
                };
                assert_eq!(out, frame(&on));
            }
            assert_eq!(maps.counter_value(Counter::ReplyTranslated), 3);
            assert_eq!(maps.counter_value(Counter::ForwardTranslated), 3);
            assert_eq!(maps.counter_value(Counter::Masqueraded), 1);
        }
    }
}

#[test]
fn udp_without_checksum_stays_without_after_both_rewrites() {
    let mut maps = remote(IPPROTO_UDP);
    let query = FrameSpec {
        udp_no_checksum: true,
        ..FrameSpec::udp()
    };
    let (_, out) = run(&mut maps, &query, scope::EXTERNAL);
    assert_eq!(&out[40..42], &[0, 0]);
    assert_eq!(source_of(&out).addr, NODE);
    assert_eq!(&out[30..34], &BACKEND.addr);
    assert!(checksums_valid(&out));
}

#[test]
fn no_masquerading_for_local_backends_internal_flows_or_when_off() {
    let cases = [
        (
            maps(
                IPPROTO_TCP,
                backend_flags::LOCAL,
                masquerading(61_000, 65_535),
            ),
            scope::EXTERNAL,
        ),
        (remote(IPPROTO_TCP), scope::INTERNAL),
        (maps(IPPROTO_TCP, 0, NodeConfig::default()), scope::EXTERNAL),
    ];
    for (i, (mut maps, hook_scope)) in cases.into_iter().enumerate() {
        let syn = FrameSpec::tcp_syn();
        let (verdict, out) = run(&mut maps, &syn, hook_scope);
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            out,
            frame(&FrameSpec {
                dst: BACKEND,
                ..syn
            }),
            "case {i}"
        );
        assert_eq!(maps.counter_value(Counter::Masqueraded), 0);
        assert!(maps
            .conntrack
            .values()
            .all(|e| e.flags & ct_flags::SNAT == 0));
    }
}

#[test]
fn an_snat_address_that_is_not_ipv4_turns_masquerading_off() {
    let mut v6 = [0; 16];
    v6[0] = 0x20;
    let mut maps = maps(IPPROTO_TCP, 0, NodeConfig::masquerading(v6, 61_000, 65_535));
    let (_, out) = run(&mut maps, &FrameSpec::tcp_syn(), scope::EXTERNAL);
    assert_eq!(source_of(&out), CLIENT);
    assert_eq!(maps.counter_value(Counter::Masqueraded), 0);
}

#[test]
fn flows_to_one_backend_never_share_a_port() {
    let mut maps = maps(IPPROTO_TCP, 0, masquerading(61_000, 61_031));
    let mut ports = std::collections::HashSet::new();
    for (i, cport) in (40_000..40_032).enumerate() {
        let syn = FrameSpec {
            src: FlowEnd {
                port: u16::to_be_bytes(cport),
                ..CLIENT
            },
            ..FrameSpec::tcp_syn()
        };
        let (verdict, out) = run(&mut maps, &syn, scope::EXTERNAL);
        if verdict == Verdict::Drop {
            // Sixteen attempts may all land on taken ports once the range fills up.
            assert!(i >= 16, "dropped flow {i}");
            continue;
        }
        assert!(ports.insert(source_of(&out).port), "flow {i} reuses a port");
    }
    assert!(ports.len() >= 16);
    assert_eq!(maps.counter_value(Counter::Masqueraded), ports.len() as u64);
}

#[test]
fn exhausted_ports_drop_the_new_flow_and_count_it() {
    let mut maps = maps(IPPROTO_TCP, 0, masquerading(61_000, 61_000));
    let first = FrameSpec::tcp_syn();
    assert_eq!(run(&mut maps, &first, scope::EXTERNAL).0, Verdict::Pass);
    let second = FrameSpec {
        src: FlowEnd {
            addr: [198, 18, 0, 11],
            ..CLIENT
        },
        ..first.clone()
    };
    let (verdict, out) = run(&mut maps, &second, scope::EXTERNAL);
    assert_eq!((verdict, out), (Verdict::Drop, frame(&second)));
    assert_eq!(maps.counter_value(Counter::DropSnatPortsExhausted), 1);
    assert_eq!(maps.counter_value(Counter::Masqueraded), 1);
    assert_eq!(maps.stats_of(GROUP_ID).drops, 1);
    assert_eq!(maps.conntrack.len(), 2, "only the first flow's entries");
    // The first flow still works.
    let (_, out) = run(&mut maps, &first, scope::EXTERNAL);
    assert_eq!(source_of(&out).port, 61_000u16.to_be_bytes());
}

#[test]
fn a_refused_forward_entry_takes_its_reply_entry_back() {
    let mut maps = remote(IPPROTO_TCP);
    let syn = FrameSpec::tcp_syn();
    let key = key_of(&syn);
    maps.refused_conntrack_key = Some(key);
    let (verdict, _) = run(&mut maps, &syn, scope::EXTERNAL);
    assert_eq!(verdict, Verdict::Drop);
    assert_eq!(maps.counter_value(Counter::DropConntrackFull), 1);
    assert!(maps.conntrack.is_empty());
}

#[test]
fn a_syn_to_a_gone_backend_forgets_the_masqueraded_reply_entry() {
    let mut maps = remote(IPPROTO_TCP);
    let syn = FrameSpec::tcp_syn();
    let (_, out) = run(&mut maps, &syn, scope::EXTERNAL);
    let old_port = source_of(&out).port;
    let moved = FlowEnd {
        addr: [198, 18, 2, 8],
        ..BACKEND
    };
    maps.backends
        .insert(BACKEND_ID, Backend::new(ipv4_mapped(moved.addr), 8080));
    let (verdict, out) = run(&mut maps, &syn, scope::EXTERNAL);
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(&out[30..34], &moved.addr);
    let old_reply = CtKey {
        src_addr: ipv4_mapped(BACKEND.addr),
        dst_addr: ipv4_mapped(NODE),
        src_port: BACKEND.port,
        dst_port: old_port,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    assert!(!maps.conntrack.contains_key(&old_reply));
    assert_eq!(maps.conntrack.len(), 2, "only the new flow's entries");
}

/// The services of [`maps`] with the client pod itself as their only (local) backend.
fn hairpin_maps(proto: u8, config: NodeConfig) -> FakeMaps {
    let mut maps = maps(proto, backend_flags::LOCAL, config);
    let itself = Backend {
        flags: backend_flags::LOCAL,
        ..Backend::new(ipv4_mapped(CLIENT.addr), 8080)
    };
    maps.backends.insert(BACKEND_ID, itself);
    maps
}

const HAIRPIN: [u8; 4] = lb_common::config::HAIRPIN_ADDR;

#[test]
fn hairpin_only_for_internal_flows_from_the_backend_itself() {
    let key = key_of(&FrameSpec::tcp_syn());
    let itself = Backend::new(ipv4_mapped(CLIENT.addr), 80);
    let other = Backend::new(ipv4_mapped(BACKEND.addr), 80);
    assert!(hairpin::<Ipv4>(scope::INTERNAL, &key, &itself));
    assert!(!hairpin::<Ipv4>(scope::INTERNAL, &key, &other));
    assert!(!hairpin::<Ipv4>(scope::EXTERNAL, &key, &itself));
    assert_eq!(counter(scope::INTERNAL), Counter::Hairpinned);
    assert_eq!(counter(scope::EXTERNAL), Counter::Masqueraded);
}

#[test]
fn a_pod_balanced_to_itself_is_answered_from_the_vip_with_masquerading_off() {
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let mut maps = hairpin_maps(proto, NodeConfig::default());
        let request = if proto == IPPROTO_TCP {
            FrameSpec::tcp_syn()
        } else {
            FrameSpec::udp()
        };
        let itself = FlowEnd {
            port: 8080u16.to_be_bytes(),
            ..CLIENT
        };
        let (verdict, out) = run(&mut maps, &request, scope::INTERNAL);
        assert_eq!(verdict, Verdict::Pass);
        let from = source_of(&out);
        assert_eq!(from.addr, HAIRPIN, "proto {proto}");
        assert!(in_range(from.port), "default range: {from:?}");
        let on = FrameSpec {
            src: from,
            dst: itself,
            ..request.clone()
        };
        assert_eq!(out, frame(&on));
        assert!(checksums_valid(&out));
        assert_eq!(maps.counter_value(Counter::Hairpinned), 1);
        assert_eq!(maps.counter_value(Counter::Masqueraded), 0);
        assert_eq!(maps.counter_value(Counter::NewFlows), 1);

        let answer = FrameSpec {
            src: itself,
            dst: from,
            tcp_flags: request.tcp_flags | tcp_flags::ACK,
            ..request.clone()
        };
        for round in 0..2 {
            let (verdict, out) = run(&mut maps, &answer, scope::INTERNAL);
            assert_eq!(verdict, Verdict::Pass);
            let back = FrameSpec {
                src: VIP,
                dst: CLIENT,
                ..answer.clone()
            };
            assert_eq!(out, frame(&back), "proto {proto} round {round}");
            assert!(checksums_valid(&out));
            let (_, out) = run(&mut maps, &request, scope::INTERNAL);
            assert_eq!(out, frame(&on), "proto {proto} round {round}");
        }
        assert_eq!(maps.counter_value(Counter::ReplyTranslated), 2);
        assert_eq!(maps.counter_value(Counter::ForwardTranslated), 2);
        assert_eq!(maps.counter_value(Counter::Hairpinned), 1);
        let forward = maps.conntrack[&key_of(&request)];
        let answered = ct_flags::SEEN_REPLY;
        assert_eq!(forward.flags, ct_flags::FORWARD | ct_flags::SNAT | answered);
        assert_eq!(forward.snat_addr, ipv4_mapped(HAIRPIN));
    }
}

#[test]
fn hairpin_ports_come_from_the_configured_range_when_there_is_one() {
    let mut maps = hairpin_maps(IPPROTO_TCP, masquerading(62_000, 62_009));
    let (_, out) = run(&mut maps, &FrameSpec::tcp_syn(), scope::INTERNAL);
    let from = source_of(&out);
    assert_eq!(from.addr, HAIRPIN, "not the node's masquerading address");
    assert!((62_000..=62_009).contains(&u16::from_be_bytes(from.port)));
}

#[test]
fn hairpin_flows_never_share_a_port_and_exhaustion_drops() {
    let mut maps = hairpin_maps(IPPROTO_UDP, masquerading(62_000, 62_001));
    let mut ports = std::collections::HashSet::new();
    for cport in [40_000u16, 40_001] {
        let query = FrameSpec {
            src: FlowEnd {
                port: cport.to_be_bytes(),
                ..CLIENT
            },
            ..FrameSpec::udp()
        };
        let (verdict, out) = run(&mut maps, &query, scope::INTERNAL);
        assert_eq!(verdict, Verdict::Pass);
        assert!(ports.insert(source_of(&out).port));
    }
    let third = FrameSpec {
        src: FlowEnd {
            port: 40_002u16.to_be_bytes(),
            ..CLIENT
        },
        ..FrameSpec::udp()
    };
    let (verdict, out) = run(&mut maps, &third, scope::INTERNAL);
    assert_eq!((verdict, out), (Verdict::Drop, frame(&third)));
    assert_eq!(maps.counter_value(Counter::DropSnatPortsExhausted), 1);
    assert_eq!(maps.counter_value(Counter::Hairpinned), 2);
}

#[test]
fn a_client_on_the_external_side_with_the_backends_address_is_not_a_hairpin() {
    let mut maps = hairpin_maps(IPPROTO_TCP, NodeConfig::default());
    let (_, out) = run(&mut maps, &FrameSpec::tcp_syn(), scope::EXTERNAL);
    assert_eq!(source_of(&out), CLIENT);
    assert_eq!(maps.counter_value(Counter::Hairpinned), 0);
}

#[test]
fn the_redirect_reply_path_forwards_masqueraded_packets_and_replies_only() {
    use lb_common::config::reply_path;
    for (path, forward) in [
        (reply_path::REDIRECT, Verdict::Forward),
        (reply_path::KERNEL, Verdict::Pass),
    ] {
        let config = masquerading(SNAT_PORT_MIN, SNAT_PORT_MAX).with_reply_path(path);
        // A remote backend: masqueraded, so the request carries the node's address too.
        let mut remote = maps(IPPROTO_TCP, 0, config);
        let request = FrameSpec::tcp_syn();
        let (verdict, out) = run(&mut remote, &request, scope::EXTERNAL);
        assert_eq!(verdict, forward, "masqueraded request, path {path}");
        let answer = FrameSpec {
            src: BACKEND,
            dst: source_of(&out),
            tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
            ..request.clone()
        };
        assert_eq!(run(&mut remote, &answer, scope::EXTERNAL).0, forward);
        // A local backend: the request is only DNATed and keeps its source, the reply does not.
        let mut local = maps(IPPROTO_TCP, backend_flags::LOCAL, config);
        assert_eq!(run(&mut local, &request, scope::EXTERNAL).0, Verdict::Pass);
        let answer = FrameSpec {
            src: BACKEND,
            tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
            ..request.reversed()
        };
        assert_eq!(run(&mut local, &answer, scope::INTERNAL).0, forward);
        // Untouched traffic is never forwarded.
        let other = FrameSpec {
            dst: BACKEND,
            ..request.clone()
        };
        assert_eq!(run(&mut local, &other, scope::INTERNAL).0, Verdict::Pass);
    }
}
