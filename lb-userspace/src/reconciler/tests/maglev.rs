use super::*;
use crate::maglev::{self, TableSize};
use crate::model::Algorithm;

const SIZE: u32 = 251;

fn maglev_reconciler(default: Algorithm, capacities: &Capacities) -> Reconciler {
    Reconciler::new(capacities).with_selection(default, TableSize::new(SIZE).unwrap())
}

fn with_algorithm(fe: &Frontend, hosts: &[u8], algorithm: Option<Algorithm>) -> DesiredState {
    let mut service = service(fe, hosts);
    service.algorithm = algorithm;
    [(*fe, service)].into_iter().collect()
}

/// The backend address the fake's slots of `fe`'s external entry resolve to, slot by slot.
fn table_of(maps: &FakeMaps, fe: &Frontend) -> Vec<[u8; 16]> {
    let value = maps.services[&fe.key(EXT)];
    (1..=value.backend_count)
        .map(|slot| maps.backends[&maps.slots[&(value.group_id, slot)]].addr)
        .collect()
}

/// The Maglev table over hosts, by backend address.
fn expected(hosts: &[u8]) -> Vec<[u8; 16]> {
    let set: Vec<_> = hosts
        .iter()
        .map(|h| endpoint(*h))
        .map(|e| (e.addr, e.port))
        .collect();
    maglev::table(&set, TableSize::new(SIZE).unwrap())
        .into_iter()
        .map(|i| crate::model::map_addr(set[i].0))
        .collect()
}

#[test]
fn a_maglev_service_gets_its_table_as_slots() {
    let fe = tcp(80);
    let mut reconciler = maglev_reconciler(Algorithm::Random, &Capacities::default());
    let mut maps = FakeMaps::default();
    let summary = reconciler
        .apply(
            &with_algorithm(&fe, &[1, 2, 3, 4, 5], Some(Algorithm::Maglev)),
            &mut maps,
        )
        .unwrap();
    assert_eq!(summary.slots_written, SIZE);
    assert_eq!(maps.services[&fe.key(INT)].backend_count, SIZE);
    assert_eq!(table_of(&maps, &fe), expected(&[1, 2, 3, 4, 5]));
    maps.assert_no_leftovers();
}

#[test]
fn removing_an_endpoint_rewrites_only_the_entries_that_moved() {
    let fe = tcp(80);
    let mut reconciler = maglev_reconciler(Algorithm::Maglev, &Capacities::default());
    let mut maps = FakeMaps::default();
    reconciler
        .apply(&with_algorithm(&fe, &[1, 2, 3, 4, 5], None), &mut maps)
        .unwrap();
    maps.take_log();
    let summary = reconciler
        .apply(&with_algorithm(&fe, &[1, 2, 4, 5], None), &mut maps)
        .unwrap();
    let (before, after) = (expected(&[1, 2, 3, 4, 5]), expected(&[1, 2, 4, 5]));
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as u32;
    assert_eq!(summary.slots_written, moved);
    assert!(moved < SIZE / 3, "{moved} of {SIZE} entries moved");
    assert_eq!((summary.slots_removed, summary.services_written), (0, 0));
    assert_eq!(maps.take_log().last(), Some(&Op::RemoveBackend(3)));
    assert_eq!(table_of(&maps, &fe), after);
    maps.assert_no_leftovers();
}

#[test]
fn the_annotation_overrides_the_node_default_both_ways() {
    let fe = tcp(80);
    let count = |default, algorithm| {
        let mut reconciler = maglev_reconciler(default, &Capacities::default());
        let mut maps = FakeMaps::default();
        reconciler
            .apply(&with_algorithm(&fe, &[1, 2], algorithm), &mut maps)
            .unwrap();
        maps.services[&fe.key(EXT)].backend_count
    };
    assert_eq!(count(Algorithm::Random, None), 2);
    assert_eq!(count(Algorithm::Maglev, None), SIZE);
    assert_eq!(count(Algorithm::Maglev, Some(Algorithm::Random)), 2);
    assert_eq!(count(Algorithm::Random, Some(Algorithm::Maglev)), SIZE);
    assert_eq!(count(Algorithm::Maglev, Some(Algorithm::Maglev)), SIZE);
}

#[test]
fn switching_algorithms_and_emptying_keep_every_step_consistent() {
    let fe = udp(53);
    let mut reconciler = maglev_reconciler(Algorithm::Random, &Capacities::default());
    let mut maps = FakeMaps::default();
    let steps = [
        (vec![1, 2, 3], None),
        (vec![1, 2, 3], Some(Algorithm::Maglev)),
        (vec![2, 3, 4], Some(Algorithm::Maglev)),
        (vec![], Some(Algorithm::Maglev)),
        (vec![5], Some(Algorithm::Maglev)),
        (vec![5, 6], None),
    ];
    for (hosts, algorithm) in steps {
        let state = with_algorithm(&fe, &hosts, algorithm);
        reconciler.apply(&state, &mut maps).unwrap();
        assert_eq!(
            maps.resolved(),
            resolved_fresh_with(&state),
            "{hosts:?} {algorithm:?}"
        );
        maps.assert_no_leftovers();
    }
    assert_no_leaked_ids(&reconciler);
}

fn resolved_fresh_with(state: &DesiredState) -> Resolved {
    let mut maps = FakeMaps::default();
    maglev_reconciler(Algorithm::Random, &Capacities::default())
        .apply(state, &mut maps)
        .unwrap();
    maps.resolved()
}

#[test]
fn a_table_beyond_the_free_slots_is_rejected_by_name() {
    let capacities = Capacities {
        backend_slots: SIZE + 10,
        ..Capacities::default()
    };
    let mut reconciler = maglev_reconciler(Algorithm::Maglev, &capacities);
    let mut maps = FakeMaps::default();
    let state: DesiredState = [tcp(80), tcp(81)]
        .iter()
        .map(|fe| (*fe, service(fe, &[1, 2])))
        .collect();
    let summary = reconciler.apply(&state, &mut maps).unwrap();
    assert_eq!(reconciler.programmed_services(), 1);
    let rejected: Vec<String> = summary.rejected.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        rejected,
        [format!(
            "service default/svc-81:http (198.19.0.10:81/TCP) not programmed: it needs {SIZE} \
             more backend slots but only 10 of {} are free",
            SIZE + 10
        )]
    );
}

#[test]
fn a_restarted_agent_adopts_a_maglev_table_and_rewrites_nothing() {
    let fe = tcp(80);
    let state = with_algorithm(&fe, &[1, 2, 3, 4, 5], None);
    let mut maps = FakeMaps::default();
    let mut first = maglev_reconciler(Algorithm::Maglev, &Capacities::default());
    first.apply(&state, &mut maps).unwrap();
    maps.take_log();
    let (adopted, repairs) = Reconciler::adopt(&Capacities::default(), &mut maps).unwrap();
    assert_eq!(repairs, []);
    let mut restarted = adopted.with_selection_of(&first);
    let summary = restarted.apply(&state, &mut maps).unwrap();
    assert!(!summary.wrote_anything(), "{:?}", maps.take_log());
    assert_eq!(table_of(&maps, &fe), expected(&[1, 2, 3, 4, 5]));
}
