//! TCP through the real TC and XDP programs (BPF_PROG_TEST_RUN): DNAT of new connections,
//! reverse translation of replies, conntrack across backend changes, IP and TCP options.

mod fixture;

use std::collections::BTreeSet;

use fixture::{
    backend,
    cases::{run_cases, Case, Expect},
    client, deltas, vip, Fixture, Verdict, HOOKS,
};
use lb_common::{net::tcp_flags, Counter, IPPROTO_TCP};
use lb_frames::{assert_frames_equal, Frame};
use lb_tests::require_root;
use lb_userspace::model::Protocol;

const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];

fn three_backends() -> [std::net::SocketAddrV4; 3] {
    [backend(1), backend(2), backend(3)]
}

#[test]
fn syn_to_the_vip_is_translated_to_the_selected_backend() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::with_service(hook, vip(80), Protocol::Tcp, &three_backends());
        let mut chosen = BTreeSet::new();
        for port in 40_000..40_024 {
            let syn = Frame::tcp(client(port), vip(80), tcp_flags::SYN).with_tcp_options(&MSS_1460);
            let target = fx.expected_backend(&syn);
            let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
            assert_eq!(verdict, Verdict::Pass, "{hook:?}");
            assert_frames_equal(&out, &syn.clone().with_dst(target).to_bytes());
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
            );
            chosen.insert(target);
        }
        assert_eq!(
            chosen.len(),
            3,
            "{hook:?}: 24 flows should reach all backends: {chosen:?}"
        );
        assert_eq!(
            fx.conntrack_len(),
            48,
            "{hook:?}: a forward and a reply entry per flow"
        );
        let stats = fx.service_stats(vip(80), IPPROTO_TCP);
        assert_eq!(
            (stats.packets, stats.new_flows, stats.drops),
            (24, 24, 0),
            "{hook:?}"
        );
        let syn_len = Frame::tcp(client(1), vip(80), tcp_flags::SYN)
            .with_tcp_options(&MSS_1460)
            .to_bytes()
            .len() as u64;
        assert_eq!(stats.bytes, 24 * syn_len, "{hook:?}");
    }
}

#[test]
fn replies_are_translated_back_to_the_vip_and_the_flow_continues() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::with_service(hook, vip(80), Protocol::Tcp, &three_backends());
        let syn = Frame::tcp(client(41_000), vip(80), tcp_flags::SYN);
        let target = fx.expected_backend(&syn);
        fx.run(&syn.to_bytes());

        let syn_ack = Frame::tcp(target, client(41_000), tcp_flags::SYN | tcp_flags::ACK)
            .with_tcp_options(&MSS_1460);
        let (verdict, out, moved) = fx.run_counted(&syn_ack.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &syn_ack.with_src(vip(80)).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
        );

        // Odd-length payload: the checksum update must not depend on even lengths.
        let data = Frame::tcp(client(41_000), vip(80), tcp_flags::ACK | tcp_flags::PSH)
            .with_payload(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n!");
        let (verdict, out, moved) = fx.run_counted(&data.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &data.with_dst(target).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ForwardTranslated, 1)])
        );

        let answer = Frame::tcp(target, client(41_000), tcp_flags::ACK | tcp_flags::PSH)
            .with_payload(&[0xab; 1001]);
        let (_, out, moved) = fx.run_counted(&answer.to_bytes());
        assert_frames_equal(&out, &answer.with_src(vip(80)).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
        );
        assert_eq!(fx.conntrack_len(), 2, "{hook:?}: one flow, two entries");
    }
}

#[test]
fn established_flows_keep_their_backend_after_it_leaves_the_service() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::with_service(hook, vip(80), Protocol::Tcp, &three_backends());
        let syn = Frame::tcp(client(42_000), vip(80), tcp_flags::SYN);
        let old = fx.expected_backend(&syn);
        fx.run(&syn.to_bytes());

        let remaining: Vec<_> = three_backends().into_iter().filter(|b| *b != old).collect();
        fx.set_services(&[(vip(80), Protocol::Tcp, &remaining)]);

        let ack = Frame::tcp(client(42_000), vip(80), tcp_flags::ACK).with_payload(b"still there?");
        let (verdict, out, moved) = fx.run_counted(&ack.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &ack.with_dst(old).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ForwardTranslated, 1)])
        );

        let reply = Frame::tcp(old, client(42_000), tcp_flags::ACK).with_payload(b"yes");
        let (_, out, moved) = fx.run_counted(&reply.to_bytes());
        assert_frames_equal(&out, &reply.with_src(vip(80)).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
        );

        // New connections only go to the remaining backends.
        for port in 43_000..43_016 {
            let syn = Frame::tcp(client(port), vip(80), tcp_flags::SYN);
            let target = fx.expected_backend(&syn);
            assert!(remaining.contains(&target));
            let (_, out) = fx.run(&syn.to_bytes());
            assert_frames_equal(&out, &syn.with_dst(target).to_bytes());
        }

        // A new SYN on the old flow's tuple (port reuse) starts over on a remaining backend.
        let target = fx.expected_backend(&syn);
        let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert!(
            remaining.contains(&target),
            "{hook:?}: {target} was removed"
        );
        assert_frames_equal(&out, &syn.with_dst(target).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
        );
    }
}

#[test]
fn ip_options_are_kept_and_the_ports_after_them_translated() {
    require_root!();
    let router_alert = [0x94, 0x04, 0x00, 0x00];
    let nops_to_the_maximum = [0x01; 40]; // IHL 15, the largest header
    for hook in HOOKS {
        for options in [&router_alert[..], &nops_to_the_maximum[..]] {
            let mut fx = Fixture::with_service(hook, vip(80), Protocol::Tcp, &three_backends());
            let syn = Frame::tcp(client(44_000), vip(80), tcp_flags::SYN)
                .with_ip_options(options)
                .with_tcp_options(&MSS_1460);
            let target = fx.expected_backend(&syn);
            let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
            assert_eq!(
                verdict,
                Verdict::Pass,
                "{hook:?} {} option bytes",
                options.len()
            );
            assert_frames_equal(&out, &syn.clone().with_dst(target).to_bytes());
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
            );

            let reply = Frame::tcp(target, client(44_000), tcp_flags::SYN | tcp_flags::ACK)
                .with_ip_options(options);
            let (_, out) = fx.run(&reply.to_bytes());
            assert_frames_equal(&out, &reply.with_src(vip(80)).to_bytes());
        }
    }
}

#[test]
fn traffic_not_for_a_service_passes_untouched() {
    require_root!();
    let row = |name, frame: Frame| Case {
        name,
        hooks: &HOOKS,
        setup: |hook| Fixture::with_service(hook, vip(80), Protocol::Tcp, &three_backends()),
        input: frame.to_bytes(),
        expect: Expect::untouched(deltas(&[(Counter::Packets, 1), (Counter::NotService, 1)])),
    };
    let syn_to = |dst| Frame::tcp(client(45_000), dst, tcp_flags::SYN);
    run_cases(&[
        row("another port of the VIP", syn_to(vip(81))),
        row("another VIP", syn_to("198.19.0.2:80".parse().unwrap())),
        row("pod to pod", syn_to(backend(1))),
        row(
            "UDP to the TCP service's port",
            Frame::udp(client(45_000), vip(80), b"not tcp"),
        ),
    ]);
}
