//! Adoption: a new reconciler takes over maps an earlier one wrote (an agent restart).

use std::sync::Arc;

use lb_common::maps as registry;

use super::*;
use crate::reconciler::{Drift, Repair};

/// A new reconciler adopting `maps`, which must need no repair.
fn restart(maps: &mut FakeMaps) -> Reconciler {
    let (reconciler, repairs) = Reconciler::adopt(&Capacities::default(), maps).unwrap();
    assert_eq!(repairs, []);
    reconciler
}

/// `fe` with external backends `ext` and internal backends `int`.
fn split(fe: Frontend, ext: &[u8], int: &[u8]) -> (Frontend, DesiredService) {
    let mut svc = service(&fe, int);
    Arc::make_mut(&mut svc.external).endpoints = ext.iter().map(|h| endpoint(*h)).collect();
    (fe, svc)
}

/// Services on ports 80, 81, 82 (scopes split) and 53/UDP.
fn before() -> DesiredState {
    let mut s = desired(&[(tcp(80), &[1, 2]), (tcp(81), &[3]), (udp(53), &[4, 5])]);
    s.extend([split(tcp(82), &[6], &[6, 7])]);
    s
}

/// `before()` after the agent was down: 80 removed, its backend 1 moved to 81, 53's
/// endpoints changed, 82 unchanged, and a new service on 83 that takes 80's freed id.
fn after() -> DesiredState {
    let mut s = desired(&[(tcp(81), &[3, 1]), (udp(53), &[5, 8]), (tcp(83), &[9])]);
    s.extend([split(tcp(82), &[6], &[6, 7])]);
    s
}

/// The group id of each entry, by (port, scope).
fn group_ids(maps: &FakeMaps) -> BTreeMap<(u16, u8), u32> {
    maps.services
        .iter()
        .map(|(key, value)| ((key.port(), key.scope), value.group_id))
        .collect()
}

/// The backend id of `198.18.1.<host>`.
fn backend_id(maps: &FakeMaps, host: u8) -> u32 {
    let wanted = endpoint(host).backend();
    let ids: Vec<u32> = maps
        .backends
        .iter()
        .filter(|(_, b)| (b.addr, b.port) == (wanted.addr, wanted.port))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ids.len(), 1, "host {host}: {ids:?}");
    ids[0]
}

#[test]
fn unchanged_state_adopts_and_applies_with_zero_writes() {
    let (old, mut maps) = setup(&before());
    let mut reconciler = restart(&mut maps);
    assert_eq!(maps.take_log(), [], "adopting reads only");
    assert_eq!(reconciler.programmed_services(), old.programmed_services());
    assert_eq!(reconciler.programmed_backends(), old.programmed_backends());
    assert_eq!(reconciler.resync(&mut maps).unwrap(), []);
    assert_no_leaked_ids(&reconciler);

    let summary = reconciler.apply(&before(), &mut maps).unwrap();
    assert!(!summary.wrote_anything(), "{summary:?}");
    assert_eq!(maps.take_log(), []);
}

#[test]
fn after_a_restart_the_first_apply_writes_what_the_old_reconciler_would_have() {
    let (mut old, mut untouched) = setup(&before());
    old.apply(&after(), &mut untouched).unwrap();
    let expected = untouched.take_log();

    let (_, mut maps) = setup(&before());
    let (ids_before, moved_before) = (group_ids(&maps), backend_id(&maps, 1));
    let kept_backends: Vec<u32> = [3, 5, 6, 7].map(|h| backend_id(&maps, h)).to_vec();
    let mut reconciler = restart(&mut maps);
    reconciler.apply(&after(), &mut maps).unwrap();
    assert_eq!(
        maps.take_log(),
        expected,
        "a minimal diff, in the safe order"
    );

    let ids_after = group_ids(&maps);
    for unchanged in [
        (81, EXT),
        (81, INT),
        (53, EXT),
        (53, INT),
        (82, EXT),
        (82, INT),
    ] {
        assert_eq!(
            ids_after[&unchanged], ids_before[&unchanged],
            "{unchanged:?}"
        );
    }
    assert_eq!(
        ids_after[&(83, EXT)],
        ids_before[&(80, EXT)],
        "the freed id"
    );
    assert_eq!(backend_id(&maps, 1), moved_before, "the moved backend");
    assert_eq!(
        [3, 5, 6, 7].map(|h| backend_id(&maps, h)).to_vec(),
        kept_backends
    );
    assert_eq!(maps.resolved(), untouched.resolved());
    maps.assert_no_leftovers();
    assert_no_leaked_ids(&reconciler);
    assert_eq!(reconciler.resync(&mut maps).unwrap(), []);
}

