//! IPv6 through the real TC and XDP programs (BPF_PROG_TEST_RUN), which tail-call their IPv6
//! twins: DNAT and reverse translation of TCP and UDP with checksums over the IPv6
//! pseudo-header, conntrack, the egress reply path, extension headers, ICMPv6 port
//! unreachable for a Service without endpoints, masquerading to the node's IPv6 address,
//! hairpin to `HAIRPIN_ADDR6`, and every IPv6 frame that is not a Service's passing untouched
//! (NDP above all). Expected frames are built from scratch by lb-frames.

mod fixture;

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};

use fixture::{
    cases::{run_cases, Case, Expect},
    deltas, Fixture, Hook, Verdict, HOOKS,
};
use lb_common::{
    config::{HAIRPIN_ADDR6, SNAT_PORT_MAX, SNAT_PORT_MIN},
    ipv4_mapped,
    net::{icmpv6, ipv6_ext, tcp_flags, ETH_HLEN},
    Counter, NodeConfig,
};
use lb_frames::{assert_frames_equal, Ext, Frame6, Icmp, DST_MAC, L4, SRC_MAC};
use lb_tests::require_root;
use lb_userspace::model::{
    DesiredService, DesiredState, Endpoint, Frontend, Protocol, ServicePortName,
};

const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x53, 0, 0, 0, 1);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x0a);
const BACKEND: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x0b);

fn vip(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(VIP, port, 0, 0)
}

fn client(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(CLIENT, port, 0, 0)
}

fn backend() -> SocketAddrV6 {
    SocketAddrV6::new(BACKEND, 8080, 0, 0)
}

/// A fixture whose one Service, `vip(port)` over `protocol`, balances to [`backend`].
fn one_backend(hook: Hook, port: u16, protocol: Protocol) -> Fixture {
    let mut fx = Fixture::new(hook);
    fx.set_services(&[(vip(port), protocol, &[backend()][..])]);
    fx
}

#[test]
fn tcp_is_translated_both_ways_and_follows_conntrack() {
    require_root!();
    for hook in HOOKS {
        let mut fx = one_backend(hook, 80, Protocol::Tcp);
        let syn = Frame6::tcp(client(40_000), vip(80), tcp_flags::SYN);
        let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &syn.clone().with_dst(backend()).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
        );
        assert_eq!(fx.conntrack_len(), 2, "a forward and a reply entry");

        let syn_ack = Frame6::tcp(backend(), client(40_000), tcp_flags::SYN | tcp_flags::ACK);
        let (verdict, out, moved) = fx.run_counted(&syn_ack.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &syn_ack.with_src(vip(80)).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
        );

        let ack = Frame6::tcp(client(40_000), vip(80), tcp_flags::ACK);
        let (_, out, moved) = fx.run_counted(&ack.to_bytes());
        assert_frames_equal(&out, &ack.with_dst(backend()).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ForwardTranslated, 1)])
        );
    }
}

#[test]
fn udp_is_translated_both_ways() {
    require_root!();
    for hook in HOOKS {
        let mut fx = one_backend(hook, 53, Protocol::Udp);
        let query = Frame6::udp(client(50_000), vip(53), b"query: demo.default.svc?");
        let (verdict, out, _) = fx.run_counted(&query.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &query.with_dst(backend()).to_bytes());
        let answer = Frame6::udp(backend(), client(50_000), b"answer, odd length");
        let (_, out, moved) = fx.run_counted(&answer.to_bytes());
        assert_frames_equal(&out, &answer.with_src(vip(53)).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
        );
    }
}

#[test]
fn extension_headers_are_kept_and_the_ports_after_them_translated() {
    require_root!();
    for hook in HOOKS {
        let mut fx = one_backend(hook, 80, Protocol::Tcp);
        let ext = vec![
            Ext::options(ipv6_ext::HOP_BY_HOP),
            Ext::routing(0),
            Ext::options(ipv6_ext::DESTINATION),
        ];
        let syn = Frame6::tcp(client(40_001), vip(80), tcp_flags::SYN).with_ext(ext);
        let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &syn.with_dst(backend()).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
        );
    }
}

