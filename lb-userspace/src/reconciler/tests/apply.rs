use super::*;

#[test]
fn new_service_writes_backends_then_slots_then_service() {
    let mut reconciler = Reconciler::new(&Capacities::default());
    let mut maps = FakeMaps::default();
    let summary = reconciler
        .apply(&desired(&[(tcp(80), &[1, 2])]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::Backend(1),
            Op::Backend(2),
            Op::ResetStats(1),
            Op::Slot(1, 1, 1),
            Op::Slot(1, 2, 2),
            Op::Service(1, 2, EXT),
            Op::Service(1, 2, INT),
        ]
    );
    assert_eq!(
        (
            summary.backends_written,
            summary.slots_written,
            summary.services_written
        ),
        (2, 2, 2),
        "one service entry per scope"
    );
    assert_eq!(reconciler.programmed_services(), 1);
    assert_eq!(reconciler.programmed_backends(), 2);
}

#[test]
fn unchanged_state_writes_nothing() {
    let state = desired(&[(tcp(80), &[1, 2]), (udp(53), &[3])]);
    let (mut reconciler, mut maps) = setup(&state);
    let summary = reconciler.apply(&state, &mut maps).unwrap();
    assert!(!summary.wrote_anything());
    assert_eq!(maps.take_log(), []);
}

#[test]
fn added_backend_is_written_before_its_slot_before_the_service() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    reconciler
        .apply(&desired(&[(tcp(80), &[1, 2, 3])]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::Backend(3),
            Op::Slot(1, 3, 3),
            Op::Service(1, 3, EXT),
            Op::Service(1, 3, INT)
        ]
    );
}

#[test]
fn removed_backend_shrinks_the_service_before_deleting_slot_and_backend() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2, 3])]));
    reconciler
        .apply(&desired(&[(tcp(80), &[1, 3])]), &mut maps)
        .unwrap();
    // Backend 3 moves into the freed slot 2 while the service still counts 3 slots.
    assert_eq!(
        maps.take_log(),
        [
            Op::Slot(1, 2, 3),
            Op::Service(1, 2, EXT),
            Op::Service(1, 2, INT),
            Op::RemoveSlot(1, 3),
            Op::RemoveBackend(2),
        ]
    );
}

#[test]
fn replaced_backend_reuses_the_slot_in_place() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    reconciler
        .apply(&desired(&[(tcp(80), &[1, 9])]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [Op::Backend(3), Op::Slot(1, 2, 3), Op::RemoveBackend(2)]
    );
}

#[test]
fn removed_service_is_deleted_in_reverse_order() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    let summary = reconciler.apply(&desired(&[]), &mut maps).unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::RemoveService(1, EXT),
            Op::RemoveService(1, INT),
            Op::RemoveSlot(1, 2),
            Op::RemoveSlot(1, 1),
            Op::RemoveBackend(1),
            Op::RemoveBackend(2),
        ]
    );
    assert_eq!(summary.services_removed, 2);
    assert_eq!(reconciler.programmed_services(), 0);
    assert!(maps.services.is_empty() && maps.slots.is_empty() && maps.backends.is_empty());
}

#[test]
fn freed_ids_are_reused_and_stats_reset() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1]), (tcp(81), &[2])]));
    reconciler
        .apply(&desired(&[(tcp(81), &[2]), (tcp(82), &[3])]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::RemoveService(1, EXT),
            Op::RemoveService(1, INT),
            Op::RemoveSlot(1, 1),
            Op::Backend(3),
            Op::ResetStats(1),
            Op::Slot(1, 1, 3),
            Op::Service(1, 1, EXT),
            Op::Service(1, 1, INT),
            Op::RemoveBackend(1),
        ]
    );
}

#[test]
fn shared_backend_lives_until_its_last_service_goes() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1]), (tcp(81), &[1])]));
    assert_eq!(maps.backends.len(), 1);
    reconciler
        .apply(&desired(&[(tcp(81), &[1])]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::RemoveService(1, EXT),
            Op::RemoveService(1, INT),
            Op::RemoveSlot(1, 1)
        ]
    );
    reconciler.apply(&desired(&[]), &mut maps).unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::RemoveService(2, EXT),
            Op::RemoveService(2, INT),
            Op::RemoveSlot(2, 1),
            Op::RemoveBackend(1)
        ]
    );
}

