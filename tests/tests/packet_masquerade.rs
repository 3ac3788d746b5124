//! Masquerading through the real TC and XDP programs (BPF_PROG_TEST_RUN): an external (XDP)
//! flow to a backend without `backend_flags::LOCAL` leaves from the node's address and a port
//! of the configured range when `LB_CONFIG` masquerades, and the backend's answers to that
//! port are translated back to the client by either hook. Local backends, internal (TC) flows
//! and a node that does not masquerade keep the client's address. A port goes to a new flow
//! only once its flow is closed or idle (`lb_common::conntrack::CLOSING_REUSE_NS`).

mod fixture;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use fixture::{backend, client, deltas, vip, Fixture, Hook, Verdict, HOOKS};
use lb_common::{
    config::{SNAT_PORT_MAX, SNAT_PORT_MIN},
    conntrack::{CLOSING_REUSE_NS, UDP_REUSE_NS},
    ipv4_mapped,
    net::tcp_flags,
    service::backend_flags,
    Counter, NodeConfig, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_frames::{assert_frames_equal, parse, Frame};
use lb_tests::require_root;

const SERVICE_ID: u32 = 1;
const BACKEND_ID: u32 = 11;
/// The node's address on its external interface, which masqueraded flows leave from.
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn masquerading(min: u16, max: u16) -> NodeConfig {
    NodeConfig::masquerading(ipv4_mapped(NODE.octets()), min, max)
}

fn default_masquerading() -> NodeConfig {
    masquerading(SNAT_PORT_MIN, SNAT_PORT_MAX)
}

/// A fixture for `hook` whose service vip(80)/`proto` (both scopes) balances to backend(1)
/// with `flags`, on a node with `config`.
fn setup(hook: Hook, proto: u8, flags: u8, config: NodeConfig) -> Fixture {
    Fixture::one_backend(hook, proto, (SERVICE_ID, BACKEND_ID), flags, &config)
}

/// A new flow's first packet of `proto` from `from` to the VIP.
fn request(proto: u8, from: SocketAddrV4) -> Frame {
    match proto {
        IPPROTO_TCP => Frame::tcp(from, vip(80), tcp_flags::SYN),
        _ => Frame::udp(from, vip(80), b"query"),
    }
}

/// The backend's answer to `to`.
fn answer(proto: u8, to: SocketAddrV4) -> Frame {
    match proto {
        IPPROTO_TCP => Frame::tcp(backend(1), to, tcp_flags::SYN | tcp_flags::ACK),
        _ => Frame::udp(backend(1), to, b"answer"),
    }
}

/// Runs a new flow's `request` through XDP, checks it was masqueraded (node address, a port
/// in `ports`, destination the backend, valid checksums, counted) and returns the node's end.
fn masqueraded(
    fx: &mut Fixture,
    request: &Frame,
    ports: std::ops::RangeInclusive<u16>,
) -> SocketAddrV4 {
    fx.hook = Hook::Xdp;
    let (verdict, out, moved) = fx.run_counted(&request.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    let parsed = parse(&out).expect("a valid frame");
    assert!(parsed.ip_checksum_ok && parsed.l4_checksum_ok == Some(true));
    let (port, _) = parsed.ports.expect("ports");
    assert!(ports.contains(&port), "port {port} outside {ports:?}");
    let node = SocketAddrV4::new(NODE, port);
    assert_frames_equal(
        &out,
        &request
            .clone()
            .with_src(node)
            .with_dst(backend(1))
            .to_bytes(),
    );
    assert_eq!(
        moved,
        deltas(&[
            (Counter::Packets, 1),
            (Counter::NewFlows, 1),
            (Counter::Masqueraded, 1)
        ])
    );
    node
}

/// Runs `frame` through `hook` and checks it came out only DNATed to backend(1) as a new,
/// unmasqueraded flow.
fn only_dnated(fx: &mut Fixture, hook: Hook, frame: &Frame) {
    fx.hook = hook;
    let (verdict, out, moved) = fx.run_counted(&frame.to_bytes());
    assert_eq!(verdict, Verdict::Pass, "{hook:?}");
    assert_frames_equal(&out, &frame.clone().with_dst(backend(1)).to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)]),
        "{hook:?}"
    );
}

#[test]
fn an_external_flow_to_a_remote_backend_leaves_from_the_node() {
    require_root!();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let mut fx = setup(Hook::Xdp, proto, 0, default_masquerading());
        masqueraded(
            &mut fx,
            &request(proto, client(40_000)),
            SNAT_PORT_MIN..=SNAT_PORT_MAX,
        );
        assert_eq!(fx.conntrack_len(), 2, "a forward and a reply entry");
        assert_eq!(fx.stats_of(SERVICE_ID).new_flows, 1);
    }
}

