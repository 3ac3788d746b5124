//! Lookup scopes through the real TC and XDP programs (BPF_PROG_TEST_RUN): one frontend with
//! different EXTERNAL and INTERNAL entries (as traffic policies make them) is looked up by the
//! hook's scope: XDP (external interface) reads EXTERNAL, TC (pod-facing) reads INTERNAL.
//! Single frames on fresh maps are rows of one table, run by [`run_cases`]; flows with
//! replies are named tests.

mod fixture;

use fixture::{
    backend,
    cases::{run_cases, Case, Expect, Output, Service, Stat},
    client, deltas, vip, Fixture, Hook, Verdict, HOOKS,
};
use lb_common::{
    net::tcp_flags,
    service::{scope, service_flags},
    Counter, ServiceValue, IPPROTO_TCP,
};
use lb_frames::{assert_frames_equal, Frame};
use lb_tests::require_root;

const EXTERNAL_ID: u32 = 1;
const INTERNAL_ID: u32 = 2;

fn one_backend(id: u32) -> ServiceValue {
    ServiceValue {
        group_id: id,
        backend_count: 1,
        ..ServiceValue::default()
    }
}

/// The group id and backend a hook's scope leads to.
fn expected(hook: Hook) -> (u32, std::net::SocketAddrV4) {
    match hook {
        Hook::Xdp => (EXTERNAL_ID, backend(1)),
        Hook::Tc => (INTERNAL_ID, backend(2)),
        Hook::TcEgress => unreachable!("egress looks no service up"),
    }
}

/// Writes the frontend's INTERNAL entry: service INTERNAL_ID balancing to backend(2) as 12.
fn program_internal(fx: &mut Fixture) {
    fx.program(
        vip(80),
        IPPROTO_TCP,
        &[scope::INTERNAL],
        one_backend(INTERNAL_ID),
        &[(12, backend(2))],
    );
}

#[test]
fn each_hook_uses_its_own_scope_entry() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        fx.program(
            vip(80),
            IPPROTO_TCP,
            &[scope::EXTERNAL],
            one_backend(EXTERNAL_ID),
            &[(11, backend(1))],
        );
        program_internal(&mut fx);
        let (id, target) = expected(hook);
        for port in 40_000..40_008 {
            let syn = Frame::tcp(client(port), vip(80), tcp_flags::SYN);
            let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
            assert_eq!(verdict, Verdict::Pass, "{hook:?}");
            assert_frames_equal(&out, &syn.clone().with_dst(target).to_bytes());
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
            );
            let reply = Frame::tcp(target, client(port), tcp_flags::SYN | tcp_flags::ACK);
            let (_, out) = fx.run(&reply.to_bytes());
            assert_frames_equal(&out, &reply.with_src(vip(80)).to_bytes());
        }
        assert_eq!(fx.stats_of(id).new_flows, 8, "{hook:?}");
        let other = EXTERNAL_ID + INTERNAL_ID - id;
        assert_eq!(fx.stats_of(other).new_flows, 0, "{hook:?}");
    }
}

/// Maps where the frontend's EXTERNAL entry has no backends and drops
/// (externalTrafficPolicy: Local on a node without a local endpoint) while its INTERNAL one
/// still balances to the (remote) endpoint, backend(2).
fn external_drops_internal_balances(hook: Hook) -> Fixture {
    let mut fx = Fixture::new(hook);
    let empty = ServiceValue {
        group_id: EXTERNAL_ID,
        backend_count: 0,
        flags: service_flags::DROP_IF_NO_BACKEND,
        affinity_timeout_s: 0,
    };
    fx.program(vip(80), IPPROTO_TCP, &[scope::EXTERNAL], empty, &[]);
    program_internal(&mut fx);
    fx
}

/// Maps where the frontend has only an INTERNAL entry, balancing to backend(2).
fn only_internal(hook: Hook) -> Fixture {
    let mut fx = Fixture::new(hook);
    program_internal(&mut fx);
    fx
}

#[test]
fn one_scope_without_the_service_or_its_backends() {
    require_root!();
    let syn = |port| Frame::tcp(client(port), vip(80), tcp_flags::SYN);
    let translated = |port| Expect::Ran {
        verdict: Verdict::Pass,
        output: Output::Frame(syn(port).with_dst(backend(2)).to_bytes()),
        counters: deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)]),
        stats: Vec::new(),
        conntrack: 2,
    };
    run_cases(&[
        Case {
            name: "EXTERNAL drops: XDP drops",
            hooks: &[Hook::Xdp],
            setup: external_drops_internal_balances,
            input: syn(41_000).to_bytes(),
            expect: Expect::Ran {
                verdict: Verdict::Drop,
                output: Output::Unchecked,
                counters: deltas(&[(Counter::Packets, 1), (Counter::DropNoBackend, 1)]),
                stats: vec![(Service::Id(EXTERNAL_ID), Stat::Drops, 1)],
                conntrack: 0,
            },
        },
        Case {
            name: "EXTERNAL drops: TC balances by INTERNAL",
            hooks: &[Hook::Tc],
            setup: external_drops_internal_balances,
            input: syn(41_000).to_bytes(),
            expect: translated(41_000),
        },
        Case {
            name: "INTERNAL only: XDP finds no service",
            hooks: &[Hook::Xdp],
            setup: only_internal,
            input: syn(42_000).to_bytes(),
            expect: Expect::untouched(deltas(&[(Counter::Packets, 1), (Counter::NotService, 1)])),
        },
        Case {
            name: "INTERNAL only: TC balances",
            hooks: &[Hook::Tc],
            setup: only_internal,
            input: syn(42_000).to_bytes(),
            expect: translated(42_000),
        },
    ]);
}