#[test]
fn service_without_endpoints_is_programmed_with_zero_backends() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1])]));
    reconciler
        .apply(&desired(&[(tcp(80), &[])]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::Service(1, 0, EXT),
            Op::Service(1, 0, INT),
            Op::RemoveSlot(1, 1),
            Op::RemoveBackend(1)
        ]
    );
    assert_eq!(
        maps.services[&tcp(80).key(scope::INTERNAL)].backend_count,
        0
    );
}

#[test]
fn removed_udp_backend_flushes_only_its_udp_conntrack_entries() {
    let state = desired(&[(udp(53), &[1, 2]), (tcp(80), &[1, 2])]);
    let (mut reconciler, mut maps) = setup(&state);
    let (udp_id, tcp_id) = (
        maps.services[&udp(53).key(scope::INTERNAL)].group_id,
        maps.services[&tcp(80).key(scope::INTERNAL)].group_id,
    );
    maps.conntrack = vec![
        (IPPROTO_UDP, udp_id, 1),
        (IPPROTO_UDP, udp_id, 1),
        (IPPROTO_UDP, udp_id, 2),
        (IPPROTO_TCP, tcp_id, 1),
    ];
    reconciler
        .apply(&desired(&[(udp(53), &[2]), (tcp(80), &[2])]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.conntrack.len(),
        4,
        "the apply leaves the flush to the agent"
    );
    assert_eq!(reconciler.flush_udp_conntrack(&mut maps).unwrap(), 2);
    let flushed = BTreeSet::from([(udp_id, 1)]);
    assert!(maps.take_log().contains(&Op::FlushUdp(flushed)));
    assert_eq!(
        maps.conntrack,
        [(IPPROTO_UDP, udp_id, 2), (IPPROTO_TCP, tcp_id, 1)]
    );
    assert_eq!(reconciler.flush_udp_conntrack(&mut maps).unwrap(), 0);

    reconciler
        .apply(&desired(&[(tcp(80), &[2])]), &mut maps)
        .unwrap();
    assert_eq!(reconciler.flush_udp_conntrack(&mut maps).unwrap(), 1);
    assert_eq!(maps.conntrack, [(IPPROTO_TCP, tcp_id, 1)]);
}

#[test]
fn a_failed_flush_is_retried_by_the_next_one() {
    let state = desired(&[(udp(53), &[1, 2])]);
    let (mut reconciler, mut maps) = setup(&state);
    let udp_id = maps.services[&udp(53).key(scope::INTERNAL)].group_id;
    maps.conntrack = vec![(IPPROTO_UDP, udp_id, 1)];
    reconciler
        .apply(&desired(&[(udp(53), &[2])]), &mut maps)
        .unwrap();
    maps.fail_at = Some(maps.log.len());
    assert!(reconciler.flush_udp_conntrack(&mut maps).is_err());
    assert_eq!(maps.conntrack.len(), 1);
    assert_eq!(reconciler.flush_udp_conntrack(&mut maps).unwrap(), 1);
}

#[test]
fn service_beyond_capacity_is_rejected_by_name_and_the_rest_applied() {
    let capacities = Capacities {
        services: 3,
        ..Capacities::default()
    };
    let mut reconciler = Reconciler::new(&capacities);
    let mut maps = FakeMaps::default();
    let summary = reconciler
        .apply(&desired(&[(tcp(80), &[1]), (tcp(81), &[2])]), &mut maps)
        .unwrap();
    assert_eq!(reconciler.programmed_services(), 1);
    let rejected: Vec<String> = summary.rejected.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        rejected,
        [
            "service default/svc-81:http (198.19.0.10:81/TCP) not programmed: it needs 2 more \
          services map entries but only 1 of 3 are free"
        ]
    );
    maps.assert_no_leftovers();
    assert_eq!(maps.resolved().len(), 2, "one frontend in two scopes");
}

