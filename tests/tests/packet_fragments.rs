//! IPv4 fragments through the real TC and XDP programs (BPF_PROG_TEST_RUN): a UDP datagram cut
//! as a sender with a 1500-byte MTU cuts it. Its first fragment (the one with the UDP header)
//! is handled as any packet and records the datagram's ports; the later ones follow its flow,
//! only their addresses translated. A later fragment whose first one was not seen passes
//! untouched and is counted (`fragment_unknown`); so does one whose datagram started no flow.
//! A host-network backend's answer, fragmented by the node's stack, is translated at TC egress.
//! Output fragments are compared byte for byte with the translated datagram cut the same way,
//! and reassembled to verify the UDP checksum over the whole datagram.

mod fixture;

use std::net::{Ipv4Addr, SocketAddrV4};

use fixture::{
    backend,
    cases::{run_cases, Case, Expect},
    client, deltas, vip, Deltas, Fixture, Hook, Verdict, HOOKS,
};
use lb_common::{
    net::{tcp_flags, IPPROTO_TCP, UDP_HLEN},
    service::scope,
    Counter, ServiceValue, IPPROTO_UDP,
};
use lb_frames::{assert_frames_equal, checksums_valid, parse, reassemble, Frame, L4};
use lb_tests::require_root;
use lb_userspace::model::Protocol;

/// The MTU the datagrams are fragmented for.
const MTU: usize = 1500;

fn udp_service(hook: Hook) -> Fixture {
    Fixture::with_service(
        hook,
        vip(53),
        Protocol::Udp,
        &[backend(1), backend(2), backend(3)],
    )
}

/// A 4000-byte UDP datagram (three fragments at [`MTU`]) whose every byte differs from its
/// neighbours, so a write into any fragment's payload shows.
fn datagram(src: SocketAddrV4, dst: SocketAddrV4) -> Frame {
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
    Frame::udp(src, dst, &payload)
}

/// Counters a fragment moves besides `outcome`.
fn fragment_deltas(outcome: &[(Counter, u64)]) -> Deltas {
    let mut all = vec![(Counter::Packets, 1), (Counter::Fragment, 1)];
    all.extend_from_slice(outcome);
    deltas(&all)
}

/// Runs `fragments` in order; checks each is passed translated to `expected`'s fragment of the
/// same index, moving `first` for the first one and `later` for the others, and that the
/// output reassembles into `expected` with every checksum valid.
fn run_datagram(
    fx: &mut Fixture,
    fragments: &[Vec<u8>],
    expected: &Frame,
    first: Counter,
    later: Counter,
) {
    let expected_fragments = expected.to_fragments(MTU);
    let mut out = Vec::new();
    for (i, (fragment, expected)) in fragments.iter().zip(&expected_fragments).enumerate() {
        let (verdict, output, moved) = fx.run_counted(fragment);
        assert_eq!(verdict, Verdict::Pass, "fragment {i} on {:?}", fx.hook);
        assert_frames_equal(&output, expected);
        assert!(parse(&output).unwrap().ip_checksum_ok, "fragment {i}");
        let outcome = if i == 0 { first } else { later };
        assert_eq!(moved, fragment_deltas(&[(outcome, 1)]), "fragment {i}");
        out.push(output);
    }
    let whole = reassemble(&out);
    assert!(checksums_valid(&whole), "the reassembled datagram");
    assert_frames_equal(&whole, &reassemble(&expected_fragments));
}

#[test]
fn a_datagrams_fragments_follow_its_first_both_ways() {
    require_root!();
    for hook in HOOKS {
        let mut fx = udp_service(hook);
        let query = datagram(client(50_000), vip(53));
        let target = fx.expected_backend(&query);
        let fragments = query.to_fragments(MTU);
        assert_eq!(fragments.len(), 3);
        let at_backend = query.clone().with_dst(target);
        use Counter::{ForwardTranslated, NewFlows, ReplyTranslated};
        run_datagram(
            &mut fx,
            &fragments,
            &at_backend,
            NewFlows,
            ForwardTranslated,
        );
        assert_eq!(fx.conntrack_len(), 2, "one flow");

        let answer = datagram(target, client(50_000));
        let to_client = answer.clone().with_src(vip(53));
        let answer_fragments = answer.to_fragments(MTU);
        run_datagram(
            &mut fx,
            &answer_fragments,
            &to_client,
            ReplyTranslated,
            ReplyTranslated,
        );
    }
}