#[test]
fn the_nodes_own_reply_is_translated_at_egress() {
    require_root!();
    let mut fx = one_backend(Hook::Tc, 80, Protocol::Tcp);
    let syn = Frame6::tcp(client(40_002), vip(80), tcp_flags::SYN);
    fx.run_counted(&syn.to_bytes());
    let syn_ack = Frame6::tcp(backend(), client(40_002), tcp_flags::SYN | tcp_flags::ACK);
    let (verdict, out, moved) = fx.run_counted_on(Hook::TcEgress, &syn_ack.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    assert_frames_equal(&out, &syn_ack.with_src(vip(80)).to_bytes());
    assert_eq!(moved, deltas(&[(Counter::ReplyTranslated, 1)]));
}

/// The ICMPv6 port unreachable the frontend answers `original` with, built from RFC 4443:
/// Ethernet addresses swapped, IPv6 from the destination back to the sender (traffic class
/// and flow label 0, hop limit 64), type 1 code 4 quoting as much of the original IPv6 packet
/// as fits in the minimum MTU of 1280 bytes (all but the reply's own 48 bytes of headers).
fn port_unreachable(original: &Frame6) -> Vec<u8> {
    let bytes = original.to_bytes();
    let quoted = bytes[ETH_HLEN..].iter().take(1280 - 48).copied().collect();
    let icmp = Icmp {
        icmp_type: icmpv6::DEST_UNREACH,
        code: icmpv6::PORT_UNREACH,
        rest: [0; 4],
        body: quoted,
    };
    let mut reply = Frame6::new(original.ip.dst, original.ip.src, L4::Icmp(icmp));
    (reply.dst_mac, reply.src_mac) = (SRC_MAC, DST_MAC);
    reply.ip.flow_label = 0;
    reply.to_bytes()
}

#[test]
fn a_service_without_endpoints_answers_icmpv6_port_unreachable() {
    require_root!();
    for hook in HOOKS {
        for syn in [
            Frame6::tcp(client(40_003), vip(80), tcp_flags::SYN),
            Frame6::tcp(client(40_004), vip(80), tcp_flags::SYN)
                .with_ext(vec![Ext::options(ipv6_ext::DESTINATION)]),
            // Extension headers of 96 bytes (an 88-byte PadN option header), all quoted.
            Frame6::tcp(client(40_005), vip(80), tcp_flags::SYN).with_ext(vec![
                Ext::options(ipv6_ext::HOP_BY_HOP),
                Ext {
                    kind: ipv6_ext::DESTINATION,
                    body: [&[1, 84][..], &[0; 84][..]].concat(),
                },
            ]),
        ] {
            let mut fx = Fixture::new(hook);
            fx.set_services(&[(vip(80), Protocol::Tcp, &[][..])]);
            let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
            assert_eq!(verdict, Verdict::SendBack, "{hook:?}");
            assert_frames_equal(&out, &port_unreachable(&syn));
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::RejectNoBackend, 1)])
            );
            assert_eq!(fx.conntrack_len(), 0);
        }
        let mut fx = Fixture::new(hook);
        fx.set_services(&[(vip(53), Protocol::Udp, &[][..])]);
        // An odd-length payload is quoted whole; a long one up to the minimum MTU.
        for payload in [&b"anyone?"[..], &[0x5a; 1400][..], &[0xa5; 1185][..]] {
            let query = Frame6::udp(client(50_001), vip(53), payload);
            let (verdict, out, _) = fx.run_counted(&query.to_bytes());
            assert_eq!(verdict, Verdict::SendBack, "{hook:?}");
            assert_frames_equal(&out, &port_unreachable(&query));
            assert!(out.len() <= ETH_HLEN + 1280);
        }
    }
}

/// A fixture with the TCP Service at `vip(80)`, for the stateless cases.
fn tcp_service(hook: Hook) -> Fixture {
    one_backend(hook, 80, Protocol::Tcp)
}

