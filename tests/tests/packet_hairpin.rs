//! Hairpin through the real TC program (BPF_PROG_TEST_RUN): a pod that reaches its Service and
//! is balanced to itself gets the request from `lb_common::config::HAIRPIN_ADDR` and a port of
//! the masquerading range (the default one while `LB_CONFIG` sets none), not from its own
//! address; its answer to that address comes back through TC and is translated to the VIP.
//! Flows of the same pod to other backends, and XDP, are left alone.

mod fixture;

use std::net::{Ipv4Addr, SocketAddrV4};

use fixture::{backend, client, deltas, vip, Fixture, Hook, Verdict, CLIENT};
use lb_common::{
    config::{HAIRPIN_ADDR, SNAT_PORT_MAX, SNAT_PORT_MIN},
    ipv4_mapped,
    net::tcp_flags,
    service::{backend_flags, scope},
    Backend, Counter, NodeConfig, ServiceValue, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_frames::{assert_frames_equal, parse, Frame};
use lb_tests::require_root;
use lb_userspace::MapWriter;

const SERVICE_ID: u32 = 1;
/// The pod asking, as a backend of its own Service.
const ITSELF_ID: u32 = 11;
const OTHER_ID: u32 = 12;

/// The pod's server behind the Service.
fn itself() -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, 8080)
}

fn hairpin_addr() -> Ipv4Addr {
    Ipv4Addr::from(HAIRPIN_ADDR)
}

/// A TC fixture whose service vip(80)/`proto` (both scopes) balances to `backends` (the pod
/// itself, marked local, first), on a node with `config`.
fn setup(proto: u8, backends: &[(u32, SocketAddrV4)], config: NodeConfig) -> Fixture {
    let mut fx = Fixture::new(Hook::Tc);
    let value = ServiceValue {
        group_id: SERVICE_ID,
        backend_count: backends.len() as u32,
        ..ServiceValue::default()
    };
    fx.program(
        vip(80),
        proto,
        &[scope::EXTERNAL, scope::INTERNAL],
        value,
        backends,
    );
    let pod = Backend {
        flags: backend_flags::LOCAL,
        ..Backend::new(ipv4_mapped(CLIENT.octets()), 8080)
    };
    fx.writer()
        .set_backend(ITSELF_ID, &pod)
        .expect("writing the backend");
    fx.set_node_config(&config);
    fx
}

fn alone(proto: u8, config: NodeConfig) -> Fixture {
    setup(proto, &[(ITSELF_ID, itself())], config)
}

/// A new flow's first packet of `proto` from the pod's `port` to the VIP.
fn request(proto: u8, port: u16) -> Frame {
    match proto {
        IPPROTO_TCP => Frame::tcp(client(port), vip(80), tcp_flags::SYN),
        _ => Frame::udp(client(port), vip(80), b"query"),
    }
}

/// The pod's server's answer to `to`.
fn answer(proto: u8, to: SocketAddrV4) -> Frame {
    match proto {
        IPPROTO_TCP => Frame::tcp(itself(), to, tcp_flags::SYN | tcp_flags::ACK),
        _ => Frame::udp(itself(), to, b"answer"),
    }
}

/// Runs a new flow's `request` through TC, checks it was hairpinned (from the hairpin address
/// and a port in `ports` to the pod's server, valid checksums, counted) and returns the
/// address the pod's server sees.
fn hairpinned(
    fx: &mut Fixture,
    request: &Frame,
    ports: std::ops::RangeInclusive<u16>,
) -> SocketAddrV4 {
    let (verdict, out, moved) = fx.run_counted(&request.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    let parsed = parse(&out).expect("a valid frame");
    assert!(parsed.ip_checksum_ok && parsed.l4_checksum_ok == Some(true));
    let (port, _) = parsed.ports.expect("ports");
    assert!(ports.contains(&port), "port {port} outside {ports:?}");
    let seen = SocketAddrV4::new(hairpin_addr(), port);
    assert_frames_equal(
        &out,
        &request.clone().with_src(seen).with_dst(itself()).to_bytes(),
    );
    assert_eq!(
        moved,
        deltas(&[
            (Counter::Packets, 1),
            (Counter::NewFlows, 1),
            (Counter::Hairpinned, 1)
        ])
    );
    seen
}

#[test]
fn a_pod_balanced_to_itself_is_answered_from_the_vip_without_masquerading() {
    require_root!();
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let mut fx = alone(proto, NodeConfig::default());
        let first = request(proto, 40_000);
        let seen = hairpinned(&mut fx, &first, SNAT_PORT_MIN..=SNAT_PORT_MAX);
        let reply = answer(proto, seen);
        let (verdict, out, moved) = fx.run_counted(&reply.to_bytes());
        assert_eq!(verdict, Verdict::Pass);
        assert_frames_equal(
            &out,
            &reply.with_src(vip(80)).with_dst(client(40_000)).to_bytes(),
        );
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
        );
        assert_eq!(fx.conntrack_len(), 2, "a forward and a reply entry");
        assert_eq!(fx.stats_of(SERVICE_ID).new_flows, 1);
    }
}

