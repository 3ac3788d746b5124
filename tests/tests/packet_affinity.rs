//! Session affinity (sessionAffinity: ClientIP) through the real TC and XDP programs
//! (BPF_PROG_TEST_RUN): a client's new flows stick to one backend until the timeout passes
//! or the backend leaves the service; other clients are balanced as usual.

mod fixture;

use std::net::{Ipv4Addr, SocketAddrV4};

use fixture::{backend, client, deltas, vip, Fixture, Hook, Verdict, HOOKS};
use lb_common::{
    net::tcp_flags,
    service::{scope, service_flags},
    BackendSlotKey, Counter, ServiceValue, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_frames::{assert_frames_equal, Frame};
use lb_tests::require_root;
use lb_userspace::MapWriter;

const SERVICE_ID: u32 = 1;
/// kube-proxy's default timeout (3 hours).
const TIMEOUT_S: u32 = 10_800;
const BACKENDS: [(u32, u8); 3] = [(11, 1), (12, 2), (13, 3)];

/// The backends as `(map id, address)`.
fn backends() -> Vec<(u32, SocketAddrV4)> {
    BACKENDS.iter().map(|(id, n)| (*id, backend(*n))).collect()
}

fn id_of(addr: SocketAddrV4) -> u32 {
    backends().iter().find(|(_, a)| *a == addr).unwrap().0
}

/// A fixture whose TCP and UDP services at the VIP (both scopes) have ClientIP affinity.
fn fixture(hook: Hook, timeout_s: u32) -> Fixture {
    let mut fx = Fixture::new(hook);
    let value = ServiceValue {
        group_id: SERVICE_ID,
        backend_count: BACKENDS.len() as u32,
        flags: service_flags::AFFINITY,
        affinity_timeout_s: timeout_s,
    };
    let scopes = [scope::EXTERNAL, scope::INTERNAL];
    fx.program(vip(80), IPPROTO_TCP, &scopes, value, &backends());
    fx.program(
        vip(53),
        IPPROTO_UDP,
        &scopes,
        ServiceValue {
            group_id: SERVICE_ID + 1,
            ..value
        },
        &backends(),
    );
    fx
}

fn syn(from: SocketAddrV4) -> Frame {
    Frame::tcp(from, vip(80), tcp_flags::SYN)
}

/// Runs a new flow and asserts it was translated to `to` as a new flow.
fn assert_new_flow_goes_to(fx: &mut Fixture, frame: &Frame, to: SocketAddrV4) {
    let (verdict, out, moved) = fx.run_counted(&frame.to_bytes());
    assert_eq!(verdict, Verdict::Pass, "{:?}", fx.hook);
    assert_frames_equal(&out, &frame.clone().with_dst(to).to_bytes());
    assert_eq!(
        moved,
        deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)]),
        "{:?}",
        fx.hook
    );
}

/// The first source port from `from` whose flow hashes to a backend other than `not`.
fn port_hashing_away_from(fx: &mut Fixture, from: Ipv4Addr, not: SocketAddrV4) -> u16 {
    (30_000..31_000)
        .find(|p| fx.expected_backend(&syn(SocketAddrV4::new(from, *p))) != not)
        .expect("some port hashes elsewhere")
}

#[test]
fn a_client_keeps_its_backend_across_source_ports() {
    require_root!();
    for hook in HOOKS {
        let mut fx = fixture(hook, TIMEOUT_S);
        let first = syn(client(40_000));
        let sticky = fx.expected_backend(&first);
        assert_new_flow_goes_to(&mut fx, &first, sticky);

        let mut hashed_elsewhere = 0;
        for port in 40_001..40_025 {
            let next = syn(client(port));
            if fx.expected_backend(&next) != sticky {
                hashed_elsewhere += 1;
            }
            assert_new_flow_goes_to(&mut fx, &next, sticky);
        }
        assert!(
            hashed_elsewhere > 0,
            "{hook:?}: no flow would have moved anyway"
        );

        let entry = fx
            .affinity_of(fixture::CLIENT, SERVICE_ID)
            .expect("an entry");
        assert_eq!(entry.backend_id, id_of(sticky), "{hook:?}");
        assert_eq!(fx.stats_of(SERVICE_ID).new_flows, 25, "{hook:?}");
        assert_eq!(fx.conntrack_len(), 50, "{hook:?}");

        // Replies of each flow still go back through conntrack.
        let reply = Frame::tcp(sticky, client(40_007), tcp_flags::SYN | tcp_flags::ACK);
        let (_, out) = fx.run(&reply.to_bytes());
        assert_frames_equal(&out, &reply.with_src(vip(80)).to_bytes());
    }
}

#[test]
fn udp_clients_stick_too() {
    require_root!();
    for hook in HOOKS {
        let mut fx = fixture(hook, TIMEOUT_S);
        let first = Frame::udp(client(50_000), vip(53), b"query");
        let sticky = fx.expected_backend(&first);
        assert_new_flow_goes_to(&mut fx, &first, sticky);
        for port in 50_001..50_013 {
            let next = Frame::udp(client(port), vip(53), b"query");
            assert_new_flow_goes_to(&mut fx, &next, sticky);
        }
        let entry = fx.affinity_of(fixture::CLIENT, SERVICE_ID + 1);
        assert_eq!(entry.map(|e| e.backend_id), Some(id_of(sticky)), "{hook:?}");
    }
}