/// `frame` cut `cut` bytes short; its payload length still counts them.
fn cut(frame: Frame6, cut: usize) -> Vec<u8> {
    let mut bytes = frame.to_bytes();
    bytes.truncate(bytes.len() - cut);
    bytes
}

fn untouched(name: &'static str, input: Vec<u8>, counter: Counter) -> Case {
    Case {
        name,
        hooks: &HOOKS,
        setup: tcp_service,
        input,
        expect: Expect::untouched(deltas(&[(Counter::Packets, 1), (counter, 1)])),
    }
}

#[test]
fn ipv6_frames_that_are_not_a_services_pass_untouched() {
    require_root!();
    let syn = || Frame6::tcp(client(40_005), vip(80), tcp_flags::SYN);
    let icmp = |icmp_type| {
        let message = Icmp {
            icmp_type,
            code: 0,
            rest: [0; 4],
            body: VIP.octets().to_vec(),
        };
        Frame6::new(CLIENT, VIP, L4::Icmp(message)).to_bytes()
    };
    let many = vec![Ext::options(ipv6_ext::DESTINATION); 5];
    let late_hop_by_hop = vec![
        Ext::options(ipv6_ext::DESTINATION),
        Ext::options(ipv6_ext::HOP_BY_HOP),
    ];
    let in_extension = cut(
        syn().with_ext(vec![Ext::options(ipv6_ext::DESTINATION)]),
        20 + 6,
    );
    run_cases(&[
        untouched(
            "neighbour solicitation",
            icmp(icmpv6::NEIGHBOR_SOLICIT),
            Counter::OtherProtocol,
        ),
        untouched(
            "neighbour advertisement",
            icmp(icmpv6::NEIGHBOR_ADVERT),
            Counter::OtherProtocol,
        ),
        untouched(
            "echo request to the VIP",
            icmp(icmpv6::ECHO_REQUEST),
            Counter::OtherProtocol,
        ),
        untouched(
            "no Service at the address",
            Frame6::tcp(
                client(40_005),
                SocketAddrV6::new(CLIENT, 80, 0, 0),
                tcp_flags::SYN,
            )
            .to_bytes(),
            Counter::NotService,
        ),
        untouched(
            "fragment header",
            syn().with_ext(vec![Ext::fragment(0, true, 7)]).to_bytes(),
            Counter::Fragment,
        ),
        untouched(
            "routing header with segments left",
            syn().with_ext(vec![Ext::routing(1)]).to_bytes(),
            Counter::Ipv6RoutingPending,
        ),
        untouched(
            "five extension headers",
            syn().with_ext(many).to_bytes(),
            Counter::Ipv6ExtensionLimit,
        ),
        untouched(
            "hop-by-hop not first",
            syn().with_ext(late_hop_by_hop).to_bytes(),
            Counter::Ipv6ExtensionLimit,
        ),
        untouched(
            "UDP checksum 0",
            Frame6::udp(client(50_002), vip(80), b"x")
                .with_udp_zero_checksum()
                .to_bytes(),
            Counter::UdpZeroChecksum,
        ),
        Case {
            hooks: &[Hook::Xdp],
            ..untouched(
                "cut in the fixed header",
                cut(syn(), 20 + 10),
                Counter::TruncatedIpv6,
            )
        },
        // The kernel's TC test runner wants a whole IPv6 header; a real skb has one too.
        Case {
            name: "cut in the fixed header, at TC",
            hooks: &[Hook::Tc],
            setup: tcp_service,
            input: cut(syn(), 20 + 10),
            expect: Expect::Refused,
        },
        untouched(
            "cut in an extension header",
            in_extension,
            Counter::TruncatedIpv6,
        ),
        untouched(
            "cut in the TCP header",
            cut(syn(), 4),
            Counter::TruncatedIpv6,
        ),
    ]);
}

/// The node's IPv6 address on its external interface, which masqueraded IPv6 flows leave from.
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 2);

/// Masquerading of both families: IPv4 flows to 198.18.0.2, IPv6 flows to [`NODE6`].
fn masquerading_both() -> NodeConfig {
    NodeConfig::masquerading(ipv4_mapped([198, 18, 0, 2]), SNAT_PORT_MIN, SNAT_PORT_MAX)
        .with_snat_addr6(NODE6.octets())
}

