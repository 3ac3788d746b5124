use super::*;
use crate::testing::{FakeMaps, VIP};
use lb_common::{
    event::{drop_level, hook, kind, level, Event},
    service::service_flags,
    Backend, BackendSlotKey, NodeConfig, IPPROTO_TCP, IPPROTO_UDP,
};

const GROUP_ID: u32 = 4;
const NETNS: u64 = 0x1234;
const BACKENDS: [(u32, FlowEnd); 3] = [
    (20, end([198, 18, 1, 1], 8080)),
    (21, end([198, 18, 1, 2], 8080)),
    (22, end([198, 18, 1, 3], 8081)),
];

const fn end(addr: [u8; 4], port: u16) -> FlowEnd {
    FlowEnd {
        addr,
        port: port.to_be_bytes(),
    }
}

/// A socket call as the hook sees it.
#[derive(Clone, Copy, Debug)]
struct FakeSock {
    addr: FlowEnd,
    proto: u8,
    cookie: u64,
    netns: u64,
    /// The socket's bound address (all zero: unbound).
    bound: [u8; 4],
    /// The source a datagram names (`IP_PKTINFO`; all zero: none).
    msg_source: [u8; 4],
    /// The socket's bound port (network byte order; zero: unbound).
    bound_port: [u8; 2],
}

impl SockAddr for FakeSock {
    fn addr(&self) -> FlowEnd {
        self.addr
    }

    fn set_addr(&mut self, to: FlowEnd) {
        self.addr = to;
    }

    fn proto(&self) -> u8 {
        self.proto
    }

    fn cookie(&mut self) -> u64 {
        self.cookie
    }

    fn netns_cookie(&mut self) -> u64 {
        self.netns
    }

    fn source(&mut self, sendmsg: bool) -> [u8; 4] {
        match (sendmsg, self.msg_source) {
            (true, named) if named != [0; 4] => named,
            _ => self.bound,
        }
    }

    fn source_port(&mut self) -> [u8; 2] {
        self.bound_port
    }
}

fn sock(proto: u8, cookie: u64) -> FakeSock {
    FakeSock {
        addr: VIP,
        proto,
        cookie,
        netns: NETNS,
        bound: [0; 4],
        msg_source: [0; 4],
        bound_port: [0; 2],
    }
}

/// The VIP as a service of `proto` in `scope` with every backend, sockets of [`NETNS`]
/// translated.
fn maps_in(proto: u8, scope: u8) -> FakeMaps {
    let mut maps = FakeMaps {
        now_ns: 5_000_000_000,
        config: NodeConfig::default().with_sock_netns(NETNS),
        ..FakeMaps::default()
    };
    let key = ServiceKey::new(ipv4_mapped(VIP.addr), 80, proto, scope);
    let value = ServiceValue {
        group_id: GROUP_ID,
        backend_count: BACKENDS.len() as u32,
        ..ServiceValue::default()
    };
    maps.services.insert(key, value);
    for (slot, (id, ep)) in BACKENDS.iter().enumerate() {
        let backend = Backend::new(ipv4_mapped(ep.addr), u16::from_be_bytes(ep.port));
        maps.backends.insert(*id, backend);
        let key = BackendSlotKey {
            group_id: GROUP_ID,
            slot: slot as u32 + 1,
        };
        maps.slots.insert(key, *id);
    }
    maps
}

fn maps(proto: u8) -> FakeMaps {
    maps_in(proto, scope::INTERNAL)
}

fn service_mut(maps: &mut FakeMaps) -> &mut ServiceValue {
    maps.services.values_mut().next().unwrap()
}

/// The backend the packet path's selection gives a socket with `cookie`.
fn expected(cookie: u64) -> FlowEnd {
    let slot = select::slot(select::socket(cookie), BACKENDS.len() as u32);
    BACKENDS[slot as usize - 1].1
}

