use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;

use aya::maps::MapError;
use aya::sys::SyscallError;
use lb_common::{
    service::scope, Backend, BackendSlotKey, ServiceKey, ServiceValue, IPPROTO_TCP, IPPROTO_UDP,
};

use super::{MapWriter, Reconciler};

const EXT: u8 = scope::EXTERNAL;
const INT: u8 = scope::INTERNAL;
use crate::datapath::Capacities;
use crate::error::MapWriteError;
use crate::model::{DesiredService, DesiredState, Endpoint, Frontend, Protocol, ServicePortName};

/// A map operation as the fake saw it (services by id, slots as (service id, slot, backend)).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Backend(u32),
    RemoveBackend(u32),
    Slot(u32, u32, u32),
    RemoveSlot(u32, u32),
    ResetStats(u32),
    Service(u32, u32, u8),
    RemoveService(u32, u8),
    FlushUdp(u32, Vec<u32>),
}

/// Backends (port, address) of each service (port, protocol).
type Resolved = BTreeMap<(u16, u8), BTreeSet<(u16, [u8; 16])>>;

/// In-memory maps that log every operation and check after each one that the data path
/// would only ever see complete services.
#[derive(Default)]
struct FakeMaps {
    services: HashMap<ServiceKey, ServiceValue>,
    slots: HashMap<(u32, u32), u32>,
    backends: HashMap<u32, Backend>,
    /// (protocol, service id, backend id) of each live conntrack entry.
    conntrack: Vec<(u8, u32, u32)>,
    log: Vec<Op>,
    /// Fail the operation with this index in `log` (counting from the start).
    fail_at: Option<usize>,
}

impl FakeMaps {
    fn record(&mut self, op: Op) -> Result<(), MapWriteError> {
        if self.fail_at == Some(self.log.len()) {
            self.fail_at = None;
            return Err(MapWriteError {
                map: "FAKE",
                op: "update",
                source: MapError::SyscallError(SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: io::Error::from_raw_os_error(libc::E2BIG),
                }),
            });
        }
        self.log.push(op);
        Ok(())
    }

    fn assert_consistent(&self) {
        for (key, value) in &self.services {
            for slot in 1..=value.backend_count {
                let backend = self.slots.get(&(value.id, slot)).unwrap_or_else(|| {
                    panic!(
                        "service {} sees missing slot {slot}: {:?}",
                        value.id, self.log
                    )
                });
                assert!(
                    self.backends.contains_key(backend),
                    "service {key:?} slot {slot} points to missing backend {backend}"
                );
            }
        }
    }

    /// Each service's backends, by frontend port and protocol, as the data path resolves them.
    fn resolved(&self) -> Resolved {
        self.services
            .iter()
            .map(|(key, value)| {
                let backends = (1..=value.backend_count)
                    .map(|slot| self.backends[&self.slots[&(value.id, slot)]])
                    .map(|b| (b.port(), b.addr))
                    .collect();
                ((key.port(), key.proto), backends)
            })
            .collect()
    }

    /// No slot beyond a service's count and no backend that no slot references.
    fn assert_no_leftovers(&self) {
        let counts: HashMap<u32, u32> = self
            .services
            .values()
            .map(|v| (v.id, v.backend_count))
            .collect();
        for (service_id, slot) in self.slots.keys() {
            assert!(
                counts.get(service_id).is_some_and(|count| slot <= count),
                "leftover slot {service_id}/{slot}"
            );
        }
        for id in self.backends.keys() {
            assert!(
                self.slots.values().any(|b| b == id),
                "leftover backend {id}"
            );
        }
    }

    fn take_log(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.log)
    }
}

impl MapWriter for FakeMaps {
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError> {
        self.record(Op::Backend(id))?;
        self.backends.insert(id, *backend);
        self.assert_consistent();
        Ok(())
    }

    fn remove_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        self.record(Op::RemoveBackend(id))?;
        self.backends.remove(&id);
        self.assert_consistent();
        Ok(())
    }

    fn set_slot(&mut self, key: BackendSlotKey, backend_id: u32) -> Result<(), MapWriteError> {
        self.record(Op::Slot(key.service_id, key.slot, backend_id))?;
        self.slots.insert((key.service_id, key.slot), backend_id);
        self.assert_consistent();
        Ok(())
    }

    fn remove_slot(&mut self, key: BackendSlotKey) -> Result<(), MapWriteError> {
        self.record(Op::RemoveSlot(key.service_id, key.slot))?;
        self.slots.remove(&(key.service_id, key.slot));
        self.assert_consistent();
        Ok(())
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapWriteError> {
        self.record(Op::Service(value.id, value.backend_count, key.scope))?;
        self.services.insert(*key, *value);
        self.assert_consistent();
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapWriteError> {
        let id = self.services.get(key).map_or(0, |v| v.id);
        self.record(Op::RemoveService(id, key.scope))?;
        self.services.remove(key);
        self.assert_consistent();
        Ok(())
    }

    fn reset_service_stats(&mut self, service_id: u32) -> Result<(), MapWriteError> {
        self.record(Op::ResetStats(service_id))
    }

    fn flush_udp_conntrack(
        &mut self,
        service_id: u32,
        backend_ids: &[u32],
    ) -> Result<u32, MapWriteError> {
        self.record(Op::FlushUdp(service_id, backend_ids.to_vec()))?;
        let before = self.conntrack.len();
        self.conntrack.retain(|(proto, svc, backend)| {
            !(*proto == IPPROTO_UDP && *svc == service_id && backend_ids.contains(backend))
        });
        Ok((before - self.conntrack.len()) as u32)
    }
}

fn frontend(port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        addr: "198.19.0.10".parse().unwrap(),
        port,
        protocol,
    }
}

