//! `loadBalancerSourceRanges` through the real XDP and TC programs (BPF_PROG_TEST_RUN),
//! programmed by the agent's reconciler into the LPM trie: a new flow to a load-balancer IP,
//! from outside the node (XDP, external scope) or from a pod (TC, internal scope), is served
//! only from a source inside one of its Service's ranges, else dropped and counted; node
//! ports, Services without ranges and established flows are not filtered.

mod fixture;

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use fixture::{backend, deltas, vip, Fixture, Hook, Verdict};
use ipnet::IpNet;
use lb_common::{net::tcp_flags, Counter, IPPROTO_TCP};
use lb_frames::{assert_frames_equal, Frame};
use lb_tests::require_root;
use lb_userspace::model::{
    BackendSet, DesiredService, DesiredState, Endpoint, Frontend, Protocol, ServicePortName,
};

/// A load-balancer IP frontend at `vip(port)` balancing to backend(1), admitting `ranges`.
fn filtered(port: u16, ranges: impl IntoIterator<Item = IpNet>) -> (Frontend, DesiredService) {
    filtered_at(vip(port), ranges)
}

/// [`filtered`] at `at` (another address: an unfiltered frontend of the same Service).
fn filtered_at(
    at: SocketAddrV4,
    ranges: impl IntoIterator<Item = IpNet>,
) -> (Frontend, DesiredService) {
    let port = at.port();
    let frontend = Frontend {
        addr: IpAddr::V4(*at.ip()),
        port,
        protocol: Protocol::Tcp,
    };
    let name = ServicePortName {
        namespace: "default".into(),
        name: format!("lb-{port}"),
        port_name: String::new(),
    };
    let target = backend(1);
    let endpoint = Endpoint {
        addr: IpAddr::V4(*target.ip()),
        port: target.port(),
        local: true,
    };
    let mut service = DesiredService::uniform(name, [endpoint].into());
    service.source_ranges = ranges.into_iter().collect();
    (frontend, service)
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn syn_from(source: Ipv4Addr, port: u16) -> Frame {
    Frame::tcp(SocketAddrV4::new(source, 40_000), vip(port), tcp_flags::SYN)
}

/// Runs a SYN from `source` to `vip(port)`: served (translated to backend(1)) or dropped.
fn assert_served(fx: &mut Fixture, source: [u8; 4], port: u16, served: bool) {
    assert_served_at(fx, source, vip(port), served);
}

/// [`assert_served`] for a SYN to `to`.
fn assert_served_at(fx: &mut Fixture, source: [u8; 4], to: SocketAddrV4, served: bool) {
    let syn = Frame::tcp(SocketAddrV4::new(source.into(), 40_000), to, tcp_flags::SYN);
    let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
    let what = format!("{:?}: {source:?} -> {to}", fx.hook);
    if served {
        assert_eq!(verdict, Verdict::Pass, "{what}");
        assert_frames_equal(&out, &syn.with_dst(backend(1)).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)]),
            "{what}"
        );
    } else {
        assert_eq!(verdict, Verdict::Drop, "{what}");
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::DropSourceRange, 1)]),
            "{what}"
        );
    }
}

#[test]
fn inside_outside_and_the_edges_of_a_range() {
    require_root!();
    let mut fx = Fixture::new(Hook::Xdp);
    fx.apply(&[filtered(80, [net("198.18.0.8/30")])].into_iter().collect());
    for (source, served) in [
        ([198, 18, 0, 8], true),
        ([198, 18, 0, 11], true),
        ([198, 18, 0, 7], false),
        ([198, 18, 0, 12], false),
        ([198, 19, 0, 8], false),
    ] {
        assert_served(&mut fx, source, 80, served);
    }
    let stats = fx.service_stats(vip(80), IPPROTO_TCP);
    assert_eq!(
        (stats.new_flows, stats.drops),
        (2, 3),
        "counted per service"
    );
    assert_eq!(fx.conntrack_len(), 4, "only the served flows are tracked");
}

