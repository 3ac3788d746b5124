//! `loadBalancerSourceRanges`: written before the entry that filters on them, removed after,
//! under the group of each scope's entry.

use std::sync::Arc;

use lb_common::service::service_flags::{NODE_IN_SOURCE_RANGES, SOURCE_RANGES};

use super::*;

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// `fe` balancing to backend 1, admitting only `ranges` from outside the node.
fn filtered(fe: Frontend, ranges: &[&str]) -> DesiredState {
    let mut svc = service(&fe, &[1]);
    svc.source_ranges = ranges.iter().map(|r| net(r)).collect();
    [(fe, svc)].into_iter().collect()
}

/// [`filtered`] whose external scope keeps only backend 1 (a Local policy) while pods and
/// the node reach backends 1 and 2: a group per scope; `node`: a range holds the node.
fn filtered_split(fe: Frontend, ranges: &[&str], node: bool) -> DesiredState {
    let mut svc = service(&fe, &[1, 2]);
    Arc::make_mut(&mut svc.external).endpoints = [endpoint(1)].into();
    svc.source_ranges = ranges.iter().map(|r| net(r)).collect();
    svc.source_ranges_hold_node = node;
    [(fe, svc)].into_iter().collect()
}

/// The ranges the maps hold for the group of `fe`'s external entry.
fn ranges_of(maps: &FakeMaps, fe: Frontend) -> Vec<IpNet> {
    ranges_in(maps, fe, EXT)
}

/// The ranges the maps hold for the group of `fe`'s entry in `scope`.
fn ranges_in(maps: &FakeMaps, fe: Frontend, scope: u8) -> Vec<IpNet> {
    let group = maps.services[&fe.key(scope)].group_id;
    let ranges = maps.source_ranges.iter().filter(|(g, _)| *g == group);
    ranges.map(|(_, range)| *range).collect()
}

#[test]
fn each_scopes_group_gets_the_ranges_and_the_internal_entry_the_node_flag() {
    let (mut reconciler, mut maps) = setup(&desired(&[]));
    let a = "198.18.0.0/24";
    reconciler
        .apply(&filtered_split(tcp(80), &[a], true), &mut maps)
        .unwrap();
    let log = maps.take_log();
    let first_entry = log.iter().position(|op| matches!(op, Op::Service(..)));
    assert!(
        log.contains(&Op::SourceRange(1, net(a))) && log.contains(&Op::SourceRange(2, net(a))),
        "{log:?}"
    );
    let last_range = log.iter().rposition(|op| matches!(op, Op::SourceRange(..)));
    assert!(last_range < first_entry, "{log:?}");
    assert_eq!(ranges_in(&maps, tcp(80), EXT), [net(a)]);
    assert_eq!(ranges_in(&maps, tcp(80), INT), [net(a)]);
    assert_eq!(maps.services[&tcp(80).key(EXT)].flags, SOURCE_RANGES);
    assert_eq!(
        maps.services[&tcp(80).key(INT)].flags,
        SOURCE_RANGES | NODE_IN_SOURCE_RANGES
    );

    // The scopes share a group again: the internal group goes, with its ranges.
    reconciler
        .apply(&filtered(tcp(80), &[a]), &mut maps)
        .unwrap();
    assert_eq!(ranges_in(&maps, tcp(80), INT), [net(a)]);
    assert_eq!(maps.source_ranges.len(), 1, "{:?}", maps.source_ranges);
    assert_eq!(maps.services[&tcp(80).key(INT)].flags, SOURCE_RANGES);
    maps.take_log();
    reconciler.apply(&desired(&[]), &mut maps).unwrap();
    maps.assert_no_leftovers();
}

#[test]
fn ranges_go_in_before_the_entry_that_filters_and_out_after_it() {
    let (mut reconciler, mut maps) = setup(&desired(&[]));
    let a = "198.18.0.0/24";
    reconciler
        .apply(&filtered(tcp(80), &[a]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::Backend(1),
            Op::ResetStats(1),
            Op::Slot(1, 1, 1),
            Op::SourceRange(1, net(a)),
            Op::Service(1, 1, EXT),
            Op::Service(1, 1, INT),
        ]
    );
    assert_eq!(maps.services[&tcp(80).key(EXT)].flags, SOURCE_RANGES);
    assert_eq!(
        maps.services[&tcp(80).key(INT)].flags,
        SOURCE_RANGES,
        "pods and the node are filtered too"
    );

    // A change adds the new range first and removes the old one last.
    let b = "203.0.113.0/24";
    reconciler
        .apply(&filtered(tcp(80), &[b]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [Op::SourceRange(1, net(b)), Op::RemoveSourceRange(1, net(a))]
    );

    // Without ranges the entry stops filtering before its last range goes.
    reconciler
        .apply(&filtered(tcp(80), &[]), &mut maps)
        .unwrap();
    assert_eq!(
        maps.take_log(),
        [
            Op::Service(1, 1, EXT),
            Op::Service(1, 1, INT),
            Op::RemoveSourceRange(1, net(b))
        ]
    );
    reconciler
        .apply(&filtered(tcp(80), &[a, b]), &mut maps)
        .unwrap();
    assert_eq!(ranges_of(&maps, tcp(80)), [net(a), net(b)]);

    // Removing the service removes its ranges after its entries.
    reconciler.apply(&desired(&[]), &mut maps).unwrap();
    let log = maps.take_log();
    let last_entry = log
        .iter()
        .rposition(|op| matches!(op, Op::RemoveService(..)));
    let first_range = log
        .iter()
        .position(|op| matches!(op, Op::RemoveSourceRange(..)));
    assert!(last_entry < first_range, "{log:?}");
    assert!(maps.source_ranges.is_empty());
    maps.assert_no_leftovers();
}

#[test]
fn a_failed_write_resumes_with_every_range_in_place() {
    let steps = [
        desired(&[]),
        filtered(tcp(80), &["198.18.0.0/24", "198.18.7.7/32"]),
        filtered_split(tcp(80), &["198.18.7.7/32", "203.0.113.0/24"], true),
        filtered_split(tcp(80), &["203.0.113.0/24"], false),
        filtered(tcp(80), &["198.18.7.7/32", "203.0.113.0/24"]),
        filtered(tcp(80), &[]),
        filtered(tcp(80), &["203.0.113.0/24"]),
        desired(&[]),
    ];
    assert_resumes_after_any_failure(&steps);
    let (_, maps) = setup(&steps[4]);
    assert_eq!(
        ranges_of(&maps, tcp(80)),
        [net("198.18.7.7/32"), net("203.0.113.0/24")]
    );
}

#[test]
fn adoption_keeps_the_ranges_of_adopted_groups_and_deletes_the_rest() {
    let state = filtered(tcp(80), &["198.18.0.0/24"]);
    let (_, mut maps) = setup(&state);
    maps.source_ranges.insert((1, net("203.0.113.0/24")));
    maps.source_ranges.insert((9, net("192.0.2.0/24")));
    let (mut reconciler, repairs) = Reconciler::adopt(&Capacities::default(), &mut maps).unwrap();
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    assert!(repairs[0].entry.contains("192.0.2.0/24"));
    reconciler.apply(&state, &mut maps).unwrap();
    assert_eq!(ranges_of(&maps, tcp(80)), [net("198.18.0.0/24")]);
    assert_eq!(maps.source_ranges.len(), 1);
}
