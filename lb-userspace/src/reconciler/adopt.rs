//! Adoption: a new reconciler takes over what the pinned maps hold.
//!
//! The maps outlive the agent. A restarted agent adopts their contents before its first
//! apply, so that the apply is a minimal diff against what the kernel really holds:
//! unchanged services keep their ids (and their counters), removed ones are deleted in the
//! safe order, new ones get ids that are free in the maps, and a backend id keeps its
//! address for as long as anything references it.
//!
//! Whatever no agent leaves behind is deleted on the spot, entries before slots before
//! backends, with a [`Repair`] each: a service entry with an unknown protocol or scope, with
//! an id out of range or claimed by another frontend, or whose slots are incomplete or name
//! a missing backend; slots no remaining entry can reach; backends with an id out of range.
//! A backend address held by several ids is adopted under its most referenced id; the first
//! apply moves the others' slots to it and deletes them, like any unreferenced backend.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use lb_common::maps as registry;
use lb_common::{BackendSlotKey, ServiceKey, ServiceValue};

use super::backends::Backends;
use super::ids::IdPool;
use super::resync::{service_name, slot_name};
use super::{
    failed, MapReader, MapWriter, ProgrammedService, ReconcileError, Reconciler, SlotGroup,
};
use super::{Drift, Repair};
use crate::maglev::TableSize;
use crate::model::{unmap_addr, Frontend, Protocol, SCOPES};
use lb_common::Capacities;