/// What adoption prevents: a reconciler that ignores the maps hands out ids they still use.
#[test]
#[should_panic(expected = "re-pointed")]
fn without_adoption_a_new_reconciler_would_re_point_a_backend_in_use() {
    let (_, mut maps) = setup(&before());
    let mut fresh = Reconciler::new(&Capacities::default());
    let _ = fresh.apply(&after(), &mut maps);
}

#[test]
fn a_restart_in_the_middle_of_an_apply_converges() {
    let mut fresh = FakeMaps::default();
    Reconciler::new(&Capacities::default())
        .apply(&after(), &mut fresh)
        .unwrap();
    let writes = {
        let (mut reconciler, mut maps) = setup(&before());
        reconciler.apply(&after(), &mut maps).unwrap();
        maps.log.len()
    };
    for crash_at in 0..writes {
        let (mut reconciler, mut maps) = setup(&before());
        maps.fail_at = Some(crash_at);
        assert!(reconciler.apply(&after(), &mut maps).is_err());
        let (mut adopted, _) = Reconciler::adopt(&Capacities::default(), &mut maps).unwrap();
        assert_eq!(
            adopted.resync(&mut maps).unwrap(),
            [],
            "crash at {crash_at}"
        );
        adopted.apply(&after(), &mut maps).unwrap();
        assert_eq!(maps.resolved(), fresh.resolved(), "crash at {crash_at}");
        maps.assert_no_leftovers();
        assert_no_leaked_ids(&adopted);
        assert!(!adopted.apply(&after(), &mut maps).unwrap().wrote_anything());
    }
}

