//! The TC egress program (BPF_PROG_TEST_RUN): replies the node's own stack sends for a flow
//! the TC or XDP program translated at ingress (a host-network backend answering a pod or an
//! outside client) leave from the frontend the client addressed, ICMP errors included.
//! Everything else passes untouched and moves no counter: egress counts only what it
//! translates (or drops), so `packets` stays the count of packets that entered.

mod fixture;

use std::net::{Ipv4Addr, SocketAddrV4};

use fixture::{
    cases::{run_cases, Case, Expect},
    client, deltas, vip, Fixture, Hook, Verdict, HOOKS,
};
use lb_common::{
    net::{tcp_flags, ETHERTYPE_ARP, ETH_HLEN, ETH_TYPE_OFFSET, IPPROTO_ICMP, IPV4_MIN_HLEN},
    service::scope,
    Counter, NodeConfig, ServiceValue, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_frames::{assert_frames_equal, Frame, L4};
use lb_tests::require_root;

const SERVICE_ID: u32 = 1;
const BACKEND_ID: u32 = 11;
const PORT_UNREACHABLE: (u8, u8) = (3, 3);

/// The backend: a server on the node's own address (a host-network pod).
fn host_backend() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 8080)
}

/// A fixture whose service vip(80)/`proto` (both scopes) balances to [`host_backend`],
/// running `hook`'s program by default.
fn setup(hook: Hook, proto: u8) -> Fixture {
    let mut fx = Fixture::new(hook);
    let value = ServiceValue {
        group_id: SERVICE_ID,
        backend_count: 1,
        ..ServiceValue::default()
    };
    let scopes = [scope::EXTERNAL, scope::INTERNAL];
    fx.program(
        vip(80),
        proto,
        &scopes,
        value,
        &[(BACKEND_ID, host_backend())],
    );
    fx
}

fn request(proto: u8) -> Frame {
    match proto {
        IPPROTO_TCP => Frame::tcp(client(40_000), vip(80), tcp_flags::SYN),
        _ => Frame::udp(client(40_000), vip(80), b"query"),
    }
}

fn reply(proto: u8) -> Frame {
    match proto {
        IPPROTO_TCP => Frame::tcp(
            host_backend(),
            client(40_000),
            tcp_flags::SYN | tcp_flags::ACK,
        ),
        _ => Frame::udp(host_backend(), client(40_000), b"answer"),
    }
}

/// Runs the client's request through the fixture's ingress hook: it reaches the host backend.
fn start_flow(fx: &mut Fixture, proto: u8) {
    let sent = request(proto);
    let (verdict, out, _) = fx.run_counted_on(fx.hook, &sent.to_bytes());
    assert_eq!(verdict, Verdict::Pass, "{:?}", fx.hook);
    assert_frames_equal(&out, &sent.with_dst(host_backend()).to_bytes());
}

#[test]
fn a_host_backends_replies_leave_from_the_frontend() {
    require_root!();
    for hook in HOOKS {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let mut fx = setup(hook, proto);
            start_flow(&mut fx, proto);
            let before = fx.stats_of(SERVICE_ID).packets;
            let answer = reply(proto);
            let (verdict, out, moved) = fx.run_counted_on(Hook::TcEgress, &answer.to_bytes());
            assert_eq!(verdict, Verdict::Pass, "{hook:?} {proto}");
            assert_frames_equal(&out, &answer.clone().with_src(vip(80)).to_bytes());
            assert_eq!(
                moved,
                deltas(&[(Counter::ReplyTranslated, 1)]),
                "{hook:?} {proto}"
            );
            assert_eq!(fx.stats_of(SERVICE_ID).packets, before + 1);

            // Later packets of the flow too, e.g. the server closing the connection.
            let later = match proto {
                IPPROTO_TCP => Frame::tcp(
                    host_backend(),
                    client(40_000),
                    tcp_flags::FIN | tcp_flags::ACK,
                ),
                _ => answer.with_payload(b"second answer"),
            };
            let (_, out, _) = fx.run_counted_on(Hook::TcEgress, &later.to_bytes());
            assert_frames_equal(&out, &later.with_src(vip(80)).to_bytes());
            assert_eq!(fx.conntrack_len(), 2, "{hook:?} {proto}");
        }
    }
}