#[test]
fn many_ranges_and_services_keep_each_services_own() {
    require_root!();
    let mut fx = Fixture::new(Hook::Xdp);
    // Service A: 1000 /32s in 203.0.0.0/16 and 198.18.0.0/24; service B: 1000 others.
    let many = |third: u8| {
        (0..1000u32).map(move |i| net(&format!("203.{third}.{}.{}/32", i / 250, i % 250)))
    };
    let a = filtered(80, many(0).chain([net("198.18.0.0/24")]));
    let b = filtered(81, many(1));
    let state: DesiredState = [a, b].into_iter().collect();
    fx.apply(&state);
    assert_served(&mut fx, [198, 18, 0, 10], 80, true);
    assert_served(&mut fx, [203, 0, 3, 249], 80, true);
    assert_served(&mut fx, [203, 0, 4, 0], 80, false);
    assert_served(&mut fx, [203, 1, 3, 249], 80, false);
    assert_served(&mut fx, [198, 18, 0, 10], 81, false);
    assert_served(&mut fx, [203, 1, 0, 0], 81, true);
    assert_served(&mut fx, [203, 0, 0, 0], 81, false);
}

#[test]
fn pods_are_filtered_by_their_own_source_but_not_at_a_node_port_or_another_service() {
    require_root!();
    let mut tc = Fixture::new(Hook::Tc);
    let node_port = SocketAddrV4::new([198, 18, 1, 254].into(), 30_080);
    let state: DesiredState = [
        filtered(80, [net("198.18.0.8/30")]),
        filtered_at(node_port, []),
        filtered(81, []),
    ]
    .into_iter()
    .collect();
    tc.apply(&state);
    assert_served(&mut tc, [198, 18, 0, 9], 80, true);
    assert_served(&mut tc, [198, 18, 0, 12], 80, false);
    assert_served_at(&mut tc, [198, 18, 0, 12], node_port, true);
    assert_served(&mut tc, [198, 18, 0, 12], 81, true);
    let stats = tc.service_stats(vip(80), IPPROTO_TCP);
    assert_eq!(
        (stats.new_flows, stats.drops),
        (1, 1),
        "counted per service"
    );
}

#[test]
fn pods_are_filtered_when_a_local_policy_gives_them_a_group_of_their_own() {
    require_root!();
    // externalTrafficPolicy: Local without a local endpoint: outside clients have no backend
    // (their own group, empty), pods reach backend(1) through the internal scope's group.
    let (frontend, mut service) = filtered(80, [net("198.18.0.8/30")]);
    service.external = Arc::new(BackendSet {
        endpoints: Default::default(),
        drop_if_empty: true,
    });
    let state: DesiredState = [(frontend, service)].into_iter().collect();
    let mut tc = Fixture::new(Hook::Tc);
    tc.apply(&state);
    assert_served(&mut tc, [198, 18, 0, 9], 80, true);
    assert_served(&mut tc, [198, 18, 0, 12], 80, false);

    let mut xdp = Fixture::new(Hook::Xdp);
    xdp.apply(&state);
    assert_served(&mut xdp, [198, 18, 0, 12], 80, false);
    let syn = syn_from([198, 18, 0, 9].into(), 80);
    let (verdict, _, moved) = xdp.run_counted(&syn.to_bytes());
    assert_eq!(verdict, Verdict::Drop);
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::DropNoBackend, 1)]),
        "inside the ranges: the policy decides"
    );
}

#[test]
fn established_flows_are_not_filtered() {
    require_root!();
    let mut fx = Fixture::new(Hook::Xdp);
    fx.apply(&[filtered(80, [net("198.18.0.8/30")])].into_iter().collect());
    assert_served(&mut fx, [198, 18, 0, 9], 80, true);
    // The ranges change to exclude the client: its flow goes on, a new one is dropped.
    fx.apply(&[filtered(80, [net("198.18.5.0/24")])].into_iter().collect());
    let ack = Frame::tcp(
        SocketAddrV4::new([198, 18, 0, 9].into(), 40_000),
        vip(80),
        tcp_flags::ACK,
    );
    let (verdict, _, moved) = fx.run_counted(&ack.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::ForwardTranslated, 1)])
    );
    assert_served(&mut fx, [198, 18, 0, 10], 80, false);
    // Without ranges every source is served again.
    fx.apply(&[filtered(80, [])].into_iter().collect());
    assert_served(&mut fx, [198, 18, 0, 10], 80, true);
}