#[test]
fn services_map_entries_are_freed_by_removals_before_new_services_are_placed() {
    let capacities = Capacities {
        services: 4,
        ..Capacities::default()
    };
    let mut reconciler = Reconciler::new(&capacities);
    let mut maps = FakeMaps::default();
    let summary = reconciler
        .apply(&desired(&[(tcp(80), &[1]), (tcp(81), &[2])]), &mut maps)
        .unwrap();
    assert_eq!(summary.rejected, []);
    let summary = reconciler
        .apply(
            &desired(&[(tcp(80), &[1, 3]), (tcp(81), &[2]), (tcp(82), &[3])]),
            &mut maps,
        )
        .unwrap();
    assert_eq!(summary.rejected.len(), 1, "an update takes no new entries");
    assert_eq!(summary.rejected[0].frontend, tcp(82));
    assert_eq!(summary.rejected[0].resource, "services map entries");
    let summary = reconciler
        .apply(&desired(&[(tcp(81), &[2]), (tcp(82), &[3])]), &mut maps)
        .unwrap();
    assert_eq!(summary.rejected, []);
    assert_eq!(reconciler.programmed_services(), 2);
    maps.assert_no_leftovers();
}

#[test]
fn growth_beyond_slot_capacity_keeps_the_programmed_version() {
    let capacities = Capacities {
        backend_slots: 3,
        ..Capacities::default()
    };
    let mut reconciler = Reconciler::new(&capacities);
    let mut maps = FakeMaps::default();
    reconciler
        .apply(&desired(&[(tcp(80), &[1, 2])]), &mut maps)
        .unwrap();
    let before = maps.resolved();
    maps.take_log();
    let summary = reconciler
        .apply(&desired(&[(tcp(80), &[1, 2, 3, 4])]), &mut maps)
        .unwrap();
    assert_eq!(summary.rejected.len(), 1);
    assert_eq!(summary.rejected[0].resource, "backend slots");
    assert_eq!(
        (summary.rejected[0].needed, summary.rejected[0].available),
        (2, 1)
    );
    assert_eq!(
        maps.take_log(),
        [],
        "nothing of the rejected update is written"
    );
    assert_eq!(maps.resolved(), before);
}

#[test]
fn backend_capacity_is_checked_before_writing() {
    let capacities = Capacities {
        backends: 2,
        ..Capacities::default()
    };
    let mut reconciler = Reconciler::new(&capacities);
    let mut maps = FakeMaps::default();
    let summary = reconciler
        .apply(
            &desired(&[(tcp(80), &[1, 2]), (tcp(81), &[2, 3])]),
            &mut maps,
        )
        .unwrap();
    assert_eq!(summary.rejected.len(), 1);
    assert_eq!(summary.rejected[0].resource, "backend ids");
    assert_eq!(summary.rejected[0].frontend, tcp(81));
    maps.assert_no_leftovers();
}

#[test]
fn failed_writes_are_resumed_by_the_next_apply() {
    assert_resumes_after_any_failure(&[
        desired(&[(tcp(80), &[1, 2, 3]), (udp(53), &[4])]),
        desired(&[
            (tcp(80), &[2, 5]),
            (udp(53), &[4, 6]),
            (tcp(81), &[1]),
            (udp(54), &[7]),
        ]),
        desired(&[(tcp(81), &[1, 2, 3, 4])]),
        desired(&[]),
    ]);
}

#[test]
fn backend_ids_freed_by_a_removal_are_used_in_the_same_apply() {
    let capacities = Capacities {
        backends: 2,
        ..Capacities::default()
    };
    let mut reconciler = Reconciler::new(&capacities);
    let mut maps = FakeMaps::default();
    reconciler
        .apply(&desired(&[(tcp(81), &[1, 2])]), &mut maps)
        .unwrap();
    let summary = reconciler
        .apply(&desired(&[(tcp(80), &[3, 4])]), &mut maps)
        .unwrap();
    assert_eq!(summary.rejected, []);
    assert_eq!(reconciler.programmed_backends(), 2);
    assert_eq!(maps.resolved().len(), 2, "one frontend in two scopes");
    maps.assert_no_leftovers();
}