#[test]
fn requests_and_replies_translated_at_ingress_pass_egress_untouched() {
    require_root!();
    for hook in HOOKS {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let mut fx = setup(hook, proto);
            start_flow(&mut fx, proto);
            // The request as ingress left it (a pod backend's veth sees this at egress), the
            // request as the client sent it, and a reply already translated back to the VIP.
            for frame in [
                request(proto).with_dst(host_backend()),
                request(proto),
                reply(proto).with_src(vip(80)),
            ] {
                let (verdict, out, moved) = fx.run_counted_on(Hook::TcEgress, &frame.to_bytes());
                assert_eq!(verdict, Verdict::Pass, "{hook:?} {proto}");
                assert_frames_equal(&out, &frame.to_bytes());
                assert_eq!(moved, deltas(&[]), "{hook:?} {proto}");
            }
            assert_eq!(fx.conntrack_len(), 2, "{hook:?} {proto}: the flow stays");
        }
    }
}

#[test]
fn a_host_backends_port_unreachable_reaches_the_client_from_the_frontend() {
    require_root!();
    for hook in HOOKS {
        let mut fx = setup(hook, IPPROTO_UDP);
        start_flow(&mut fx, IPPROTO_UDP);
        let sent = request(IPPROTO_UDP);
        let at_backend = sent.clone().with_dst(host_backend());
        let error = Frame::icmp_error(
            *host_backend().ip(),
            *client(0).ip(),
            PORT_UNREACHABLE,
            &at_backend,
            None,
        );
        let expected =
            Frame::icmp_error(*vip(0).ip(), *client(0).ip(), PORT_UNREACHABLE, &sent, None);
        let (verdict, out, moved) = fx.run_counted_on(Hook::TcEgress, &error.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &expected.to_bytes());
        assert_eq!(moved, deltas(&[(Counter::IcmpErrorTranslated, 1)]));
    }
}

#[test]
fn a_backend_at_the_masquerading_address_is_never_masqueraded() {
    require_root!();
    // Listed without a nodeName, the endpoint is not known to be local; its address says it is.
    let mut fx = setup(Hook::Xdp, IPPROTO_TCP);
    let node = lb_common::ipv4_mapped(host_backend().ip().octets());
    fx.set_node_config(&NodeConfig::masquerading(node, 61_000, 65_535));
    let sent = request(IPPROTO_TCP);
    let (verdict, out, moved) = fx.run_counted(&sent.to_bytes());
    assert_eq!(verdict, Verdict::Pass);
    assert_frames_equal(&out, &sent.with_dst(host_backend()).to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
    );
    let (_, out, moved) = fx.run_counted_on(Hook::TcEgress, &reply(IPPROTO_TCP).to_bytes());
    assert_frames_equal(&out, &reply(IPPROTO_TCP).with_src(vip(80)).to_bytes());
    assert_eq!(moved, deltas(&[(Counter::ReplyTranslated, 1)]));
}

/// A row: `input` passes egress untouched, moving no counter and creating no flow.
fn untouched(name: &'static str, input: Vec<u8>) -> Case {
    Case {
        name,
        hooks: &[Hook::TcEgress],
        setup: |hook| setup(hook, IPPROTO_TCP),
        input,
        expect: Expect::untouched(deltas(&[])),
    }
}

#[test]
fn everything_but_a_tracked_reply_passes_egress_untouched_and_uncounted() {
    require_root!();
    let syn = request(IPPROTO_TCP);
    let tcp = syn.to_bytes();
    let mut arp = tcp.clone();
    arp[ETH_TYPE_OFFSET..ETH_TYPE_OFFSET + 2].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let echo_request = syn.clone().with_l4(L4::Raw {
        protocol: IPPROTO_ICMP,
        bytes: vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0],
    });
    let untracked_error = Frame::icmp_error(
        *host_backend().ip(),
        *client(0).ip(),
        PORT_UNREACHABLE,
        &Frame::udp(client(40_001), host_backend(), b"?"),
        None,
    );
    #[rustfmt::skip]
    let cases = [
        untouched("a SYN to the frontend (no new flow at egress)", tcp.clone()),
        untouched("a reply of no tracked flow",                    reply(IPPROTO_TCP).to_bytes()),
        untouched("a UDP datagram of no tracked flow",             reply(IPPROTO_UDP).to_bytes()),
        untouched("an ICMP error about no tracked flow",           untracked_error.to_bytes()),
        untouched("an ICMP echo request",                          echo_request.to_bytes()),
        untouched("ARP",                                           arp),
        untouched("TCP header absent",                 tcp[..ETH_HLEN + IPV4_MIN_HLEN].to_vec()),
        untouched("a fragment",            syn.with_payload(&[7; 64]).with_fragment(true, 0).to_bytes()),
    ];
    run_cases(&cases);
}