/// Runs `request` through `fx`'s hook, checks it left source-NATed to `node` and a port of the
/// default range, to the backend, with the counters `moved` expects, and returns that end.
fn source_nated(
    fx: &mut Fixture,
    request: &Frame6,
    node: Ipv6Addr,
    counter: Counter,
) -> SocketAddrV6 {
    let (verdict, out, moved) = fx.run_counted(&request.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    let parsed = lb_frames::parse6(&out).expect("a valid IPv6 frame");
    assert_eq!(parsed.l4_checksum_ok, Some(true));
    let (port, _) = parsed.ports.expect("ports");
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port),
        "port {port}"
    );
    let end = SocketAddrV6::new(node, port, 0, 0);
    let expected = request.clone().with_src(end).with_dst(backend());
    assert_frames_equal(&out, &expected.to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1), (counter, 1)])
    );
    end
}

#[test]
fn an_external_ipv6_flow_to_a_remote_backend_is_masqueraded_to_the_nodes_ipv6_address() {
    require_root!();
    for (protocol, request, answer) in [
        (
            Protocol::Tcp,
            Frame6::tcp(client(40_010), vip(80), tcp_flags::SYN),
            Frame6::tcp(backend(), vip(80), tcp_flags::SYN | tcp_flags::ACK),
        ),
        (
            Protocol::Udp,
            Frame6::udp(client(40_010), vip(80), b"query"),
            Frame6::udp(backend(), vip(80), b"answer"),
        ),
    ] {
        let mut fx = one_backend(Hook::Xdp, 80, protocol);
        fx.set_node_config(&masquerading_both());
        let node = source_nated(&mut fx, &request, NODE6, Counter::Masqueraded);
        assert_eq!(fx.conntrack_len(), 2, "a forward and a reply entry");
        // The backend answers the node; XDP sends the answer back to the client from the VIP.
        let answer = answer.with_dst(node);
        let (verdict, out, moved) = fx.run_counted(&answer.to_bytes());
        assert_eq!(verdict, Verdict::Pass);
        let expected = answer.with_src(vip(80)).with_dst(client(40_010));
        assert_frames_equal(&out, &expected.to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
        );
    }
}

#[test]
fn ipv6_flows_are_only_dnated_when_the_node_masquerades_ipv4_alone() {
    require_root!();
    let mut fx = one_backend(Hook::Xdp, 80, Protocol::Tcp);
    let v4_only =
        NodeConfig::masquerading(ipv4_mapped([198, 18, 0, 2]), SNAT_PORT_MIN, SNAT_PORT_MAX);
    fx.set_node_config(&v4_only);
    let syn = Frame6::tcp(client(40_011), vip(80), tcp_flags::SYN);
    let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    assert_frames_equal(&out, &syn.with_dst(backend()).to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
    );
}

#[test]
fn a_pod_balanced_to_itself_over_ipv6_gets_its_request_from_the_ipv6_hairpin_address() {
    require_root!();
    // The pod asking is the Service's backend; masquerading is off (hairpin needs none).
    let mut fx = one_backend(Hook::Tc, 80, Protocol::Tcp);
    let pod = SocketAddrV6::new(BACKEND, 40_012, 0, 0);
    let syn = Frame6::tcp(pod, vip(80), tcp_flags::SYN);
    let hairpin = Ipv6Addr::from(HAIRPIN_ADDR6);
    let from = source_nated(&mut fx, &syn, hairpin, Counter::Hairpinned);
    // Its answer to the hairpin address comes back through TC, from the VIP.
    let syn_ack = Frame6::tcp(backend(), from, tcp_flags::SYN | tcp_flags::ACK);
    let (verdict, out, _) = fx.run_counted(&syn_ack.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    assert_frames_equal(&out, &syn_ack.with_src(vip(80)).with_dst(pod).to_bytes());
}

/// A router on the path between the node and the backend.
const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xfe, 0, 0, 0, 1);

