//! Backend ids and the backends map: one id per distinct endpoint, shared by every slot
//! that references it, deleted once no written slot does.

use std::collections::{BTreeMap, HashMap};

use lb_common::Backend;

use super::ids::IdPool;
use super::MapWriter;
use crate::error::MapWriteError;
use crate::model::Endpoint;

/// Backend ids by endpoint, whether each is written to the backends map, and how many
/// written slots reference it.
#[derive(Debug)]
pub(super) struct Backends {
    pub(super) ids: IdPool,
    /// Written slots over all services: the sum of every backend's `refs`.
    pub(super) slot_refs: u32,
    by_endpoint: HashMap<Endpoint, u32>,
    pub(super) by_id: BTreeMap<u32, BackendEntry>,
}

#[derive(Debug)]
pub(super) struct BackendEntry {
    endpoint: Endpoint,
    written: bool,
    refs: u32,
}

impl Backends {
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            ids: IdPool::new(capacity),
            slot_refs: 0,
            by_endpoint: HashMap::new(),
            by_id: BTreeMap::new(),
        }
    }

    pub(super) fn id_of(&self, endpoint: &Endpoint) -> Option<u32> {
        self.by_endpoint.get(endpoint).copied()
    }

    pub(super) fn id_or_allocate(&mut self, endpoint: Endpoint) -> Option<u32> {
        if let Some(id) = self.id_of(&endpoint) {
            return Some(id);
        }
        let id = self.ids.allocate()?;
        self.by_endpoint.insert(endpoint, id);
        self.by_id.insert(
            id,
            BackendEntry {
                endpoint,
                written: false,
                refs: 0,
            },
        );
        Some(id)
    }

    pub(super) fn written_count(&self) -> usize {
        self.by_id.values().filter(|b| b.written).count()
    }

    /// Every backend entry written to the map, by id.
    pub(super) fn written(&self) -> impl Iterator<Item = (u32, Backend)> + '_ {
        self.by_id
            .iter()
            .filter(|(_, e)| e.written)
            .map(|(id, e)| (*id, e.endpoint.backend()))
    }

    /// Writes the backend entry unless it is already written; returns whether it wrote.
    pub(super) fn write(
        &mut self,
        id: u32,
        maps: &mut impl MapWriter,
    ) -> Result<bool, MapWriteError> {
        let Some(entry) = self.by_id.get_mut(&id).filter(|e| !e.written) else {
            return Ok(false);
        };
        maps.set_backend(id, &entry.endpoint.backend())?;
        entry.written = true;
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
        }
    }

    pub(super) fn unreferenced(&self) -> Vec<(u32, Endpoint)> {
        self.by_id
            .iter()
            .filter(|(_, e)| e.refs == 0)
            .map(|(id, e)| (*id, e.endpoint))
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
        let written = entry.written;
        if written {
            maps.remove_backend(id)?;
        }
        let endpoint = entry.endpoint;
        self.by_id.remove(&id);
        self.by_endpoint.remove(&endpoint);
        self.ids.release(id);
        Ok(written)
    }
}
