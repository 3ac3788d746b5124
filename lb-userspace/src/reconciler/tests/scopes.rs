//! Per-scope backend sets, flags and the affinity timeout.

use std::sync::Arc;

use lb_common::service::service_flags::{AFFINITY, DROP_IF_NO_BACKEND};

use super::*;

/// `fe` with external backends `ext` and internal backends `int`.
fn split(fe: Frontend, ext: &[u8], int: &[u8]) -> (Frontend, DesiredService) {
    let mut svc = service(&fe, int);
    Arc::make_mut(&mut svc.external).endpoints = ext.iter().map(|h| endpoint(*h)).collect();
    (fe, svc)
}

fn state(services: impl IntoIterator<Item = (Frontend, DesiredService)>) -> DesiredState {
    services.into_iter().collect()
}

/// The backend hosts the data path resolves for `fe` in `scope` (`198.18.1.<host>`).
fn hosts(maps: &FakeMaps, fe: Frontend, scope: u8) -> Vec<u8> {
    maps.resolved()[&(fe.port, fe.protocol.number(), scope)]
        .2
        .iter()
        .map(|(_, addr)| addr[15])
        .collect()
}

#[test]
fn differing_scopes_get_a_group_each() {
    let (mut reconciler, mut maps) = setup(&desired(&[]));
    reconciler
        .apply(&state([split(tcp(80), &[1], &[1, 2])]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::Backend(1),
            Op::Backend(2),
            Op::ResetStats(1),
            Op::Slot(1, 1, 1),
            Op::ResetStats(2),
            Op::Slot(2, 1, 1),
            Op::Slot(2, 2, 2),
            Op::Service(1, 1, EXT),
            Op::Service(2, 2, INT),
        ]
    );
    assert_eq!(hosts(&maps, tcp(80), EXT), [1]);
    assert_eq!(hosts(&maps, tcp(80), INT), [1, 2]);
    assert_eq!(reconciler.programmed_services(), 1);
}

#[test]
fn splitting_keeps_the_shared_group_for_the_external_scope() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    reconciler
        .apply(&state([split(tcp(80), &[1], &[1, 2])]), &mut maps)
        .unwrap();
    // The internal scope moves to a new group before the shared one shrinks.
    assert_eq!(
        maps.take_log(),
        [
            Op::ResetStats(2),
            Op::Slot(2, 1, 1),
            Op::Slot(2, 2, 2),
            Op::Service(1, 1, EXT),
            Op::Service(2, 2, INT),
            Op::RemoveSlot(1, 2),
        ]
    );
}

#[test]
fn equal_scopes_share_one_group_again() {
    let (mut reconciler, mut maps) = setup(&state([split(udp(53), &[1], &[1, 2])]));
    maps.conntrack = vec![(IPPROTO_UDP, 2, 2), (IPPROTO_UDP, 1, 1)];
    reconciler
        .apply(&desired(&[(udp(53), &[1, 2])]), &mut maps)
        .unwrap();
    reconciler.flush_udp_conntrack(&mut maps).unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::Slot(1, 2, 2),
            Op::Service(1, 2, EXT),
            Op::Service(1, 2, INT),
            Op::RemoveSlot(2, 2),
            Op::RemoveSlot(2, 1),
            Op::FlushUdp(BTreeSet::from([(2, 1), (2, 2)])),
        ]
    );
    assert_eq!(
        maps.conntrack,
        [(IPPROTO_UDP, 1, 1)],
        "the freed group's UDP flows are flushed"
    );
    assert_no_leaked_ids(&reconciler);
    assert_eq!(
        reconciler.group_ids.available(),
        65_535,
        "id 2 is free again"
    );
}