#[test]
fn a_changed_backend_flag_is_rewritten_in_place_under_the_same_id() {
    let (_, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    let id = backend_id(&maps, 2);
    let mut local = desired(&[(tcp(80), &[1])]);
    let svc = Arc::make_mut(local.services.get_mut(&tcp(80)).unwrap());
    let moved = Endpoint {
        local: true,
        ..endpoint(2)
    };
    Arc::make_mut(&mut svc.external).endpoints.insert(moved);
    Arc::make_mut(&mut svc.internal).endpoints.insert(moved);

    let mut reconciler = restart(&mut maps);
    reconciler.apply(&local, &mut maps).unwrap();
    assert_eq!(maps.take_log(), [Op::Backend(id)]);
    assert_eq!(maps.backends[&id], moved.backend());
    assert_eq!(reconciler.resync(&mut maps).unwrap(), []);
}

fn inconsistent(map: &'static str, entry: &str) -> Repair {
    Repair {
        map,
        entry: entry.to_string(),
        drift: Drift::Inconsistent,
    }
}

#[test]
fn garbage_in_the_maps_is_deleted_safely_and_the_rest_adopted() {
    let state = desired(&[(tcp(80), &[1, 2]), (tcp(81), &[3]), (tcp(82), &[4])]);
    let (_, mut maps) = setup(&state);
    let (svc80, svc81, svc82) = (
        maps.services[&tcp(80).key(EXT)].group_id,
        maps.services[&tcp(81).key(EXT)].group_id,
        maps.services[&tcp(82).key(EXT)].group_id,
    );
    let (b2, b3) = (backend_id(&maps, 2), backend_id(&maps, 3));
    let kept_82 = group_ids(&maps)[&(82, EXT)];
    maps.drifted = true;
    // 80 lost its second slot; 81's slot names a second id of backend 3's address; a slot
    // nobody uses; a slot past 82's count naming a missing backend; a backend id beyond the
    // capacity; an entry of an unknown scope.
    maps.slots.remove(&(svc80, 2));
    maps.backends.insert(50, maps.backends[&b3]);
    maps.slots.insert((svc81, 1), 50);
    maps.slots.insert((77, 1), b2);
    maps.slots.insert((svc82, 2), 99);
    maps.backends.insert(u32::MAX, endpoint(9).backend());
    let mut odd_scope = tcp(90).key(EXT);
    odd_scope.scope = 7;
    maps.services
        .insert(odd_scope, maps.services[&tcp(82).key(EXT)]);
    maps.drifted = false;

    let (mut reconciler, repairs) = Reconciler::adopt(&Capacities::default(), &mut maps).unwrap();
    let svc = |port: u16, scope: &str, why: &str| {
        inconsistent(
            registry::SERVICES.name,
            &format!("198.19.0.10:{port}/TCP {scope} ({why})"),
        )
    };
    let slot = |id: u32, slot: u32, why: &str| {
        inconsistent(
            registry::BACKEND_SLOTS.name,
            &format!("service {id} slot {slot} ({why})"),
        )
    };
    let missing = "a slot it uses is missing or names a missing backend";
    assert_eq!(
        repairs,
        [
            svc(80, "external", missing),
            svc(80, "internal", missing),
            svc(90, "scope 7", "unknown scope"),
            slot(svc80, 1, "no service entry uses its id"),
            slot(svc82, 2, "past the slots its service can use"),
            slot(77, 1, "no service entry uses its id"),
            inconsistent(
                registry::BACKENDS.name,
                &format!("backend {} (backend id out of range)", u32::MAX)
            ),
        ]
    );
    maps.assert_consistent();
    assert_eq!(reconciler.resync(&mut maps).unwrap(), [], "adopted as is");
    maps.take_log();

    reconciler.apply(&state, &mut maps).unwrap();
    let mut fresh = FakeMaps::default();
    Reconciler::new(&Capacities::default())
        .apply(&state, &mut fresh)
        .unwrap();
    assert_eq!(maps.resolved(), fresh.resolved());
    maps.assert_no_leftovers();
    assert_eq!(backend_id(&maps, 3), 50, "the referenced duplicate is kept");
    assert_eq!(group_ids(&maps)[&(82, EXT)], kept_82);
    assert_no_leaked_ids(&reconciler);
    assert_eq!(reconciler.resync(&mut maps).unwrap(), []);
    assert!(!reconciler
        .apply(&state, &mut maps)
        .unwrap()
        .wrote_anything());
}

#[test]
fn a_failed_deletion_while_adopting_is_retried_by_adopting_again() {
    let state = desired(&[(tcp(80), &[1, 2])]);
    let (_, mut maps) = setup(&state);
    maps.drifted = true;
    maps.slots.insert((7, 1), 1);
    maps.slots.insert((7, 2), 2);
    maps.drifted = false;
    maps.fail_at = Some(1);
    assert!(Reconciler::adopt(&Capacities::default(), &mut maps).is_err());
    let (mut reconciler, repairs) = Reconciler::adopt(&Capacities::default(), &mut maps).unwrap();
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    assert!(!reconciler
        .apply(&state, &mut maps)
        .unwrap()
        .wrote_anything());
    maps.assert_no_leftovers();
}

#[test]
fn adopted_service_entries_count_against_the_services_map_capacity() {
    let capacities = Capacities {
        services: 6,
        ..Capacities::default()
    };
    let mut maps = FakeMaps::default();
    Reconciler::new(&capacities)
        .apply(&desired(&[(tcp(80), &[1]), (tcp(81), &[2])]), &mut maps)
        .unwrap();
    let (mut adopted, _) = Reconciler::adopt(&capacities, &mut maps).unwrap();
    let summary = adopted
        .apply(
            &desired(&[
                (tcp(80), &[1]),
                (tcp(81), &[2]),
                (tcp(82), &[3]),
                (tcp(83), &[4]),
            ]),
            &mut maps,
        )
        .unwrap();
    assert_eq!(summary.rejected.len(), 1);
    assert_eq!(summary.rejected[0].frontend, tcp(83));
    assert_eq!(
        (summary.rejected[0].needed, summary.rejected[0].available),
        (2, 0)
    );
}
