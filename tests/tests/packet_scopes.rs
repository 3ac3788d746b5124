//! Lookup scopes through the real TC and XDP programs (BPF_PROG_TEST_RUN): one frontend with
//! different EXTERNAL and INTERNAL entries (as traffic policies make them) is looked up by the
//! hook's scope: XDP (external interface) reads EXTERNAL, TC (pod-facing) reads INTERNAL.

mod fixture;

use fixture::{backend, client, deltas, vip, Fixture, Hook, Verdict, HOOKS};
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
        id,
        backend_count: 1,
        ..ServiceValue::default()
    }
}

/// The service id and backend a hook's scope leads to.
fn expected(hook: Hook) -> (u32, std::net::SocketAddrV4) {
    match hook {
        Hook::Xdp => (EXTERNAL_ID, backend(1)),
        Hook::Tc => (INTERNAL_ID, backend(2)),
    }
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
        fx.program(
            vip(80),
            IPPROTO_TCP,
            &[scope::INTERNAL],
            one_backend(INTERNAL_ID),
            &[(12, backend(2))],
        );
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

#[test]
fn a_scope_without_backends_drops_while_the_other_translates() {
    require_root!();
    // externalTrafficPolicy: Local on a node without a local endpoint: the EXTERNAL entry
    // drops, the INTERNAL one still balances to the (remote) endpoint.
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        let empty = ServiceValue {
            id: EXTERNAL_ID,
            backend_count: 0,
            flags: service_flags::DROP_IF_NO_BACKEND,
            affinity_timeout_s: 0,
        };
        fx.program(vip(80), IPPROTO_TCP, &[scope::EXTERNAL], empty, &[]);
        fx.program(
            vip(80),
            IPPROTO_TCP,
            &[scope::INTERNAL],
            one_backend(INTERNAL_ID),
            &[(12, backend(2))],
        );
        let syn = Frame::tcp(client(41_000), vip(80), tcp_flags::SYN);
        let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
        match hook {
            Hook::Xdp => {
                assert_eq!(verdict, Verdict::Drop);
                assert_eq!(
                    moved,
                    deltas(&[(Counter::Packets, 1), (Counter::DropNoBackend, 1)])
                );
                assert_eq!(fx.stats_of(EXTERNAL_ID).drops, 1);
            }
            Hook::Tc => {
                assert_eq!(verdict, Verdict::Pass);
                assert_frames_equal(&out, &syn.with_dst(backend(2)).to_bytes());
                assert_eq!(
                    moved,
                    deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
                );
            }
        }
    }
}

#[test]
fn a_frontend_in_one_scope_only_is_not_a_service_in_the_other() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        fx.program(
            vip(80),
            IPPROTO_TCP,
            &[scope::INTERNAL],
            one_backend(INTERNAL_ID),
            &[(12, backend(2))],
        );
        let syn = Frame::tcp(client(42_000), vip(80), tcp_flags::SYN);
        let (verdict, out, moved) = fx.run_counted(&syn.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        match hook {
            Hook::Xdp => {
                assert_frames_equal(&out, &syn.to_bytes());
                assert_eq!(
                    moved,
                    deltas(&[(Counter::Packets, 1), (Counter::NotService, 1)])
                );
            }
            Hook::Tc => assert_frames_equal(&out, &syn.with_dst(backend(2)).to_bytes()),
        }
    }
}