#[test]
fn connect_points_the_socket_at_the_selected_backend_and_getpeername_shows_the_service() {
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let mut maps = maps(proto);
        let mut s = sock(proto, 7);
        assert_eq!(forward(&mut s, &mut maps, false), SockVerdict::Proceed);
        assert_eq!(s.addr, expected(7));
        assert_eq!(maps.counter_value(Counter::NewFlows), 1);
        assert_eq!(maps.stats_of(GROUP_ID).new_flows, 1);
        assert!(maps.conntrack.is_empty(), "sockets need no conntrack");

        // getpeername (or recvmsg) on the same socket: the peer is the backend.
        reverse(&mut s, &mut maps);
        assert_eq!(s.addr, VIP);
    }
}

#[test]
fn sockets_reach_every_backend() {
    let mut maps = maps(IPPROTO_TCP);
    let mut seen = [0; BACKENDS.len()];
    for cookie in 1000..1300 {
        let mut s = sock(IPPROTO_TCP, cookie);
        forward(&mut s, &mut maps, false);
        let i = BACKENDS.iter().position(|(_, ep)| *ep == s.addr).unwrap();
        seen[i] += 1;
    }
    assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
}

#[test]
fn unconnected_udp_keeps_its_backend_and_sees_answers_from_the_service() {
    let mut maps = maps(IPPROTO_UDP);
    for _ in 0..3 {
        let mut datagram = sock(IPPROTO_UDP, 99);
        assert_eq!(
            forward(&mut datagram, &mut maps, true),
            SockVerdict::Proceed
        );
        assert_eq!(datagram.addr, expected(99));
    }
    // recvmsg: the answer's source is the backend.
    let mut answer = FakeSock {
        addr: expected(99),
        ..sock(IPPROTO_UDP, 99)
    };
    reverse(&mut answer, &mut maps);
    assert_eq!(answer.addr, VIP);

    // A datagram from elsewhere, or the backend's answer to another socket, stays as it is.
    let other = end([198, 18, 9, 9], 53);
    let mut stranger = FakeSock {
        addr: other,
        ..sock(IPPROTO_UDP, 99)
    };
    reverse(&mut stranger, &mut maps);
    assert_eq!(stranger.addr, other);
    let mut other_socket = FakeSock {
        addr: expected(99),
        ..sock(IPPROTO_UDP, 100)
    };
    reverse(&mut other_socket, &mut maps);
    assert_eq!(other_socket.addr, expected(99));
}

#[test]
fn sendmsg_leaves_tcp_alone() {
    let mut maps = maps(IPPROTO_TCP);
    let mut s = sock(IPPROTO_TCP, 7);
    assert_eq!(forward(&mut s, &mut maps, true), SockVerdict::Proceed);
    assert_eq!(s.addr, VIP);
    assert!(maps.sock_revnat.is_empty());
}

#[test]
fn only_the_internal_scope_and_served_protocols_are_translated() {
    let mut external = maps_in(IPPROTO_TCP, scope::EXTERNAL);
    let mut s = sock(IPPROTO_TCP, 7);
    assert_eq!(forward(&mut s, &mut external, false), SockVerdict::Proceed);
    assert_eq!(s.addr, VIP);

    let mut maps = maps(IPPROTO_TCP);
    let mut udp = sock(IPPROTO_UDP, 7);
    let mut sctp = sock(132, 7);
    forward(&mut udp, &mut maps, false);
    forward(&mut sctp, &mut maps, false);
    assert_eq!((udp.addr, sctp.addr), (VIP, VIP));
    assert_eq!(maps.counter_value(Counter::NewFlows), 0);
}

#[test]
fn sockets_of_other_namespaces_are_left_to_the_packet_path() {
    let mut maps = maps(IPPROTO_TCP);
    let mut pod = FakeSock {
        netns: NETNS + 1,
        ..sock(IPPROTO_TCP, 7)
    };
    forward(&mut pod, &mut maps, false);
    assert_eq!(pod.addr, VIP);

    // Before the agent names the node's namespace nothing is translated.
    maps.config = NodeConfig::default();
    let mut s = sock(IPPROTO_TCP, 7);
    forward(&mut s, &mut maps, false);
    assert_eq!(s.addr, VIP);
}