#[test]
fn a_later_fragment_before_its_first_passes_untouched_then_follows() {
    require_root!();
    for hook in HOOKS {
        let mut fx = udp_service(hook);
        let query = datagram(client(50_001), vip(53));
        let target = fx.expected_backend(&query);
        let fragments = query.to_fragments(MTU);
        let expected = query.with_dst(target).to_fragments(MTU);

        let (verdict, out, moved) = fx.run_counted(&fragments[2]);
        assert_eq!(verdict, Verdict::Pass);
        assert_frames_equal(&out, &fragments[2]);
        assert_eq!(moved, fragment_deltas(&[(Counter::FragmentUnknown, 1)]));
        assert_eq!(fx.conntrack_len(), 0);

        for (i, outcome) in [
            (0, Counter::NewFlows),
            (2, Counter::ForwardTranslated),
            (1, Counter::ForwardTranslated),
        ] {
            let (verdict, out, moved) = fx.run_counted(&fragments[i]);
            assert_eq!(verdict, Verdict::Pass, "fragment {i} on {hook:?}");
            assert_frames_equal(&out, &expected[i]);
            assert_eq!(moved, fragment_deltas(&[(outcome, 1)]), "fragment {i}");
        }
    }
}

#[test]
fn a_first_fragment_to_a_service_without_backends_is_rejected_and_its_rest_passes() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::with_service(hook, vip(53), Protocol::Udp, &[]);
        let fragments = datagram(client(50_002), vip(53)).to_fragments(MTU);
        let (verdict, out, moved) = fx.run_counted(&fragments[0]);
        assert_eq!(verdict, Verdict::SendBack, "{hook:?}");
        assert_frames_equal(
            &out,
            &Frame::port_unreachable_reply(&fragments[0], UDP_HLEN),
        );
        assert_eq!(moved, fragment_deltas(&[(Counter::RejectNoBackend, 1)]));

        // Its ports are known, but a later fragment never starts a flow.
        let (verdict, out, moved) = fx.run_counted(&fragments[1]);
        assert_eq!(verdict, Verdict::Pass);
        assert_frames_equal(&out, &fragments[1]);
        assert_eq!(moved, fragment_deltas(&[(Counter::NotService, 1)]));
        assert_eq!(fx.conntrack_len(), 0);
    }
}

#[test]
fn a_host_backends_fragmented_answer_leaves_egress_from_the_frontend() {
    require_root!();
    let host_backend = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 8053);
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        let value = ServiceValue {
            group_id: 1,
            backend_count: 1,
            ..ServiceValue::default()
        };
        let scopes = [scope::EXTERNAL, scope::INTERNAL];
        fx.program(vip(53), IPPROTO_UDP, &scopes, value, &[(11, host_backend)]);
        let query = Frame::udp(client(50_003), vip(53), b"query");
        let (_, out) = fx.run(&query.to_bytes());
        assert_frames_equal(&out, &query.with_dst(host_backend).to_bytes());

        // The node's stack fragments the answer before TC egress; only translations count there.
        let answer = datagram(host_backend, client(50_003));
        let expected = answer.clone().with_src(vip(53)).to_fragments(MTU);
        for (i, fragment) in answer.to_fragments(MTU).iter().enumerate() {
            let (verdict, out, moved) = fx.run_counted_on(Hook::TcEgress, fragment);
            assert_eq!(verdict, Verdict::Pass, "fragment {i} after {hook:?}");
            assert_frames_equal(&out, &expected[i]);
            assert_eq!(
                moved,
                deltas(&[(Counter::ReplyTranslated, 1)]),
                "fragment {i}"
            );
        }
    }
}

/// A row: `input` passes untouched, moving `packets` and `counters`.
fn untouched(name: &'static str, input: Vec<u8>, counters: &[(Counter, u64)]) -> Case {
    let mut all = vec![(Counter::Packets, 1)];
    all.extend_from_slice(counters);
    Case {
        name,
        hooks: &HOOKS,
        setup: udp_service,
        input,
        expect: Expect::untouched(deltas(&all)),
    }
}

#[test]
fn fragments_that_cannot_follow_a_flow() {
    require_root!();
    let syn = Frame::tcp(client(47_000), vip(53), tcp_flags::SYN);
    let later_tcp = syn.clone().with_fragment(false, 8).with_l4(L4::Raw {
        protocol: IPPROTO_TCP,
        bytes: vec![7; 64],
    });
    let middle_udp = Frame::udp(client(47_000), vip(53), &[1; 32]).with_fragment(true, 4);
    // A first fragment too short for its TCP header.
    let first_cut = syn.with_fragment(true, 0).with_l4(L4::Raw {
        protocol: IPPROTO_TCP,
        bytes: vec![7; 19],
    });
    use Counter::{Fragment, FragmentUnknown, TruncatedL4};
    #[rustfmt::skip]
    let cases = [
        untouched("later TCP fragment, first unseen",  later_tcp.to_bytes(), &[(Fragment, 1), (FragmentUnknown, 1)]),
        untouched("middle UDP fragment, first unseen", middle_udp.to_bytes(), &[(Fragment, 1), (FragmentUnknown, 1)]),
        untouched("first fragment cut in its TCP header", first_cut.to_bytes(), &[(TruncatedL4, 1)]),
    ];
    run_cases(&cases);
}
