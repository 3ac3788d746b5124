use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;

use ipnet::IpNet;

use aya::maps::MapError;
use aya::sys::SyscallError;
use lb_common::{
    service::{scope, service_flags},
    Backend, BackendSlotKey, ServiceKey, ServiceValue, IPPROTO_TCP, IPPROTO_UDP,
};

use super::{MapReader, MapWriteError, MapWriter, Reconciler};
use crate::model::{
    Changed, DesiredService, DesiredState, Endpoint, Frontend, Protocol, ServicePortName,
};
use lb_common::Capacities;

mod adopt;
mod apply;
mod maglev;
mod resync;
mod scopes;
mod source_ranges;

const EXT: u8 = scope::EXTERNAL;
const INT: u8 = scope::INTERNAL;

/// A map operation as the fake saw it (services by id, slots as (group id, slot, backend)).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Backend(u32),
    RemoveBackend(u32),
    Slot(u32, u32, u32),
    RemoveSlot(u32, u32),
    ResetStats(u32),
    Service(u32, u32, u8),
    RemoveService(u32, u8),
    FlushUdp(BTreeSet<(u32, u32)>),
    SourceRange(u32, IpNet),
    RemoveSourceRange(u32, IpNet),
}

/// Flags, affinity timeout and backends (port, address) of each service entry (port,
/// protocol, scope): what the data path does with a new flow, whatever the ids.
type Resolved = BTreeMap<(u16, u8, u8), (u32, u32, BTreeSet<(u16, [u8; 16])>)>;

/// In-memory maps that log every operation and check after each one that the data path
/// would only ever see complete services (none that was complete before became incomplete)
/// and that no backend id slots reference ever names another address.
#[derive(Default)]
struct FakeMaps {
    services: HashMap<ServiceKey, ServiceValue>,
    slots: HashMap<(u32, u32), u32>,
    backends: HashMap<u32, Backend>,
    /// (protocol, group id, backend id) of each live conntrack entry.
    conntrack: Vec<(u8, u32, u32)>,
    /// (group id, range) of each source range.
    source_ranges: BTreeSet<(u32, IpNet)>,
    log: Vec<Op>,
    /// Fail the operation with this index in `log` (counting from the start).
    fail_at: Option<usize>,
    /// Skip the consistency check after each operation (the maps are being tampered with).
    drifted: bool,
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

    /// Service entries whose slots are incomplete or name a missing backend, with why.
    fn broken(&self) -> BTreeMap<ServiceKey, String> {
        let mut broken = BTreeMap::new();
        for (key, value) in &self.services {
            for slot in 1..=value.backend_count {
                let why = match self.slots.get(&(value.group_id, slot)) {
                    None => format!("service {} sees missing slot {slot}", value.group_id),
                    Some(b) if !self.backends.contains_key(b) => {
                        format!(
                            "service {} slot {slot} points to missing backend {b}",
                            value.group_id
                        )
                    }
                    Some(_) => continue,
                };
                broken.entry(*key).or_insert(why);
            }
            let filtered = value.flags & service_flags::SOURCE_RANGES != 0;
            if filtered && !self.source_ranges.iter().any(|(g, _)| *g == value.group_id) {
                let why = format!(
                    "service {} filters sources but has no range",
                    value.group_id
                );
                broken.entry(*key).or_insert(why);
            }
        }
        broken
    }

    /// Every service entry sees complete slots naming existing backends.
    fn assert_consistent(&self) {
        assert_eq!(self.broken(), BTreeMap::new(), "{:?}", self.log);
    }

    /// Runs one write and checks that it broke no service entry that was whole before.
    fn checked(&mut self, write: impl FnOnce(&mut Self)) {
        let before = self.broken();
        write(self);
        if self.drifted {
            return;
        }
        for (key, why) in self.broken() {
            assert!(before.contains_key(&key), "{key:?}: {why}: {:?}", self.log);
        }
    }

    /// Each service's backends, by frontend port and protocol, as the data path resolves them.
    fn resolved(&self) -> Resolved {
        self.services
            .iter()
            .map(|(key, value)| {
                let backends = (1..=value.backend_count)
                    .map(|slot| self.backends[&self.slots[&(value.group_id, slot)]])
                    .map(|b| (b.port(), b.addr))
                    .collect();
                let entry = (value.flags, value.affinity_timeout_s, backends);
                ((key.port(), key.proto, key.scope), entry)
            })
            .collect()
    }