#[test]
fn affinity_and_timeout_changes_rewrite_only_the_service_entries() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    let mut sticky = service(&tcp(80), &[1, 2]);
    sticky.affinity_timeout_s = Some(10_800);
    reconciler
        .apply(&state([(tcp(80), sticky.clone())]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [Op::Service(1, 2, EXT), Op::Service(1, 2, INT)]
    );
    let value = maps.services[&tcp(80).key(INT)];
    assert_eq!((value.flags, value.affinity_timeout_s), (AFFINITY, 10_800));

    sticky.affinity_timeout_s = Some(60);
    reconciler
        .apply(&state([(tcp(80), sticky)]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [Op::Service(1, 2, EXT), Op::Service(1, 2, INT)]
    );
    assert_eq!(maps.services[&tcp(80).key(EXT)].affinity_timeout_s, 60);

    reconciler
        .apply(&desired(&[(tcp(80), &[1, 2])]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [Op::Service(1, 2, EXT), Op::Service(1, 2, INT)]
    );
    assert_eq!(
        maps.services[&tcp(80).key(EXT)],
        ServiceValue {
            group_id: 1,
            backend_count: 2,
            flags: 0,
            affinity_timeout_s: 0,
        }
    );
}

#[test]
fn a_scope_without_local_endpoints_drops_while_the_other_balances() {
    let (_, mut drop_external) = split(tcp(80), &[], &[1, 2]);
    Arc::make_mut(&mut drop_external.external).drop_if_empty = true;
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    reconciler
        .apply(&state([(tcp(80), drop_external.clone())]), &mut maps)
        .unwrap();
    let external = maps.services[&tcp(80).key(EXT)];
    let internal = maps.services[&tcp(80).key(INT)];
    assert_eq!(
        (external.backend_count, external.flags),
        (0, DROP_IF_NO_BACKEND)
    );
    assert_eq!((internal.backend_count, internal.flags), (2, 0));
    assert_ne!(external.group_id, internal.group_id);

    // A local endpoint appears: only the external side changes.
    Arc::make_mut(&mut drop_external.external).endpoints = [endpoint(2)].into();
    maps.take_log();
    reconciler
        .apply(&state([(tcp(80), drop_external)]), &mut maps)
        .unwrap();
    assert_eq!(hosts(&maps, tcp(80), EXT), [2]);
    assert!(maps
        .take_log()
        .iter()
        .all(|op| !matches!(op, Op::Service(_, _, INT) | Op::Slot(2, _, _))));
}

#[test]
fn flags_of_equal_scopes_may_differ_in_one_shared_group() {
    let (_, mut svc) = split(tcp(80), &[1], &[1]);
    Arc::make_mut(&mut svc.internal).drop_if_empty = true;
    let (_, maps) = setup(&state([(tcp(80), svc)]));
    let external = maps.services[&tcp(80).key(EXT)];
    let internal = maps.services[&tcp(80).key(INT)];
    assert_eq!(external.group_id, internal.group_id, "one group");
    assert_eq!((external.flags, internal.flags), (0, DROP_IF_NO_BACKEND));
}

#[test]
fn failed_scope_transitions_are_resumed_by_the_next_apply() {
    let mut sticky = service(&udp(53), &[4, 5]);
    sticky.affinity_timeout_s = Some(30);
    Arc::make_mut(&mut sticky.internal).endpoints = [endpoint(4)].into();
    Arc::make_mut(&mut sticky.internal).drop_if_empty = true;
    assert_resumes_after_any_failure(&[
        desired(&[(tcp(80), &[1, 2, 3]), (udp(53), &[4])]),
        state([split(tcp(80), &[1], &[1, 2, 3]), (udp(53), sticky)]),
        state([split(tcp(80), &[2, 3], &[1]), split(udp(53), &[], &[6])]),
        desired(&[(tcp(80), &[1, 2, 3]), (udp(53), &[6])]),
        state([split(tcp(80), &[], &[3])]),
        desired(&[]),
    ]);
}

#[test]
fn counted_services_name_each_id_with_the_scopes_pointing_at_it() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1])]));
    let counted = |r: &Reconciler| -> Vec<(u32, u16, Vec<u8>)> {
        r.counted_services()
            .into_iter()
            .map(|c| (c.group_id, c.frontend.port, c.scopes))
            .collect()
    };
    assert_eq!(counted(&reconciler), [(1, 80, vec![EXT, INT])]);
    reconciler
        .apply(&state([split(tcp(80), &[1], &[1, 2])]), &mut maps)
        .unwrap();
    assert_eq!(
        counted(&reconciler),
        [(1, 80, vec![EXT]), (2, 80, vec![INT])]
    );
    assert_eq!(
        reconciler.counted_services()[0].name,
        service(&tcp(80), &[]).name
    );
}