/// An ICMPv6 error `from -> to` of `kind` (type, code) whose four bytes after the checksum are
/// `rest`, quoting the IPv6 packet of `quoted` (without its Ethernet header).
fn icmpv6_error(
    from: Ipv6Addr,
    to: Ipv6Addr,
    kind: (u8, u8),
    rest: [u8; 4],
    quoted: &Frame6,
) -> Frame6 {
    let icmp = Icmp {
        icmp_type: kind.0,
        code: kind.1,
        rest,
        body: quoted.to_bytes()[ETH_HLEN..].to_vec(),
    };
    Frame6::new(from, to, L4::Icmp(icmp))
}

/// Packet too big, next-hop MTU 1280.
const PACKET_TOO_BIG: (u8, u8) = (icmpv6::PACKET_TOO_BIG, 0);
const MTU_1280: [u8; 4] = 1280u32.to_be_bytes();

#[test]
fn a_routers_packet_too_big_about_a_masqueraded_request_reaches_the_client() {
    require_root!();
    let mut fx = one_backend(Hook::Xdp, 80, Protocol::Tcp);
    fx.set_node_config(&masquerading_both());
    let request = Frame6::tcp(client(40_020), vip(80), tcp_flags::ACK).with_payload(&[7; 1300]);
    let syn = Frame6::tcp(client(40_020), vip(80), tcp_flags::SYN);
    let node = source_nated(&mut fx, &syn, NODE6, Counter::Masqueraded);
    // The router cannot forward the masqueraded request and tells its source, the node.
    let sent = request.clone().with_src(node).with_dst(backend());
    let too_big = icmpv6_error(ROUTER, NODE6, PACKET_TOO_BIG, MTU_1280, &sent);
    let (verdict, out, moved) = fx.run_counted(&too_big.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    // The client gets it, quoting its own request to the VIP.
    let expected = icmpv6_error(ROUTER, CLIENT, PACKET_TOO_BIG, MTU_1280, &request);
    assert_frames_equal(&out, &expected.to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::IcmpErrorTranslated, 1)])
    );
}

#[test]
fn a_backends_port_unreachable_reaches_the_client_from_the_vip() {
    require_root!();
    for hook in HOOKS {
        let mut fx = one_backend(hook, 53, Protocol::Udp);
        let query = Frame6::udp(client(50_020), vip(53), b"query");
        fx.run_counted(&query.to_bytes());
        let unreachable = (icmpv6::DEST_UNREACH, icmpv6::PORT_UNREACH);
        let dnated = query.clone().with_dst(backend());
        let error = icmpv6_error(BACKEND, CLIENT, unreachable, [0; 4], &dnated);
        let (verdict, out, moved) = fx.run_counted(&error.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        let expected = icmpv6_error(VIP, CLIENT, unreachable, [0; 4], &query);
        assert_frames_equal(&out, &expected.to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::IcmpErrorTranslated, 1)]),
            "{hook:?}"
        );
    }
}

#[test]
fn an_error_about_a_reply_reaches_the_backend_quoting_its_answer() {
    require_root!();
    let mut fx = one_backend(Hook::Tc, 53, Protocol::Udp);
    let query = Frame6::udp(client(50_021), vip(53), b"query");
    fx.run_counted(&query.to_bytes());
    let answer = Frame6::udp(backend(), client(50_021), b"answer");
    fx.run_counted(&answer.to_bytes());
    // The client's port is closed by now: it refuses the answer it got from the VIP.
    let unreachable = (icmpv6::DEST_UNREACH, icmpv6::PORT_UNREACH);
    let received = answer.clone().with_src(vip(53));
    let error = icmpv6_error(CLIENT, VIP, unreachable, [0; 4], &received);
    let (_, out, moved) = fx.run_counted(&error.to_bytes());
    let expected = icmpv6_error(CLIENT, BACKEND, unreachable, [0; 4], &answer);
    assert_frames_equal(&out, &expected.to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::IcmpErrorTranslated, 1)])
    );
}

