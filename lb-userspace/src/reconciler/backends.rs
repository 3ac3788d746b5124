//! Backend ids and the backends map: one id per distinct backend address, shared by every
//! slot that references it, deleted once no written slot does.
//!
//! An id's address never changes while the id exists: a changed flag (e.g.
//! `backend_flags::LOCAL`) rewrites the value in place under the same id, a new address gets
//! a new id. So a slot or a conntrack entry naming an id never finds another pod behind it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::Backend;

use super::id_map::IdMap;
use super::ids::IdPool;
use super::{MapWriteError, MapWriter};
use crate::model::{unmap_addr, Endpoint, SocketDisplay};

/// What identifies a backend: its address and port as the maps hold them (not its flags).
type Address = ([u8; 16], [u8; 2]);

fn address(backend: &Backend) -> Address {
    (backend.addr, backend.port)
}

/// `addr:port` of a backends map value, for log lines.
pub(super) fn describe(backend: &Backend) -> String {
    SocketDisplay(unmap_addr(backend.addr), backend.port()).to_string()
}

/// Backend ids by address, the value each should have and has in the backends map, and how
/// many written slots reference each.
#[derive(Debug)]
pub(super) struct Backends {
    pub(super) ids: IdPool,
    /// Written slots over all services: the sum of every backend's `refs`.
    pub(super) slot_refs: u32,
    /// The id new references to an address use. An id adopted from the maps as a duplicate
    /// of another id's address is in `by_id` only, until its last reference goes.
    by_address: HashMap<Address, u32>,
    pub(super) by_id: IdMap<BackendEntry>,
    /// Entries with a value in the backends map.
    written_count: usize,
    /// Ids that may have no reference: every id whose last reference went or that got none
    /// yet, so finding the unreferenced ones never walks every backend.
    maybe_unreferenced: BTreeSet<u32>,
}

#[derive(Debug)]
pub(super) struct BackendEntry {
    /// The value the backends map should hold.
    wanted: Backend,
    /// The value it holds; `None` while it has no entry.
    written: Option<Backend>,
    refs: u32,
}

impl Backends {
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            ids: IdPool::new(capacity),
            slot_refs: 0,
            by_address: HashMap::new(),
            by_id: IdMap::default(),
            written_count: 0,
            maybe_unreferenced: BTreeSet::new(),
        }
    }

    /// Backends found in the maps, with no references yet ([`Backends::add_ref`] adds them).
    /// Of several ids with one address, `canonical` picks the one new references use.
    pub(super) fn adopted(
        capacity: u32,
        found: &BTreeMap<u32, Backend>,
        canonical: impl Fn(&[u32]) -> u32,
    ) -> Self {
        let mut ids_by_address: HashMap<Address, Vec<u32>> = HashMap::new();
        for (id, backend) in found {
            ids_by_address
                .entry(address(backend))
                .or_default()
                .push(*id);
        }
        let by_address = ids_by_address
            .into_iter()
            .map(|(address, ids)| (address, canonical(&ids)))
            .collect();
        let by_id: IdMap<BackendEntry> = found
            .iter()
            .map(|(id, backend)| {
                let entry = BackendEntry {
                    wanted: *backend,
                    written: Some(*backend),
                    refs: 0,
                };
                (*id, entry)
            })
            .collect();
        Self {
            ids: IdPool::with_used(capacity, found.keys().copied()),
            slot_refs: 0,
            by_address,
            written_count: by_id.len(),
            maybe_unreferenced: by_id.iter().map(|(id, _)| id).collect(),
            by_id,
        }
    }

    pub(super) fn id_of(&self, endpoint: &Endpoint) -> Option<u32> {
        self.by_address.get(&address(&endpoint.backend())).copied()
    }

    /// The id of `endpoint`'s address, allocated if new; the value to write becomes
    /// `endpoint`'s.
    pub(super) fn id_or_allocate(&mut self, endpoint: Endpoint) -> Option<u32> {
        let wanted = endpoint.backend();
        if let Some(id) = self.by_address.get(&address(&wanted)) {
            if let Some(entry) = self.by_id.get_mut(id) {
                entry.wanted = wanted;
            }
            return Some(*id);
        }
        let id = self.ids.allocate()?;
        self.by_address.insert(address(&wanted), id);
        let entry = BackendEntry {
            wanted,
            written: None,
            refs: 0,
        };
        self.by_id.insert(id, entry);
        self.maybe_unreferenced.insert(id);
        Some(id)
    }

    pub(super) fn written_count(&self) -> usize {
        self.written_count
    }

    /// Every backend entry written to the map, by id.
    pub(super) fn written(&self) -> impl Iterator<Item = (u32, Backend)> + '_ {
        self.by_id
            .iter()
            .filter_map(|(id, e)| e.written.map(|b| (id, b)))
    }

    /// Writes the backend entry unless the map holds its value already; returns whether it
    /// wrote.
    pub(super) fn write(
        &mut self,
        id: u32,
        maps: &mut impl MapWriter,
    ) -> Result<bool, MapWriteError> {
        let Some(entry) = self
            .by_id
            .get_mut(&id)
            .filter(|e| e.written != Some(e.wanted))
        else {
            return Ok(false);
        };
        maps.set_backend(id, &entry.wanted)?;
        if entry.written.replace(entry.wanted).is_none() {
            self.written_count += 1;
        }
        Ok(true)
    }

    pub(super) fn add_ref(&mut self, id: u32) {
        if let Some(entry) = self.by_id.get_mut(&id) {
            entry.refs += 1;
            self.slot_refs += 1;
        }
    }

    pub(super) fn drop_ref(&mut self, id: u32) {
        if let Some(entry) = self.by_id.get_mut(&id) {
            entry.refs -= 1;
            self.slot_refs -= 1;
            if entry.refs == 0 {
                self.maybe_unreferenced.insert(id);
            }
        }
    }

    /// Ids no written slot references, with their values.
    pub(super) fn unreferenced(&mut self) -> Vec<(u32, Backend)> {
        let by_id = &self.by_id;
        self.maybe_unreferenced
            .retain(|id| by_id.get(id).is_some_and(|e| e.refs == 0));
        self.maybe_unreferenced
            .iter()
            .filter_map(|id| by_id.get(id).map(|e| (*id, e.wanted)))
            .collect()
    }

    /// Deletes an unreferenced backend and frees its id; returns whether a map entry was
    /// deleted (an id allocated for a rejected service was never written).
    pub(super) fn remove(
        &mut self,
        id: u32,
        maps: &mut impl MapWriter,
    ) -> Result<bool, MapWriteError> {
        let Some(entry) = self.by_id.get(&id) else {
            return Ok(false);
        };
        let written = entry.written.is_some();
        if written {
            maps.remove_backend(id)?;
            self.written_count -= 1;
        }
        let address = address(&entry.wanted);
        self.by_id.remove(&id);
        self.maybe_unreferenced.remove(&id);
        if self.by_address.get(&address) == Some(&id) {
            self.by_address.remove(&address);
        }
        self.ids.release(id);
        Ok(written)
    }
}