    /// No slot beyond a service's count and no backend that no slot references.
    fn assert_no_leftovers(&self) {
        let counts: HashMap<u32, u32> = self
            .services
            .values()
            .map(|v| (v.group_id, v.backend_count))
            .collect();
        for (group_id, slot) in self.slots.keys() {
            assert!(
                counts.get(group_id).is_some_and(|count| slot <= count),
                "leftover slot {group_id}/{slot}"
            );
        }
        for (group_id, range) in &self.source_ranges {
            assert!(
                self.services.values().any(|v| v.group_id == *group_id
                    && v.flags & service_flags::SOURCE_RANGES != 0),
                "leftover source range {group_id}/{range}"
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
        if let Some(old) = self.backends.get(&id) {
            let referenced = self.slots.values().any(|b| *b == id);
            assert!(
                !referenced || (old.addr, old.port) == (backend.addr, backend.port),
                "backend {id} re-pointed from {old:?} to {backend:?} while a slot names it: {:?}",
                self.log
            );
        }
        self.checked(|maps| {
            maps.backends.insert(id, *backend);
        });
        Ok(())
    }

    fn remove_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        self.record(Op::RemoveBackend(id))?;
        self.checked(|maps| {
            maps.backends.remove(&id);
        });
        Ok(())
    }

    fn set_slot(&mut self, key: BackendSlotKey, backend_id: u32) -> Result<(), MapWriteError> {
        self.record(Op::Slot(key.group_id, key.slot, backend_id))?;
        self.checked(|maps| {
            maps.slots.insert((key.group_id, key.slot), backend_id);
        });
        Ok(())
    }

    fn remove_slot(&mut self, key: BackendSlotKey) -> Result<(), MapWriteError> {
        self.record(Op::RemoveSlot(key.group_id, key.slot))?;
        self.checked(|maps| {
            maps.slots.remove(&(key.group_id, key.slot));
        });
        Ok(())
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapWriteError> {
        self.record(Op::Service(value.group_id, value.backend_count, key.scope))?;
        self.checked(|maps| {
            maps.services.insert(*key, *value);
        });
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapWriteError> {
        let id = self.services.get(key).map_or(0, |v| v.group_id);
        self.record(Op::RemoveService(id, key.scope))?;
        self.checked(|maps| {
            maps.services.remove(key);
        });
        Ok(())
    }

    fn set_source_range(&mut self, group_id: u32, range: IpNet) -> Result<(), MapWriteError> {
        self.record(Op::SourceRange(group_id, range))?;
        self.checked(|maps| {
            maps.source_ranges.insert((group_id, range));
        });
        Ok(())
    }

    fn remove_source_range(&mut self, group_id: u32, range: IpNet) -> Result<(), MapWriteError> {
        self.record(Op::RemoveSourceRange(group_id, range))?;
        self.checked(|maps| {
            maps.source_ranges.remove(&(group_id, range));
        });
        Ok(())
    }

    fn reset_service_stats(&mut self, group_id: u32) -> Result<(), MapWriteError> {
        self.record(Op::ResetStats(group_id))
    }

    fn flush_udp_conntrack(&mut self, flows: &BTreeSet<(u32, u32)>) -> Result<u32, MapWriteError> {
        self.record(Op::FlushUdp(flows.clone()))?;
        let before = self.conntrack.len();
        self.conntrack.retain(|(proto, group, backend)| {
            !(*proto == IPPROTO_UDP && flows.contains(&(*group, *backend)))
        });
        Ok((before - self.conntrack.len()) as u32)
    }
}

impl MapReader for FakeMaps {
    fn read_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapWriteError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn read_slots(&self) -> Result<Vec<(BackendSlotKey, u32)>, MapWriteError> {
        Ok(self
            .slots
            .iter()
            .map(|((group_id, slot), id)| {
                let key = BackendSlotKey {
                    group_id: *group_id,
                    slot: *slot,
                };
                (key, *id)
            })
            .collect())
    }

    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, MapWriteError> {
        Ok(self.backends.iter().map(|(id, b)| (*id, *b)).collect())
    }

    fn read_source_ranges(&self) -> Result<Vec<(u32, IpNet)>, MapWriteError> {
        Ok(self.source_ranges.iter().copied().collect())
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
        local: false,
    }
}

/// A service named after the frontend's port, balancing to backends `hosts` in both scopes.
fn service(fe: &Frontend, hosts: &[u8]) -> DesiredService {
    let name = ServicePortName {
        namespace: "default".into(),
        name: format!("svc-{}", fe.port),
        port_name: "http".into(),
    };
    DesiredService::uniform(name, hosts.iter().map(|h| endpoint(*h)).collect())
}

fn desired(services: &[(Frontend, &[u8])]) -> DesiredState {
    services
        .iter()
        .map(|(fe, hosts)| (*fe, service(fe, hosts)))
        .collect()
}

fn tcp(port: u16) -> Frontend {
    frontend(port, Protocol::Tcp)
}

fn udp(port: u16) -> Frontend {
    frontend(port, Protocol::Udp)
}

/// Every id is either in use or free again.
fn assert_no_leaked_ids(reconciler: &Reconciler) {
    let services = &reconciler.group_ids;
    let groups: usize = reconciler.services.values().map(|s| s.groups.len()).sum();
    assert_eq!(
        services.available() + groups as u32,
        services.capacity(),
        "group ids leaked"
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

/// Every transition, failing at every possible write, leaves the kernel consistent after each
/// step (checked by the fake) and converges once writes succeed again.
fn assert_resumes_after_any_failure(steps: &[DesiredState]) {
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
            assert_eq!(reconciler.resync(&mut maps).unwrap(), []);
        }
    }
}

/// What the data path resolves after programming `state` into empty maps.
fn resolved_fresh(state: &DesiredState) -> Resolved {
    let (_, maps) = setup(state);
    maps.resolved()
}