#[test]
fn with_every_namespace_on_pods_sockets_are_translated_too() {
    let mut maps = maps(IPPROTO_TCP);
    maps.config = maps.config.with_sock_all_netns(true);
    for netns in [NETNS, NETNS + 1, NETNS + 2] {
        let mut s = FakeSock {
            netns,
            ..sock(IPPROTO_TCP, 7)
        };
        assert_eq!(forward(&mut s, &mut maps, false), SockVerdict::Proceed);
        assert_eq!(s.addr, expected(7), "namespace {netns}");
        reverse(&mut s, &mut maps);
        assert_eq!(s.addr, VIP, "namespace {netns}");
    }
    assert_eq!(maps.counter_value(Counter::NewFlows), 3);
    assert!(maps.conntrack.is_empty());

    // Still nothing before the agent has written the node's namespace.
    maps.config = NodeConfig::default().with_sock_all_netns(true);
    let mut pod = FakeSock {
        netns: NETNS + 1,
        ..sock(IPPROTO_TCP, 7)
    };
    forward(&mut pod, &mut maps, false);
    assert_eq!(pod.addr, VIP);
}

fn no_backends(maps: &mut FakeMaps) {
    service_mut(maps).backend_count = 0;
}

fn drop_without_backends(maps: &mut FakeMaps) {
    let service = service_mut(maps);
    service.backend_count = 0;
    service.flags = service_flags::DROP_IF_NO_BACKEND;
}

fn backends_missing(maps: &mut FakeMaps) {
    maps.backends.clear();
}

/// The service admits only 198.18.5.0/24 (`loadBalancerSourceRanges`), which does not hold
/// the node: its unbound sockets are refused, those bound inside are served.
fn source_ranges(maps: &mut FakeMaps) {
    service_mut(maps).flags = service_flags::SOURCE_RANGES;
    maps.source_ranges
        .insert(GROUP_ID, vec![([198, 18, 5, 0], 24)]);
}

/// [`source_ranges`] without endpoints: the source decides first, as on the packet path.
fn source_ranges_without_backends(maps: &mut FakeMaps) {
    source_ranges(maps);
    no_backends(maps);
}

/// A refused call, what makes it one, and what it gets: the packet path's verdict as an
/// `errno` (a reject as ECONNREFUSED, a drop as EHOSTUNREACH), counted as the packet path
/// counts it.
struct Refusal {
    name: &'static str,
    proto: u8,
    udp_only: bool,
    setup: fn(&mut FakeMaps),
    errno: i32,
    counter: Counter,
}

fn unexposed_port(maps: &mut FakeMaps) {
    maps.cluster_ips.push(ipv4_mapped(VIP.addr));
    maps.services.clear();
}

fn unallocated_address(maps: &mut FakeMaps) {
    maps.service_cidrs.push(([198, 19, 0, 0], 16));
    maps.services.clear();
}

