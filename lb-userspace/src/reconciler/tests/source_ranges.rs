//! `loadBalancerSourceRanges`: written before the entry that filters on them, removed after.

use lb_common::service::service_flags::SOURCE_RANGES;

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

/// The ranges the maps hold for the group of `fe`'s external entry.
fn ranges_of(maps: &FakeMaps, fe: Frontend) -> Vec<IpNet> {
    let group = maps.services[&fe.key(EXT)].group_id;
    let ranges = maps.source_ranges.iter().filter(|(g, _)| *g == group);
    ranges.map(|(_, range)| *range).collect()
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
        0,
        "pods are not filtered"
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
        [Op::Service(1, 1, EXT), Op::RemoveSourceRange(1, net(b))]
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
        filtered(tcp(80), &["198.18.7.7/32", "203.0.113.0/24"]),
        filtered(tcp(80), &[]),
        filtered(tcp(80), &["203.0.113.0/24"]),
        desired(&[]),
    ];
    assert_resumes_after_any_failure(&steps);
    let (_, maps) = setup(&steps[2]);
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