#[test]
fn established_hairpin_flows_are_translated_both_ways_every_time() {
    require_root!();
    let mut fx = alone(IPPROTO_TCP, NodeConfig::default());
    let seen = hairpinned(
        &mut fx,
        &request(IPPROTO_TCP, 40_001),
        SNAT_PORT_MIN..=SNAT_PORT_MAX,
    );
    for round in 0..3u8 {
        let data = Frame::tcp(client(40_001), vip(80), tcp_flags::ACK | tcp_flags::PSH)
            .with_payload(&[round; 100]);
        let (verdict, out, moved) = fx.run_counted(&data.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "round {round}");
        assert_frames_equal(&out, &data.with_src(seen).with_dst(itself()).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ForwardTranslated, 1)])
        );
        let reply = Frame::tcp(itself(), seen, tcp_flags::ACK).with_payload(&[round; 200]);
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
    assert_eq!(fx.stats_of(SERVICE_ID).packets, 7);
}

#[test]
fn hairpin_ports_come_from_the_configured_range_and_the_address_stays_link_local() {
    require_root!();
    let node = ipv4_mapped([198, 18, 0, 2]);
    let mut fx = alone(IPPROTO_UDP, NodeConfig::masquerading(node, 62_000, 62_003));
    let mut ports = std::collections::BTreeSet::new();
    for port in 40_000..40_004 {
        let seen = hairpinned(&mut fx, &request(IPPROTO_UDP, port), 62_000..=62_003);
        ports.insert(seen.port());
    }
    assert_eq!(ports.len(), 4, "every flow its own port: {ports:?}");
    let fifth = request(IPPROTO_UDP, 40_004);
    let (verdict, out, moved) = fx.run_counted(&fifth.to_bytes());
    assert_eq!(verdict, Verdict::Drop);
    assert_frames_equal(&out, &fifth.to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::DropSnatPortsExhausted, 1)])
    );
}

#[test]
fn only_the_flows_balanced_to_the_pod_itself_are_hairpinned() {
    require_root!();
    let backends = [(ITSELF_ID, itself()), (OTHER_ID, backend(2))];
    let mut fx = setup(IPPROTO_TCP, &backends, NodeConfig::default());
    let (mut to_itself, mut to_other) = (0, 0);
    for port in 40_000..40_016 {
        let syn = request(IPPROTO_TCP, port);
        if fx.expected_backend(&syn) == itself() {
            hairpinned(&mut fx, &syn, SNAT_PORT_MIN..=SNAT_PORT_MAX);
            to_itself += 1;
        } else {
            let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
            assert_eq!(verdict, Verdict::Pass);
            assert_frames_equal(&out, &syn.with_dst(backend(2)).to_bytes());
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
            );
            to_other += 1;
        }
    }
    assert!(to_itself > 0 && to_other > 0, "{to_itself} / {to_other}");
}

#[test]
fn xdp_never_hairpins() {
    require_root!();
    let mut fx = alone(IPPROTO_TCP, NodeConfig::default());
    fx.hook = Hook::Xdp;
    let syn = request(IPPROTO_TCP, 40_000);
    let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    assert_frames_equal(&out, &syn.with_dst(itself()).to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
    );
}