#[test]
fn only_frontends_whose_service_changed_are_planned() {
    let state = desired(&[(tcp(80), &[1, 2]), (tcp(81), &[3]), (udp(53), &[4])]);
    let (mut reconciler, mut maps) = setup(&state);

    // The same services rebuilt (equal, not shared) are recognised as written.
    let rebuilt = desired(&[(tcp(80), &[1, 2]), (tcp(81), &[3]), (udp(53), &[4])]);
    let summary = reconciler.apply(&rebuilt, &mut maps).unwrap();
    assert_eq!(summary.frontends_planned, 0);
    assert!(!summary.wrote_anything());

    // One service changes, the others keep their Arc: only it is planned.
    let mut changed = state.clone();
    changed.insert(tcp(81), service(&tcp(81), &[3, 5]));
    let summary = reconciler.apply(&changed, &mut maps).unwrap();
    assert_eq!(summary.frontends_planned, 1);
    assert_eq!(maps.resolved(), resolved_fresh(&changed));

    // A removed frontend is removed without planning the others.
    changed.services.remove(&tcp(80));
    let summary = reconciler.apply(&changed, &mut maps).unwrap();
    assert_eq!(
        (summary.frontends_planned, summary.services_removed),
        (0, 2)
    );
    assert_eq!(maps.resolved(), resolved_fresh(&changed));
    maps.assert_no_leftovers();
    assert_no_leaked_ids(&reconciler);
}

#[test]
fn a_frontend_left_half_written_is_planned_again() {
    let state = desired(&[(tcp(80), &[1])]);
    let (mut reconciler, mut maps) = setup(&state);
    let changed = desired(&[(tcp(80), &[1, 2])]);
    maps.fail_at = Some(maps.log.len() + 1);
    assert!(reconciler.apply(&changed, &mut maps).is_err());
    let summary = reconciler.apply(&changed, &mut maps).unwrap();
    assert_eq!(summary.frontends_planned, 1);
    assert_eq!(maps.resolved(), resolved_fresh(&changed));
}

#[test]
fn changes_named_by_the_source_are_all_that_is_compared() {
    let state = desired(&[(tcp(80), &[1, 2]), (tcp(81), &[3]), (udp(53), &[4])]);
    let (mut reconciler, mut maps) = setup(&state);
    let mut changed = state.clone();
    changed.insert(tcp(81), service(&tcp(81), &[3, 5]));
    changed.services.remove(&udp(53));
    let named = Changed::Frontends(BTreeSet::from([tcp(81), udp(53)]));
    let summary = reconciler
        .apply_changes(&changed, &named, &mut maps)
        .unwrap();
    assert_eq!(
        (summary.frontends_planned, summary.services_removed),
        (1, 2)
    );
    assert_eq!(maps.resolved(), resolved_fresh(&changed));
    maps.assert_no_leftovers();
    assert_no_leaked_ids(&reconciler);
    // Nothing named, nothing compared.
    let none = Changed::Frontends(BTreeSet::new());
    let summary = reconciler
        .apply_changes(&changed, &none, &mut maps)
        .unwrap();
    assert_eq!(summary.frontends_planned, 0);
}

#[test]
fn a_rejected_frontend_is_planned_again_once_a_change_frees_room() {
    let capacities = Capacities {
        services: 3,
        ..Capacities::default()
    };
    let mut reconciler = Reconciler::new(&capacities);
    let mut maps = FakeMaps::default();
    let both = desired(&[(tcp(80), &[1]), (tcp(81), &[2])]);
    let summary = reconciler.apply(&both, &mut maps).unwrap();
    assert_eq!(summary.rejected.len(), 1);

    // The source names only the removed frontend; the rejected one gets its room.
    let only_81 = desired(&[(tcp(81), &[2])]);
    let named = Changed::Frontends(BTreeSet::from([tcp(80)]));
    let summary = reconciler
        .apply_changes(&only_81, &named, &mut maps)
        .unwrap();
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    assert_eq!(maps.resolved(), resolved_fresh(&only_81));
}
