//! Full resync: read the maps back, compare them with what the reconciler wrote, repair.
//!
//! The agent owns the services, slots and backends maps, so anything else in them (an entry
//! deleted or changed by hand with bpftool, a leftover) is drift. Repairs keep the write
//! order: missing or changed backends, then slots, then service entries are rewritten;
//! unexpected service entries, then slots, then backends are deleted.

use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;

use lb_common::maps as registry;
use lb_common::service::scope;
use lb_common::{Backend, BackendSlotKey, ServiceKey, ServiceValue};

use super::{failed, slot_key, MapWriteError, MapWriter, ReconcileError, Reconciler};
use crate::model::{unmap_addr, Protocol, SocketDisplay, SCOPES};

/// Reads the maps back for [`Reconciler::resync`]; implemented by [`crate::datapath::DatapathMaps`]
/// and by an in-memory fake in tests.
pub trait MapReader {
    fn read_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapWriteError>;
    fn read_slots(&self) -> Result<Vec<(BackendSlotKey, u32)>, MapWriteError>;
    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, MapWriteError>;
    /// Every (group id, source range); keys that are no range are left out.
    fn read_source_ranges(&self) -> Result<Vec<(u32, IpNet)>, MapWriteError>;
}

/// How a map entry differed from what the reconciler wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drift {
    /// Written but gone: rewritten.
    Missing,
    /// Present with another value: rewritten.
    Changed,
    /// Never written (or since deleted) by the reconciler: deleted.
    Unexpected,
    /// Found by [`Reconciler::adopt`] in a state no agent leaves behind: deleted.
    Inconsistent,
}

/// One repaired difference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub map: &'static str,
    /// The entry's key, readable: `198.19.0.10:80/TCP internal`, `service 3 slot 2`,
    /// `backend 5`.
    pub entry: String,
    pub drift: Drift,
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.drift {
            Drift::Missing => "was missing; rewritten",
            Drift::Changed => "had been changed; rewritten",
            Drift::Unexpected => "was not written by the agent; deleted",
            Drift::Inconsistent => "was inconsistent; deleted",
        };
        write!(f, "{} {} {what}", self.map, self.entry)
    }
}

impl Reconciler {
    /// Reads the services, slots and backends maps and repairs every entry that differs from
    /// what this reconciler wrote; returns the repairs (none when the maps are intact).
    pub fn resync<M: MapWriter + MapReader>(
        &mut self,
        maps: &mut M,
    ) -> Result<Vec<Repair>, ReconcileError> {
        let read_failed = |e| failed("reading the maps back for a resync".to_string(), e);
        let mut services = BTreeMap::new();
        let mut slots = BTreeMap::new();
        for (frontend, service) in &self.services {
            for scope in SCOPES {
                if let Some(value) = service.entries[scope as usize] {
                    services.insert(frontend.key(scope), value);
                }
            }
            for (id, group) in &service.groups {
                for (index, backend) in group.slots.iter().enumerate() {
                    let key = slot_key(*id, index);
                    slots.insert((key.group_id, key.slot), *backend);
                }
            }
        }
        let backends: BTreeMap<u32, Backend> = self.backends.written().collect();

        let actual_services = maps.read_services().map_err(read_failed)?;
        let actual_slots: Vec<((u32, u32), u32)> = maps
            .read_slots()
            .map_err(read_failed)?
            .into_iter()
            .map(|(k, id)| ((k.group_id, k.slot), id))
            .collect();
        let actual_backends = maps.read_backends().map_err(read_failed)?;

        let mut repairs = Vec::new();
        let mut note = |map, entry: String, drift| {
            repairs.push(Repair { map, entry, drift });
        };
        let repair_failed = |e| failed("repairing the maps in a resync".to_string(), e);

        let (stale_backends, wrong) = diff(&backends, actual_backends);
        for (id, drift) in wrong {
            maps.set_backend(id, &backends[&id])
                .map_err(repair_failed)?;
            note(registry::BACKENDS.name, format!("backend {id}"), drift);
        }
        let (stale_slots, wrong) = diff(&slots, actual_slots);
        for ((group_id, slot), drift) in wrong {
            let key = BackendSlotKey { group_id, slot };
            maps.set_slot(key, slots[&(group_id, slot)])
                .map_err(repair_failed)?;
            note(registry::BACKEND_SLOTS.name, slot_name(key), drift);
        }
        let (stale_services, wrong) = diff(&services, actual_services);
        for (key, drift) in wrong {
            maps.set_service(&key, &services[&key])
                .map_err(repair_failed)?;
            note(registry::SERVICES.name, service_name(&key), drift);
        }

        for key in stale_services {
            maps.remove_service(&key).map_err(repair_failed)?;
            note(
                registry::SERVICES.name,
                service_name(&key),
                Drift::Unexpected,
            );
        }
        for (group_id, slot) in stale_slots {
            let key = BackendSlotKey { group_id, slot };
            maps.remove_slot(key).map_err(repair_failed)?;
            note(
                registry::BACKEND_SLOTS.name,
                slot_name(key),
                Drift::Unexpected,
            );
        }
        for id in stale_backends {
            maps.remove_backend(id).map_err(repair_failed)?;
            note(
                registry::BACKENDS.name,
                format!("backend {id}"),
                Drift::Unexpected,
            );
        }
        Ok(repairs)
    }
}

/// Keys present in `actual` but not expected, and expected keys that are missing or differ.
fn diff<K: Ord + Copy, V: PartialEq>(
    expected: &BTreeMap<K, V>,
    actual: Vec<(K, V)>,
) -> (Vec<K>, Vec<(K, Drift)>) {
    let actual: BTreeMap<K, V> = actual.into_iter().collect();
    let unexpected = actual
        .keys()
        .filter(|k| !expected.contains_key(k))
        .copied()
        .collect();
    let wrong = expected
        .iter()
        .filter_map(|(k, v)| match actual.get(k) {
            None => Some((*k, Drift::Missing)),
            Some(a) if a != v => Some((*k, Drift::Changed)),
            Some(_) => None,
        })
        .collect();
    (unexpected, wrong)
}

pub(super) fn service_name(key: &ServiceKey) -> String {
    let protocol =
        Protocol::from_number(key.proto).map_or_else(|| key.proto.to_string(), |p| p.to_string());
    let scope = match key.scope {
        scope::EXTERNAL => "external".to_string(),
        scope::INTERNAL => "internal".to_string(),
        other => format!("scope {other}"),
    };
    let addr = SocketDisplay(unmap_addr(key.addr), key.port());
    format!("{addr}/{protocol} {scope}")
}

pub(super) fn slot_name(key: BackendSlotKey) -> String {
    format!("service {} slot {}", key.group_id, key.slot)
}