#[test]
fn each_client_has_its_own_backend() {
    require_root!();
    for hook in HOOKS {
        let mut fx = fixture(hook, TIMEOUT_S);
        let first = syn(client(40_000));
        let sticky = fx.expected_backend(&first);
        fx.run(&first.to_bytes());

        // Another client whose first flow hashes elsewhere gets (and keeps) that backend.
        let other = Ipv4Addr::new(198, 18, 0, 11);
        let port = port_hashing_away_from(&mut fx, other, sticky);
        let its_first = syn(SocketAddrV4::new(other, port));
        let its_backend = fx.expected_backend(&its_first);
        assert_new_flow_goes_to(&mut fx, &its_first, its_backend);
        for p in port + 1..port + 9 {
            assert_new_flow_goes_to(&mut fx, &syn(SocketAddrV4::new(other, p)), its_backend);
        }
        assert_new_flow_goes_to(&mut fx, &syn(client(40_001)), sticky);
        assert_eq!(fx.affinity().iter().count(), 2, "{hook:?}");
    }
}

#[test]
fn an_expired_affinity_selects_anew_and_is_renewed() {
    require_root!();
    for hook in HOOKS {
        let timeout_s = 60;
        let mut fx = fixture(hook, timeout_s);
        let first = syn(client(40_000));
        let old = fx.expected_backend(&first);
        fx.run(&first.to_bytes());

        // Age the entry past the timeout (the kernel compares with its own clock).
        let key = affinity_key();
        let mut entry = fx.affinity().get(&key, 0).expect("an entry");
        let aged = entry.last_used_ns - (u64::from(timeout_s) + 1) * 1_000_000_000;
        entry.last_used_ns = aged;
        fx.affinity()
            .insert(key, entry, 0)
            .expect("ageing the entry");

        let port = port_hashing_away_from(&mut fx, fixture::CLIENT, old);
        let next = syn(client(port));
        let new = fx.expected_backend(&next);
        assert_new_flow_goes_to(&mut fx, &next, new);
        let renewed = fx.affinity().get(&key, 0).expect("an entry");
        assert_eq!(renewed.backend_id, id_of(new), "{hook:?}");
        assert!(renewed.last_used_ns > aged + u64::from(timeout_s) * 1_000_000_000);

        // The renewed entry holds: a flow hashing to the old backend goes to the new one.
        let back = (30_000..31_000)
            .map(|p| syn(client(p)))
            .find(|f| fx.expected_backend(f) == old)
            .unwrap();
        assert_new_flow_goes_to(&mut fx, &back, new);
    }
}

#[test]
fn a_removed_backend_is_replaced_and_the_affinity_follows() {
    require_root!();
    for hook in HOOKS {
        let mut fx = fixture(hook, TIMEOUT_S);
        // A first flow to backend 1 in slot 1, so the remembered slot stays in range.
        let (old_id, old) = backends()[0];
        let first = (40_000..41_000)
            .map(|p| syn(client(p)))
            .find(|f| fx.expected_backend(f) == old)
            .unwrap();
        fx.run(&first.to_bytes());

        // As the agent removes it: the last backend moves into the freed slot, then the
        // service shrinks, then the last slot and the backend are deleted.
        let remaining = vec![backends()[2], backends()[1]];
        let value = ServiceValue {
            group_id: SERVICE_ID,
            backend_count: 2,
            flags: service_flags::AFFINITY,
            affinity_timeout_s: TIMEOUT_S,
        };
        let scopes = [scope::EXTERNAL, scope::INTERNAL];
        fx.program(vip(80), IPPROTO_TCP, &scopes, value, &remaining);
        let writer = fx.writer();
        writer
            .remove_slot(BackendSlotKey {
                group_id: SERVICE_ID,
                slot: 3,
            })
            .unwrap();
        writer.remove_backend(old_id).unwrap();

        let next = syn(client(41_001));
        let new = fx.expected_backend(&next);
        assert_ne!(new, old);
        assert_new_flow_goes_to(&mut fx, &next, new);
        let entry = fx.affinity_of(fixture::CLIENT, SERVICE_ID).unwrap();
        assert_eq!(entry.backend_id, id_of(new), "{hook:?}");
        for port in 41_002..41_010 {
            assert_new_flow_goes_to(&mut fx, &syn(client(port)), new);
        }
    }
}

#[test]
fn services_without_affinity_spread_one_client_and_record_nothing() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::with_service(
            hook,
            vip(80),
            lb_userspace::model::Protocol::Tcp,
            &[backend(1), backend(2), backend(3)],
        );
        let mut targets = std::collections::BTreeSet::new();
        for port in 40_000..40_016 {
            let next = syn(client(port));
            let target = fx.expected_backend(&next);
            assert_new_flow_goes_to(&mut fx, &next, target);
            targets.insert(target);
        }
        assert!(targets.len() > 1, "{hook:?}");
        assert_eq!(fx.affinity().iter().count(), 0, "{hook:?}");
    }
}

fn affinity_key() -> lb_common::AffinityKey {
    lb_common::AffinityKey {
        client_addr: lb_common::ipv4_mapped(fixture::CLIENT.octets()),
        group_id: SERVICE_ID,
    }
}