#[test]
fn udp_without_checksum_is_masqueraded_without_one() {
    require_root!();
    let mut fx = setup(Hook::Xdp, IPPROTO_UDP, 0, default_masquerading());
    let query = request(IPPROTO_UDP, client(40_000)).with_udp_zero_checksum();
    let node = masqueraded(&mut fx, &query, SNAT_PORT_MIN..=SNAT_PORT_MAX);
    let reply = answer(IPPROTO_UDP, node).with_udp_zero_checksum();
    let (_, out) = fx.run(&reply.to_bytes());
    assert_frames_equal(
        &out,
        &reply.with_src(vip(80)).with_dst(client(40_000)).to_bytes(),
    );
}

#[test]
fn the_backends_answer_goes_back_to_the_client_through_either_hook() {
    require_root!();
    // XDP: the backend is on another node; TC: on this node but not marked local.
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        for reply_hook in HOOKS {
            let mut fx = setup(Hook::Xdp, proto, 0, default_masquerading());
            let node = masqueraded(
                &mut fx,
                &request(proto, client(40_000)),
                SNAT_PORT_MIN..=SNAT_PORT_MAX,
            );
            fx.hook = reply_hook;
            let reply = answer(proto, node);
            let (verdict, out, moved) = fx.run_counted(&reply.to_bytes());
            assert_eq!(verdict, Verdict::Pass, "{reply_hook:?}");
            assert_frames_equal(
                &out,
                &reply.with_src(vip(80)).with_dst(client(40_000)).to_bytes(),
            );
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)]),
                "{reply_hook:?}"
            );
        }
    }
}

#[test]
fn established_flows_are_translated_both_ways_every_time() {
    require_root!();
    let mut fx = setup(Hook::Xdp, IPPROTO_TCP, 0, default_masquerading());
    let syn = request(IPPROTO_TCP, client(40_001));
    let node = masqueraded(&mut fx, &syn, SNAT_PORT_MIN..=SNAT_PORT_MAX);
    for round in 0..4u8 {
        fx.hook = Hook::Xdp;
        let data = Frame::tcp(client(40_001), vip(80), tcp_flags::ACK | tcp_flags::PSH)
            .with_payload(&[round; 100]);
        let (verdict, out, moved) = fx.run_counted(&data.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "round {round}");
        assert_frames_equal(&out, &data.with_src(node).with_dst(backend(1)).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ForwardTranslated, 1)])
        );

        fx.hook = HOOKS[usize::from(round % 2)];
        let reply = Frame::tcp(backend(1), node, tcp_flags::ACK).with_payload(&[round + 100; 200]);
        let (verdict, out, moved) = fx.run_counted(&reply.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "round {round}");
        assert_frames_equal(
            &out,
            &reply.with_src(vip(80)).with_dst(client(40_001)).to_bytes(),
        );
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
        );
    }
    let stats = fx.stats_of(SERVICE_ID);
    assert_eq!((stats.packets, stats.new_flows), (9, 1));
    assert_eq!(fx.conntrack_len(), 2);
}

#[test]
fn a_local_backend_sees_the_client() {
    require_root!();
    let mut fx = setup(
        Hook::Xdp,
        IPPROTO_TCP,
        backend_flags::LOCAL,
        default_masquerading(),
    );
    let syn = request(IPPROTO_TCP, client(40_002));
    only_dnated(&mut fx, Hook::Xdp, &syn);
    // Its answer comes through its veth (TC), addressed to the client.
    fx.hook = Hook::Tc;
    let reply = answer(IPPROTO_TCP, client(40_002));
    let (_, out) = fx.run(&reply.to_bytes());
    assert_frames_equal(&out, &reply.with_src(vip(80)).to_bytes());
}

#[test]
fn internal_flows_are_never_masqueraded() {
    require_root!();
    let mut fx = setup(Hook::Tc, IPPROTO_TCP, 0, default_masquerading());
    only_dnated(&mut fx, Hook::Tc, &request(IPPROTO_TCP, client(40_003)));
}

#[test]
fn a_node_without_masquerading_only_dnats() {
    require_root!();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let mut fx = setup(Hook::Xdp, proto, 0, NodeConfig::default());
        only_dnated(&mut fx, Hook::Xdp, &request(proto, client(40_004)));
        // Turned off again after having been on.
        let mut fx = setup(Hook::Xdp, proto, 0, default_masquerading());
        fx.set_node_config(&NodeConfig::default());
        only_dnated(&mut fx, Hook::Xdp, &request(proto, client(40_004)));
    }
}

#[test]
fn clients_of_one_backend_get_different_ports_and_their_own_answers() {
    require_root!();
    // Eight ports for eight clients: first choices collide, the retries must find the rest.
    let ports = 61_000..=61_007;
    let mut fx = setup(
        Hook::Xdp,
        IPPROTO_TCP,
        0,
        masquerading(*ports.start(), *ports.end()),
    );
    let clients: Vec<SocketAddrV4> = (10..18)
        .map(|n| SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, n), 40_000))
        .collect();
    let nodes: Vec<SocketAddrV4> = clients
        .iter()
        .map(|c| masqueraded(&mut fx, &request(IPPROTO_TCP, *c), ports.clone()))
        .collect();
    let distinct: BTreeSet<u16> = nodes.iter().map(|n| n.port()).collect();
    assert_eq!(distinct.len(), clients.len(), "ports {nodes:?}");
    for (client, node) in clients.iter().zip(&nodes) {
        let reply = answer(IPPROTO_TCP, *node);
        let (_, out) = fx.run(&reply.to_bytes());
        assert_frames_equal(&out, &reply.with_src(vip(80)).with_dst(*client).to_bytes());
    }
}