const REFUSALS: [Refusal; 11] = [
    Refusal {
        name: "TCP connect without endpoints",
        proto: IPPROTO_TCP,
        udp_only: false,
        setup: no_backends,
        errno: ECONNREFUSED,
        counter: Counter::RejectNoBackend,
    },
    Refusal {
        name: "UDP connect without endpoints",
        proto: IPPROTO_UDP,
        udp_only: false,
        setup: no_backends,
        errno: ECONNREFUSED,
        counter: Counter::RejectNoBackend,
    },
    Refusal {
        name: "UDP sendmsg without endpoints",
        proto: IPPROTO_UDP,
        udp_only: true,
        setup: no_backends,
        errno: ECONNREFUSED,
        counter: Counter::RejectNoBackend,
    },
    Refusal {
        name: "a drop service without endpoints",
        proto: IPPROTO_TCP,
        udp_only: false,
        setup: drop_without_backends,
        errno: EHOSTUNREACH,
        counter: Counter::DropNoBackend,
    },
    Refusal {
        name: "a missing backend entry",
        proto: IPPROTO_TCP,
        udp_only: false,
        setup: backends_missing,
        errno: EHOSTUNREACH,
        counter: Counter::DropBackendMissing,
    },
    Refusal {
        name: "TCP connect to a ClusterIP's unexposed port",
        proto: IPPROTO_TCP,
        udp_only: false,
        setup: unexposed_port,
        errno: ECONNREFUSED,
        counter: Counter::RejectUnexposedPort,
    },
    Refusal {
        name: "UDP sendmsg to a ClusterIP's unexposed port",
        proto: IPPROTO_UDP,
        udp_only: true,
        setup: unexposed_port,
        errno: ECONNREFUSED,
        counter: Counter::RejectUnexposedPort,
    },
    Refusal {
        name: "TCP connect to an unallocated service address",
        proto: IPPROTO_TCP,
        udp_only: false,
        setup: unallocated_address,
        errno: EHOSTUNREACH,
        counter: Counter::DropUnallocatedServiceIp,
    },
    Refusal {
        name: "TCP connect of the node outside the source ranges",
        proto: IPPROTO_TCP,
        udp_only: false,
        setup: source_ranges,
        errno: EHOSTUNREACH,
        counter: Counter::DropSourceRange,
    },
    Refusal {
        name: "UDP sendmsg of the node outside the source ranges",
        proto: IPPROTO_UDP,
        udp_only: true,
        setup: source_ranges,
        errno: EHOSTUNREACH,
        counter: Counter::DropSourceRange,
    },
    Refusal {
        name: "outside the source ranges, without endpoints",
        proto: IPPROTO_TCP,
        udp_only: false,
        setup: source_ranges_without_backends,
        errno: EHOSTUNREACH,
        counter: Counter::DropSourceRange,
    },
];

#[test]
fn refused_calls_fail_at_once_with_the_packet_paths_verdict() {
    for case in REFUSALS {
        let name = case.name;
        let mut maps = maps(case.proto);
        (case.setup)(&mut maps);
        let mut s = sock(case.proto, 7);
        let verdict = forward(&mut s, &mut maps, case.udp_only);
        assert_eq!(verdict, SockVerdict::Refuse(case.errno), "{name}");
        assert_eq!(s.addr, VIP, "{name}");
        assert_eq!(maps.counter_value(case.counter), 1, "{name}");
        let stats = maps.stats_of(GROUP_ID);
        let counted = match case.errno {
            ECONNREFUSED => stats.rejects,
            _ => stats.drops,
        };
        // A call to no Service counts for none.
        let service_calls = !maps.services.is_empty();
        assert_eq!(counted, u64::from(service_calls), "{name}");
        assert_eq!(maps.counter_value(Counter::NewFlows), 0, "{name}");
        assert!(maps.events.is_empty(), "{name}: no monitor, no event");
    }
}

/// The event a call of [`sock`] from `source` to the VIP writes, before its kind-specific
/// fields.
fn sock_event(proto: u8, kind: u8, reason: Counter, group_id: u32, source: FlowEnd) -> Event {
    Event {
        timestamp_ns: 5_000_000_000,
        group_id,
        reason: reason as u32,
        kind,
        hook: hook::SOCKET,
        proto,
        src_addr: ipv4_mapped(source.addr),
        dst_addr: ipv4_mapped(VIP.addr),
        src_port: source.port,
        dst_port: VIP.port,
        ..Event::ZERO
    }
}

