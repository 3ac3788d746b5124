//! Full resync against tampered maps.

use lb_common::maps as registry;

use super::*;
use crate::reconciler::{Drift, Repair};

fn repair(map: &'static str, entry: &str, drift: Drift) -> Repair {
    Repair {
        map,
        entry: entry.to_string(),
        drift,
    }
}

/// Repairs `maps` (tampered with directly, as bpftool would) and checks the result is
/// exactly what an untouched run programs.
fn resync(reconciler: &mut Reconciler, maps: &mut FakeMaps) -> Vec<Repair> {
    maps.drifted = true;
    let repairs = reconciler.resync(maps).unwrap();
    maps.drifted = false;
    maps.assert_consistent();
    maps.assert_no_leftovers();
    repairs
}

#[test]
fn intact_maps_need_no_repair() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2]), (udp(53), &[3])]));
    assert_eq!(reconciler.resync(&mut maps).unwrap(), []);
    assert_eq!(maps.take_log(), [], "reading only");
}

#[test]
fn a_deleted_service_entry_comes_back() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    let before = maps.resolved();
    maps.services.remove(&tcp(80).key(INT));
    let repairs = resync(&mut reconciler, &mut maps);
    assert_eq!(
        repairs,
        [repair(
            registry::SERVICES.name,
            "198.19.0.10:80/TCP internal",
            Drift::Missing
        )]
    );
    assert_eq!(
        repairs[0].to_string(),
        "LB_SERVICES 198.19.0.10:80/TCP internal was missing; rewritten"
    );
    assert_eq!(maps.take_log(), [Op::Service(1, 2, INT)]);
    assert_eq!(maps.resolved(), before);
}

#[test]
fn missing_backend_and_slot_are_rewritten_before_the_entries_using_them() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    let before = maps.resolved();
    maps.backends.remove(&2);
    maps.slots.remove(&(1, 2));
    maps.services
        .get_mut(&tcp(80).key(EXT))
        .unwrap()
        .backend_count = 1;
    let repairs = resync(&mut reconciler, &mut maps);
    assert_eq!(
        maps.take_log(),
        [Op::Backend(2), Op::Slot(1, 2, 2), Op::Service(1, 2, EXT)]
    );
    assert_eq!(
        repairs.iter().map(|r| r.drift).collect::<Vec<_>>(),
        [Drift::Missing, Drift::Missing, Drift::Changed]
    );
    assert_eq!(maps.resolved(), before);
}

#[test]
fn entries_the_agent_never_wrote_are_deleted_entry_first() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1])]));
    let before = maps.resolved();
    let stray = tcp(9999).key(EXT);
    maps.services.insert(
        stray,
        ServiceValue {
            group_id: 7,
            backend_count: 1,
            ..ServiceValue::default()
        },
    );
    maps.slots.insert((7, 1), 9);
    maps.backends.insert(9, endpoint(9).backend());
    let repairs = resync(&mut reconciler, &mut maps);
    assert_eq!(
        maps.take_log(),
        [
            Op::RemoveService(7, EXT),
            Op::RemoveSlot(7, 1),
            Op::RemoveBackend(9)
        ]
    );
    assert_eq!(
        repairs[0].to_string(),
        "LB_SERVICES 198.19.0.10:9999/TCP external was not written by the agent; deleted"
    );
    assert_eq!(maps.resolved(), before);
}

#[test]
fn the_next_apply_builds_on_the_repaired_maps() {
    let (mut reconciler, mut maps) = setup(&desired(&[(tcp(80), &[1, 2])]));
    maps.slots.clear();
    maps.backends.clear();
    resync(&mut reconciler, &mut maps);
    maps.take_log();
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