#[test]
fn a_flow_finding_no_free_port_is_dropped_and_counted() {
    require_root!();
    let mut fx = setup(Hook::Xdp, IPPROTO_TCP, 0, masquerading(62_000, 62_000));
    let first = request(IPPROTO_TCP, client(40_005));
    let node = masqueraded(&mut fx, &first, 62_000..=62_000);
    let other_client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 40_005);
    let second = request(IPPROTO_TCP, other_client);
    let (verdict, out, moved) = fx.run_counted(&second.to_bytes());
    assert_eq!(verdict, Verdict::Drop);
    assert_frames_equal(&out, &second.to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::DropSnatPortsExhausted, 1)])
    );
    assert_eq!(fx.stats_of(SERVICE_ID).drops, 1);
    assert_eq!(fx.conntrack_len(), 2, "only the first flow's entries");
    // The first flow keeps working.
    let ack = Frame::tcp(client(40_005), vip(80), tcp_flags::ACK);
    let (_, out) = fx.run(&ack.to_bytes());
    assert_frames_equal(&out, &ack.with_src(node).with_dst(backend(1)).to_bytes());
}

/// A second of margin over a reuse interval, for the time the test itself takes.
const MARGIN_NS: u64 = 1_000_000_000;

/// The node's one port in the ranges below.
const ONE_PORT: u16 = 62_100;

/// Runs a new flow's first packet from another client through XDP and checks it was dropped
/// for want of a port.
fn finds_the_port_taken(fx: &mut Fixture, request: &Frame) {
    fx.hook = Hook::Xdp;
    let (verdict, _, moved) = fx.run_counted(&request.to_bytes());
    assert_eq!(verdict, Verdict::Drop);
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::DropSnatPortsExhausted, 1)])
    );
}

/// Checks the backend's answer to `node` goes to `client` through TC.
fn answers_go_to(fx: &mut Fixture, proto: u8, node: SocketAddrV4, client: SocketAddrV4) {
    fx.hook = Hook::Tc;
    let reply = answer(proto, node);
    let (_, out) = fx.run(&reply.to_bytes());
    assert_frames_equal(&out, &reply.with_src(vip(80)).with_dst(client).to_bytes());
}

#[test]
fn a_closed_connections_port_goes_to_a_new_flow_once_idle() {
    require_root!();
    let mut fx = setup(Hook::Xdp, IPPROTO_TCP, 0, masquerading(ONE_PORT, ONE_PORT));
    let first = client(40_006);
    let node = masqueraded(&mut fx, &request(IPPROTO_TCP, first), ONE_PORT..=ONE_PORT);
    // The client closes; the backend's FIN comes back through TC.
    let fin = tcp_flags::FIN | tcp_flags::ACK;
    fx.hook = Hook::Xdp;
    assert_eq!(
        fx.run(&Frame::tcp(first, vip(80), fin).to_bytes()).0,
        Verdict::Pass
    );
    fx.hook = Hook::Tc;
    assert_eq!(
        fx.run(&Frame::tcp(backend(1), node, fin).to_bytes()).0,
        Verdict::Pass
    );

    let other = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 40_006);
    let second = request(IPPROTO_TCP, other);
    finds_the_port_taken(&mut fx, &second);
    fx.age_conntrack(CLOSING_REUSE_NS + MARGIN_NS);
    assert_eq!(
        masqueraded(&mut fx, &second, ONE_PORT..=ONE_PORT),
        node,
        "the same port"
    );
    assert_eq!(fx.conntrack_len(), 2, "the closed flow's entries are gone");
    answers_go_to(&mut fx, IPPROTO_TCP, node, other);
}

#[test]
fn an_open_connection_keeps_its_port_while_a_udp_flow_gives_it_up_after_a_minute() {
    require_root!();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let mut fx = setup(Hook::Xdp, proto, 0, masquerading(ONE_PORT, ONE_PORT));
        let first = client(40_007);
        let node = masqueraded(&mut fx, &request(proto, first), ONE_PORT..=ONE_PORT);
        answers_go_to(&mut fx, proto, node, first);
        let other = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 40_007);
        let second = request(proto, other);
        fx.age_conntrack(UDP_REUSE_NS + MARGIN_NS);
        if proto == IPPROTO_TCP {
            finds_the_port_taken(&mut fx, &second);
            answers_go_to(&mut fx, proto, node, first);
        } else {
            masqueraded(&mut fx, &second, ONE_PORT..=ONE_PORT);
            answers_go_to(&mut fx, proto, node, other);
            assert_eq!(fx.conntrack_len(), 2);
        }
    }
}