#[test]
fn errors_about_untracked_flows_and_behind_extension_headers_pass_untouched() {
    require_root!();
    let mut fx = one_backend(Hook::Xdp, 80, Protocol::Tcp);
    let stranger = Frame6::tcp(client(40_030), backend(), tcp_flags::ACK);
    let untracked = icmpv6_error(ROUTER, CLIENT, PACKET_TOO_BIG, MTU_1280, &stranger);
    let syn = Frame6::tcp(client(40_031), vip(80), tcp_flags::SYN);
    fx.run_counted(&syn.to_bytes());
    let tracked = icmpv6_error(
        ROUTER,
        CLIENT,
        PACKET_TOO_BIG,
        MTU_1280,
        &syn.with_dst(backend()),
    );
    let behind_options = tracked.with_ext(vec![Ext::options(ipv6_ext::DESTINATION)]);
    for frame in [untracked, behind_options] {
        let (verdict, out, moved) = fx.run_counted(&frame.to_bytes());
        assert_eq!(verdict, Verdict::Pass);
        assert_frames_equal(&out, &frame.to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::OtherProtocol, 1)])
        );
    }
}

#[test]
fn new_flows_to_unallocated_addresses_of_an_ipv6_service_cidr_are_dropped() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        fx.set_cluster_ip_services(&[(vip(80), Protocol::Tcp, &[backend()][..])]);
        fx.set_service_cidrs(&["2001:2:0:53::/120"]);
        let syn_to = |addr: Ipv6Addr, port| {
            Frame6::tcp(
                client(46_000),
                SocketAddrV6::new(addr, port, 0, 0),
                tcp_flags::SYN,
            )
        };
        let unallocated = syn_to(Ipv6Addr::new(0x2001, 2, 0, 0x53, 0, 0, 0, 0xff), 80);
        let (verdict, _, moved) = fx.run_counted(&unallocated.to_bytes());
        assert_eq!(verdict, Verdict::Drop, "{hook:?}");
        assert_eq!(
            moved,
            deltas(&[
                (Counter::Packets, 1),
                (Counter::DropUnallocatedServiceIp, 1)
            ])
        );
        // The ClusterIP inside refuses a port it does not expose; outside, nothing is ours.
        let (verdict, _, moved) = fx.run_counted(&syn_to(VIP, 443).to_bytes());
        assert_eq!(verdict, Verdict::SendBack, "{hook:?}");
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::RejectUnexposedPort, 1)])
        );
        let outside = syn_to(Ipv6Addr::new(0x2001, 2, 0, 0x54, 0, 0, 0, 1), 80);
        let (verdict, out, moved) = fx.run_counted(&outside.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &outside.to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::NotService, 1)])
        );
    }
}

#[test]
fn load_balancer_source_ranges_filter_ipv6_clients() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        let frontend = Frontend {
            addr: IpAddr::V6(VIP),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let name = ServicePortName {
            namespace: "default".into(),
            name: "ranged6".into(),
            port_name: String::new(),
        };
        let endpoint = Endpoint {
            addr: IpAddr::V6(BACKEND),
            port: 8080,
            local: true,
        };
        let mut service = DesiredService::uniform(name, [endpoint].into());
        // The client's /64 is allowed; a /128 elsewhere does not hold it.
        service.source_ranges = ["2001:2::/64", "2001:db8::1/128"]
            .map(|range| range.parse().unwrap())
            .into();
        fx.apply(&DesiredState::from_iter([(frontend, service)]));

        let allowed = Frame6::tcp(client(40_040), vip(80), tcp_flags::SYN);
        let (verdict, out, _) = fx.run_counted(&allowed.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &allowed.with_dst(backend()).to_bytes());
        let stranger = SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 9, 0, 0, 0, 1), 40_041, 0, 0);
        let refused = Frame6::tcp(stranger, vip(80), tcp_flags::SYN);
        let (verdict, _, moved) = fx.run_counted(&refused.to_bytes());
        assert_eq!(verdict, Verdict::Drop, "{hook:?}");
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::DropSourceRange, 1)])
        );
    }
}