/// What adoption deletes, in the order it deletes it.
#[derive(Default)]
struct Deletions {
    services: Vec<(ServiceKey, &'static str)>,
    slots: Vec<(BackendSlotKey, &'static str)>,
    backends: Vec<u32>,
    source_ranges: Vec<(u32, IpNet)>,
}

impl Reconciler {
    /// A reconciler that has written exactly what `maps` hold (for maps of `capacities`),
    /// after deleting what it could not have written; returns the deletions as repairs.
    ///
    /// On an error nothing is adopted; calling it again starts over from the maps.
    pub fn adopt<M: MapWriter + MapReader>(
        capacities: &Capacities,
        maps: &mut M,
    ) -> Result<(Self, Vec<Repair>), ReconcileError> {
        let read_failed = |e| failed("reading the pinned maps to adopt them".to_string(), e);
        let mut services = maps.read_services().map_err(read_failed)?;
        services.sort_unstable_by_key(|(key, _)| *key);
        let found_slots = maps.read_slots().map_err(read_failed)?;
        let mut deletions = Deletions::default();
        let mut backends = BTreeMap::new();
        for (id, backend) in maps.read_backends().map_err(read_failed)? {
            match (1..=capacities.backends).contains(&id) {
                true => backends.insert(id, backend),
                false => {
                    deletions.backends.push(id);
                    None
                }
            };
        }
        let mut slots: BTreeMap<u32, BTreeMap<u32, u32>> = BTreeMap::new();
        for (key, backend) in &found_slots {
            slots
                .entry(key.group_id)
                .or_default()
                .insert(key.slot, *backend);
        }
        // Per group id, its slots 1..=n as far as each is present and names a backend.
        let usable: BTreeMap<u32, Vec<u32>> = slots
            .iter()
            .map(|(group_id, group)| {
                let named = (1..).map_while(|slot| {
                    group
                        .get(&slot)
                        .filter(|backend| backends.contains_key(backend))
                        .copied()
                });
                (*group_id, named.collect())
            })
            .collect();
        let usable_len = |group_id: u32| usable.get(&group_id).map_or(0, Vec::len);

        let mut adopted: BTreeMap<Frontend, ProgrammedService> = BTreeMap::new();
        let mut owners: BTreeMap<u32, Frontend> = BTreeMap::new();
        for (key, value) in services {
            match adoptable(&key, &value, capacities, &owners, usable_len) {
                Ok(frontend) => {
                    owners.insert(value.group_id, frontend);
                    let service = adopted
                        .entry(frontend)
                        .or_insert_with(|| ProgrammedService {
                            name: None,
                            groups: BTreeMap::new(),
                            entries: [None, None],
                            applied: None,
                        });
                    service.groups.entry(value.group_id).or_insert_with(|| {
                        Box::new(SlotGroup {
                            slots: usable.get(&value.group_id).cloned().unwrap_or_default(),
                            stats_reset: true,
                            source_ranges: BTreeSet::new(),
                        })
                    });
                    service.entries[key.scope as usize] = Some(value);
                }
                Err(reason) => deletions.services.push((key, reason)),
            }
        }
        for (key, _) in found_slots {
            let reachable =
                owners.contains_key(&key.group_id) && key.slot as usize <= usable_len(key.group_id);
            if !reachable {
                let reason = match owners.contains_key(&key.group_id) {
                    true => "past the slots its service can use",
                    false => "no service entry uses its id",
                };
                deletions.slots.push((key, reason));
            }
        }
        deletions
            .slots
            .sort_unstable_by_key(|(key, _)| (key.group_id, key.slot));
        // A group's ranges are adopted with it (the first apply keeps the desired ones); those
        // of a group no entry uses are deleted.
        for (group_id, range) in maps.read_source_ranges().map_err(read_failed)? {
            let group = owners
                .get(&group_id)
                .and_then(|frontend| adopted.get_mut(frontend))
                .and_then(|service| service.groups.get_mut(&group_id));
            match group {
                Some(group) => {
                    group.source_ranges.insert(range);
                }
                None => deletions.source_ranges.push((group_id, range)),
            }
        }

        let mut refs: HashMap<u32, u32> = HashMap::new();
        let adopted_slots = adopted
            .values()
            .flat_map(|s| s.groups.values())
            .flat_map(|g| &g.slots);
        for id in adopted_slots.clone() {
            *refs.entry(*id).or_default() += 1;
        }
        // Of several ids of one address, the most referenced (the lowest of equals).
        let most_referenced = |ids: &[u32]| {
            let refs_of = |id: &u32| (refs.get(id).copied().unwrap_or(0), Reverse(*id));
            ids.iter().copied().max_by_key(refs_of).unwrap_or_default()
        };
        let mut adopted_backends =
            Backends::adopted(capacities.backends, &backends, most_referenced);
        for id in adopted_slots {
            adopted_backends.add_ref(*id);
        }

        let repairs = deletions.apply(maps)?;
        let entries_written = adopted
            .values()
            .map(|s| s.entries.iter().flatten().count() as u32)
            .sum();
        let frontends_written = adopted.values().filter(|s| s.has_entries()).count();
        let reconciler = Reconciler {
            entry_capacity: capacities.services,
            entries_written,
            frontends_written,
            slot_capacity: capacities.backend_slots,
            group_ids: IdPool::with_used(capacities.services, owners.keys().copied()),
            services: adopted,
            backends: adopted_backends,
            udp_flush: BTreeSet::new(),
            rejected: BTreeSet::new(),
            default_algorithm: Default::default(),
            maglev_table_size: TableSize::DEFAULT,
        };
        Ok((reconciler, repairs))
    }
}

/// The frontend of a services map entry a reconciler can adopt, or why it cannot.
fn adoptable(
    key: &ServiceKey,
    value: &ServiceValue,
    capacities: &Capacities,
    owners: &BTreeMap<u32, Frontend>,
    usable_len: impl Fn(u32) -> usize,
) -> Result<Frontend, &'static str> {
    let protocol = Protocol::from_number(key.proto).ok_or("unknown protocol")?;
    if !SCOPES.contains(&key.scope) {
        return Err("unknown scope");
    }
    let frontend = Frontend {
        addr: unmap_addr(key.addr),
        port: key.port(),
        protocol,
    };
    if frontend.key(key.scope) != *key {
        return Err("malformed key");
    }
    if !(1..=capacities.services).contains(&value.group_id) {
        return Err("group id out of range");
    }
    if owners
        .get(&value.group_id)
        .is_some_and(|owner| *owner != frontend)
    {
        return Err("its group id belongs to another frontend");
    }
    if value.backend_count as usize > usable_len(value.group_id) {
        return Err("a slot it uses is missing or names a missing backend");
    }
    Ok(frontend)
}

impl Deletions {
    /// Deletes service entries, then slots, then backends; returns what it deleted.
    fn apply(self, maps: &mut impl MapWriter) -> Result<Vec<Repair>, ReconcileError> {
        let delete_failed = |e| failed("deleting inconsistent pinned map entries".to_string(), e);
        let mut repairs = Vec::new();
        let mut note = |map, entry: String, reason: &str| {
            repairs.push(Repair {
                map,
                entry: format!("{entry} ({reason})"),
                drift: Drift::Inconsistent,
            });
        };
        for (key, reason) in self.services {
            maps.remove_service(&key).map_err(delete_failed)?;
            note(registry::SERVICES.name, service_name(&key), reason);
        }
        for (group_id, range) in self.source_ranges {
            maps.remove_source_range(group_id, range)
                .map_err(delete_failed)?;
            note(
                registry::SOURCE_RANGES.name,
                format!("group {group_id} source {range}"),
                "no service entry uses its id",
            );
        }
        for (key, reason) in self.slots {
            maps.remove_slot(key).map_err(delete_failed)?;
            note(registry::BACKEND_SLOTS.name, slot_name(key), reason);
        }
        for id in self.backends {
            maps.remove_backend(id).map_err(delete_failed)?;
            note(
                registry::BACKENDS.name,
                format!("backend {id}"),
                "backend id out of range",
            );
        }
        Ok(repairs)
    }
}