#[test]
fn with_a_monitor_each_translation_is_one_new_flow_event_with_its_backend() {
    // connect() of an unbound socket, sendmsg() of one the kernel bound to a port, a datagram
    // naming its source.
    let bound = end([198, 18, 0, 1], 40000);
    let cases = [
        (IPPROTO_TCP, false, [0; 4], [0; 4], [0; 2], end([0; 4], 0)),
        (
            IPPROTO_UDP,
            true,
            [0; 4],
            [0; 4],
            bound.port,
            end([0; 4], 40000),
        ),
        (
            IPPROTO_UDP,
            true,
            bound.addr,
            [198, 18, 0, 9],
            bound.port,
            end([198, 18, 0, 9], 40000),
        ),
    ];
    for (proto, sendmsg, addr, msg_source, port, source) in cases {
        let mut maps = maps(proto);
        maps.monitored = true;
        let mut s = FakeSock {
            bound: addr,
            msg_source,
            bound_port: port,
            ..sock(proto, 7)
        };
        assert_eq!(forward(&mut s, &mut maps, sendmsg), SockVerdict::Proceed);
        // A second datagram translated again is a second flow.
        if sendmsg {
            s.addr = VIP;
            forward(&mut s, &mut maps, sendmsg);
        }
        let backend = expected(7);
        let event = Event {
            backend_addr: ipv4_mapped(backend.addr),
            backend_port: backend.port,
            ..sock_event(proto, kind::NEW_FLOW, Counter::NewFlows, GROUP_ID, source)
        };
        let count = if sendmsg { 2 } else { 1 };
        assert_eq!(maps.events, vec![event; count], "{proto} sendmsg {sendmsg}");
    }
}

#[test]
fn with_a_monitor_each_refusal_is_one_reject_or_drop_event_with_its_reason() {
    for case in REFUSALS {
        let name = case.name;
        let mut maps = maps(case.proto);
        (case.setup)(&mut maps);
        maps.monitored = true;
        let mut s = sock(case.proto, 7);
        forward(&mut s, &mut maps, case.udp_only);
        let (kind, level) = match case.errno {
            ECONNREFUSED => (kind::REJECT, level::OFF),
            _ => (kind::DROP, drop_level(case.counter)),
        };
        let group_id = if maps.services.is_empty() {
            0
        } else {
            GROUP_ID
        };
        let event = Event {
            level,
            ..sock_event(case.proto, kind, case.counter, group_id, end([0; 4], 0))
        };
        assert_eq!(maps.events, vec![event], "{name}");
    }
}

#[test]
fn calls_left_alone_write_no_event() {
    let mut maps = maps(IPPROTO_TCP);
    maps.monitored = true;
    let mut elsewhere = FakeSock {
        addr: end([198, 18, 9, 9], 80),
        ..sock(IPPROTO_TCP, 7)
    };
    forward(&mut elsewhere, &mut maps, false);
    let mut tcp_sendmsg = sock(IPPROTO_TCP, 8);
    forward(&mut tcp_sendmsg, &mut maps, true);
    let mut connected = sock(IPPROTO_TCP, 9);
    forward(&mut connected, &mut maps, false);
    reverse(&mut connected, &mut maps);
    assert_eq!(
        maps.events.len(),
        1,
        "only the translation: {:?}",
        maps.events
    );
}

#[test]
fn session_affinity_keeps_the_namespace_on_one_backend() {
    let mut maps = maps(IPPROTO_TCP);
    let service = service_mut(&mut maps);
    service.flags = service_flags::AFFINITY;
    service.affinity_timeout_s = 60;
    let mut first = sock(IPPROTO_TCP, 1);
    forward(&mut first, &mut maps, false);
    for cookie in 2..50 {
        let mut s = sock(IPPROTO_TCP, cookie);
        forward(&mut s, &mut maps, false);
        assert_eq!(s.addr, first.addr, "cookie {cookie}");
    }
    // A socket of another translated namespace is another client.
    maps.config = NodeConfig::default().with_sock_netns(NETNS + 1);
    let spread: Vec<_> = (100..130)
        .map(|cookie| {
            let mut s = FakeSock {
                netns: NETNS + 1,
                ..sock(IPPROTO_TCP, cookie)
            };
            forward(&mut s, &mut maps, false);
            s.addr
        })
        .collect();
    assert!(spread.iter().all(|a| *a == spread[0]));
    assert_eq!(maps.affinity.len(), 2);

    // With every namespace translated, each pod's namespace is a client of its own.
    maps.config = maps.config.with_sock_all_netns(true);
    for cookie in 200..210 {
        let mut s = FakeSock {
            netns: NETNS + 2,
            ..sock(IPPROTO_TCP, cookie)
        };
        forward(&mut s, &mut maps, false);
    }
    assert_eq!(maps.affinity.len(), 3);
}