/// Backend `198.18.1.<host>:8080`.
fn endpoint(host: u8) -> Endpoint {
    Endpoint {
        addr: [198, 18, 1, host].into(),
        port: 8080,
    }
}

fn desired(services: &[(Frontend, &[u8])]) -> DesiredState {
    DesiredState {
        services: services
            .iter()
            .map(|(fe, hosts)| {
                let service = DesiredService {
                    name: ServicePortName {
                        namespace: "default".into(),
                        name: format!("svc-{}", fe.port),
                        port_name: "http".into(),
                    },
                    endpoints: hosts.iter().map(|h| endpoint(*h)).collect(),
                };
                (*fe, service)
            })
            .collect(),
    }
}

fn tcp(port: u16) -> Frontend {
    frontend(port, Protocol::Tcp)
}

fn udp(port: u16) -> Frontend {
    frontend(port, Protocol::Udp)
}

/// Every id is either in use or free again.
fn assert_no_leaked_ids(reconciler: &Reconciler) {
    let services = &reconciler.service_ids;
    assert_eq!(
        services.available() + reconciler.services.len() as u32,
        services.capacity(),
        "service ids leaked"
    );
    let backends = &reconciler.backends;
    assert_eq!(
        backends.ids.available() + backends.by_id.len() as u32,
        backends.ids.capacity(),
        "backend ids leaked"
    );
}

fn setup(state: &DesiredState) -> (Reconciler, FakeMaps) {
    let mut reconciler = Reconciler::new(&Capacities::default());
    let mut maps = FakeMaps::default();
    reconciler.apply(state, &mut maps).unwrap();
    maps.take_log();
    (reconciler, maps)
}

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
            Op::Slot(1, 1, 1),
            Op::Slot(1, 2, 2),
            Op::ResetStats(1),
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
        (2, 2, 1)
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
    assert_eq!(summary.services_removed, 1);
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
            Op::Slot(1, 1, 3),
            Op::ResetStats(1),
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
        maps.services[&udp(53).key(scope::INTERNAL)].id,
        maps.services[&tcp(80).key(scope::INTERNAL)].id,
    );
    maps.conntrack = vec![
        (IPPROTO_UDP, udp_id, 1),
        (IPPROTO_UDP, udp_id, 1),
        (IPPROTO_UDP, udp_id, 2),
        (IPPROTO_TCP, tcp_id, 1),
    ];
    let summary = reconciler
        .apply(&desired(&[(udp(53), &[2]), (tcp(80), &[2])]), &mut maps)
        .unwrap();
    assert_eq!(summary.conntrack_flushed, 2);
    assert!(maps.take_log().contains(&Op::FlushUdp(udp_id, vec![1])));
    assert_eq!(
        maps.conntrack,
        [(IPPROTO_UDP, udp_id, 2), (IPPROTO_TCP, tcp_id, 1)]
    );

    let summary = reconciler
        .apply(&desired(&[(tcp(80), &[2])]), &mut maps)
        .unwrap();
    assert_eq!(summary.conntrack_flushed, 1);
    assert_eq!(maps.conntrack, [(IPPROTO_TCP, tcp_id, 1)]);
}

#[test]
fn service_beyond_capacity_is_rejected_by_name_and_the_rest_applied() {
    let capacities = Capacities {
        services: 1,
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
            "service default/svc-81:http (198.19.0.10:81/TCP) not programmed: it needs 1 more \
          service ids but only 0 of 1 are free"
        ]
    );
    maps.assert_no_leftovers();
    assert_eq!(maps.resolved().len(), 1);
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

/// Every transition, failing at every possible write, leaves the kernel consistent after each
/// step (checked by the fake) and converges once writes succeed again.
#[test]
fn failed_writes_are_resumed_by_the_next_apply() {
    let steps = [
        desired(&[(tcp(80), &[1, 2, 3]), (udp(53), &[4])]),
        desired(&[
            (tcp(80), &[2, 5]),
            (udp(53), &[4, 6]),
            (tcp(81), &[1]),
            (udp(54), &[7]),
        ]),
        desired(&[(tcp(81), &[1, 2, 3, 4])]),
        desired(&[]),
    ];
    for (from, to) in steps.iter().zip(&steps[1..]) {
        let mut fresh = FakeMaps::default();
        Reconciler::new(&Capacities::default())
            .apply(to, &mut fresh)
            .unwrap();
        let writes = {
            let (mut reconciler, mut maps) = setup(from);
            reconciler.apply(to, &mut maps).unwrap();
            maps.log.len()
        };
        assert!(writes > 0);
        for fail_at in 0..writes {
            let (mut reconciler, mut maps) = setup(from);
            maps.fail_at = Some(fail_at);
            assert!(reconciler.apply(to, &mut maps).is_err());
            reconciler.apply(to, &mut maps).unwrap();
            assert_eq!(
                maps.resolved(),
                fresh.resolved(),
                "failing at write {fail_at}"
            );
            maps.assert_no_leftovers();
            assert_no_leaked_ids(&reconciler);
            let again = reconciler.apply(to, &mut maps).unwrap();
            assert!(
                !again.wrote_anything(),
                "converged after failing at {fail_at}"
            );
        }
    }
}
