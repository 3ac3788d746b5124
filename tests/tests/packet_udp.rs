//! UDP through the real TC and XDP programs (BPF_PROG_TEST_RUN): DNAT, reverse translation,
//! conntrack, checksum 0, Ethernet padding, and the agent's flush of flows to removed backends.

mod fixture;

use fixture::{backend, client, deltas, vip, Fixture, Verdict, HOOKS};
use lb_common::{Counter, IPPROTO_UDP};
use lb_frames::{assert_frames_equal, Frame};
use lb_tests::require_root;
use lb_userspace::model::Protocol;

fn three_backends() -> [std::net::SocketAddrV4; 3] {
    [backend(1), backend(2), backend(3)]
}

#[test]
fn datagrams_are_translated_both_ways_and_follow_conntrack() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::with_service(hook, vip(53), Protocol::Udp, &three_backends());
        let query = Frame::udp(client(50_000), vip(53), b"query: demo.default.svc?");
        let target = fx.expected_backend(&query);
        let (verdict, out, moved) = fx.run_counted(&query.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &query.clone().with_dst(target).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
        );

        let answer = Frame::udp(target, client(50_000), b"answer: 198.19.0.1");
        let (verdict, out, moved) = fx.run_counted(&answer.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &answer.with_src(vip(53)).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
        );

        let again = query.with_payload(b"odd-length follow-up");
        let (_, out, moved) = fx.run_counted(&again.to_bytes());
        assert_frames_equal(&out, &again.with_dst(target).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::ForwardTranslated, 1)])
        );

        let stats = fx.service_stats(vip(53), IPPROTO_UDP);
        assert_eq!((stats.packets, stats.new_flows), (3, 1), "{hook:?}");
    }
}

#[test]
fn checksum_zero_stays_zero() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::with_service(hook, vip(53), Protocol::Udp, &three_backends());
        let query = Frame::udp(client(50_001), vip(53), b"no checksum").with_udp_zero_checksum();
        let target = fx.expected_backend(&query);
        let (_, out) = fx.run(&query.to_bytes());
        assert_frames_equal(&out, &query.clone().with_dst(target).to_bytes());

        let answer = Frame::udp(target, client(50_001), b"none here").with_udp_zero_checksum();
        let (_, out) = fx.run(&answer.to_bytes());
        assert_frames_equal(&out, &answer.with_src(vip(53)).to_bytes());
    }
}

#[test]
fn ethernet_padding_after_the_packet_is_left_alone() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::with_service(hook, vip(53), Protocol::Udp, &three_backends());
        let query = Frame::udp(client(50_002), vip(53), b"x");
        let target = fx.expected_backend(&query);
        let pad = |mut bytes: Vec<u8>| {
            bytes.resize(60, 0); // minimum Ethernet frame without FCS
            bytes
        };
        let (verdict, out) = fx.run(&pad(query.to_bytes()));
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert_frames_equal(&out, &pad(query.with_dst(target).to_bytes()));
    }
}

#[test]
fn removing_a_backend_moves_its_udp_flows_to_the_others() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::with_service(hook, vip(53), Protocol::Udp, &three_backends());
        let query = Frame::udp(client(50_003), vip(53), b"first");
        let old = fx.expected_backend(&query);
        fx.run(&query.to_bytes());
        assert_eq!(fx.conntrack_len(), 2, "{hook:?}");

        let remaining: Vec<_> = three_backends().into_iter().filter(|b| *b != old).collect();
        fx.set_services(&[(vip(53), Protocol::Udp, &remaining)]);
        assert_eq!(
            fx.conntrack_len(),
            0,
            "{hook:?}: the agent flushes UDP flows of removed backends"
        );

        let target = fx.expected_backend(&query);
        let (verdict, out, moved) = fx.run_counted(&query.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        assert!(remaining.contains(&target), "{hook:?}");
        assert_frames_equal(&out, &query.with_dst(target).to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
        );
    }
}