#[test]
fn new_sockets_follow_a_changed_endpoint_set() {
    let mut maps = maps(IPPROTO_TCP);
    // The agent replaces the backends with one new endpoint.
    let new = end([198, 18, 2, 1], 9090);
    maps.backends.insert(
        30,
        Backend::new(ipv4_mapped(new.addr), u16::from_be_bytes(new.port)),
    );
    maps.slots.insert(
        BackendSlotKey {
            group_id: GROUP_ID,
            slot: 1,
        },
        30,
    );
    service_mut(&mut maps).backend_count = 1;
    for cookie in 1..20 {
        let mut s = sock(IPPROTO_TCP, cookie);
        forward(&mut s, &mut maps, false);
        assert_eq!(s.addr, new);
    }
}

#[test]
fn source_ranges_check_the_nodes_bound_source_or_else_whether_a_range_holds_the_node() {
    let inside = [198, 18, 5, 7];
    let outside = [198, 18, 6, 7];
    // Bound address, a datagram's source (connect() never sees one), whether a range holds
    // the node; served at connect() and at sendmsg().
    let cases = [
        ([0; 4], [0; 4], true, (true, true)),
        ([0; 4], [0; 4], false, (false, false)),
        (inside, [0; 4], false, (true, true)),
        (outside, [0; 4], true, (false, false)),
        ([0; 4], inside, false, (false, true)),
        (outside, inside, false, (false, true)),
        (inside, outside, true, (true, false)),
    ];
    for (bound, msg_source, holds_node, (at_connect, at_sendmsg)) in cases {
        for (sendmsg, served) in [(false, at_connect), (true, at_sendmsg)] {
            let what = format!("bound {bound:?}, datagram {msg_source:?}, node {holds_node}");
            let what = format!("{what}, sendmsg {sendmsg}");
            let mut maps = maps(IPPROTO_UDP);
            source_ranges(&mut maps);
            if holds_node {
                service_mut(&mut maps).flags |= service_flags::NODE_IN_SOURCE_RANGES;
            }
            let mut s = FakeSock {
                bound,
                msg_source,
                ..sock(IPPROTO_UDP, 7)
            };
            let verdict = forward(&mut s, &mut maps, sendmsg);
            if served {
                assert_eq!(verdict, SockVerdict::Proceed, "{what}");
                assert_eq!(s.addr, expected(7), "{what}");
            } else {
                assert_eq!(verdict, SockVerdict::Refuse(EHOSTUNREACH), "{what}");
                assert_eq!(s.addr, VIP, "{what}");
                assert_eq!(maps.counter_value(Counter::DropSourceRange), 1, "{what}");
                assert_eq!(maps.stats_of(GROUP_ID).drops, 1, "{what}");
            }
        }
    }
}

#[test]
fn pods_sockets_to_a_service_with_source_ranges_are_left_to_the_packet_path() {
    let mut maps = maps(IPPROTO_TCP);
    maps.config = maps.config.with_sock_all_netns(true);
    source_ranges(&mut maps);
    service_mut(&mut maps).flags |= service_flags::NODE_IN_SOURCE_RANGES;
    for bound in [[0; 4], [198, 18, 5, 7], [198, 18, 6, 7]] {
        let mut pod = FakeSock {
            netns: NETNS + 1,
            bound,
            ..sock(IPPROTO_TCP, 7)
        };
        assert_eq!(forward(&mut pod, &mut maps, false), SockVerdict::Proceed);
        assert_eq!(
            pod.addr, VIP,
            "untranslated: the TC program sees its source"
        );
    }
    assert!(maps.counters.is_empty(), "{:?}", maps.counters);
    // The node's own socket is translated.
    let mut node = sock(IPPROTO_TCP, 7);
    assert_eq!(forward(&mut node, &mut maps, false), SockVerdict::Proceed);
    assert_eq!(node.addr, expected(7));
}
