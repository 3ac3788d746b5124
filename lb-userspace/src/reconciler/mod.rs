//! Turns a [`DesiredState`] into the minimal set of map writes.
//!
//! The reconciler remembers what it has written (service ids, slot contents, backend ids and
//! their reference counts) and on every [`Reconciler::apply`] writes only the difference.
//! Write order keeps the kernel consistent at every step:
//! - a service is written backends -> slots -> service entry; slots past the current backend
//!   count are written before slots the data path can already see;
//! - a shrinking or removed service first shrinks (or removes) its service entry, then deletes
//!   the slots it no longer uses; backends nobody references are deleted last.
//!
//! When a write fails, everything written before it is remembered, so the next `apply`
//! continues from what the kernel really holds.

mod ids;
mod slots;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use lb_common::{Backend, BackendSlotKey, ServiceKey, ServiceValue};

use crate::datapath::Capacities;
use crate::error::{CapacityError, MapWriteError, ReconcileError};
use crate::model::{DesiredService, DesiredState, Endpoint, Frontend, Protocol, ServicePortName};
use ids::IdPool;
use slots::stable_layout;

/// The map operations the reconciler needs; implemented by [`crate::datapath::Maps`] and by an
/// in-memory fake in tests. Removing a key that is already gone succeeds.
pub trait MapWriter {
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError>;
    fn remove_backend(&mut self, id: u32) -> Result<(), MapWriteError>;
    fn set_slot(&mut self, key: BackendSlotKey, backend_id: u32) -> Result<(), MapWriteError>;
    fn remove_slot(&mut self, key: BackendSlotKey) -> Result<(), MapWriteError>;
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapWriteError>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapWriteError>;
    /// Zeroes the per-service counters of a service id about to be (re)used.
    fn reset_service_stats(&mut self, service_id: u32) -> Result<(), MapWriteError>;
    /// Deletes the UDP conntrack entries (both directions) of `service_id` whose flow uses one
    /// of `backend_ids`; returns how many were deleted. TCP entries are never touched, so
    /// established connections survive a backend's removal.
    fn flush_udp_conntrack(
        &mut self,
        service_id: u32,
        backend_ids: &[u32],
    ) -> Result<u32, MapWriteError>;
}

/// What one [`Reconciler::apply`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileSummary {
    pub services_written: u32,
    pub services_removed: u32,
    pub slots_written: u32,
    pub slots_removed: u32,
    pub backends_written: u32,
    pub backends_removed: u32,
    pub conntrack_flushed: u32,
    /// Services that did not fit; each is skipped, the rest is programmed.
    pub rejected: Vec<CapacityError>,
}

impl ReconcileSummary {
    /// Whether any map was written.
    pub fn wrote_anything(&self) -> bool {
        self.services_written
            + self.services_removed
            + self.slots_written
            + self.slots_removed
            + self.backends_written
            + self.backends_removed
            + self.conntrack_flushed
            > 0
    }
}

/// Keeps the maps in line with a desired state, writing only what changed.
#[derive(Debug)]
pub struct Reconciler {
    slot_capacity: u32,
    service_ids: IdPool,
    services: BTreeMap<Frontend, ProgrammedService>,
    backends: Backends,
}

/// A service as written to the maps.
#[derive(Debug)]
struct ProgrammedService {
    id: u32,
    name: ServicePortName,
    /// Backend count of the kernel's service entry; `None` until the entry is written.
    visible: Option<u32>,
    /// Written slots: slot `i + 1` holds backend id `slots[i]`. Never shorter than `visible`;
    /// longer while (or, after a failed write, until) an update is completed.
    slots: Vec<u32>,
}

impl ProgrammedService {
    fn visible_slots(&self) -> &[u32] {
        &self.slots[..self.visible.unwrap_or(0) as usize]
    }

    fn slot_key(&self, index: usize) -> BackendSlotKey {
        BackendSlotKey {
            service_id: self.id,
            slot: index as u32 + 1,
        }
    }
}

impl Reconciler {
    /// A reconciler for empty maps of the given capacities.
    pub fn new(capacities: &Capacities) -> Self {
        Self {
            slot_capacity: capacities.backend_slots,
            service_ids: IdPool::new(capacities.services),
            services: BTreeMap::new(),
            backends: Backends::new(capacities.backends),
        }
    }

    /// Number of services with a service entry in the maps.
    pub fn programmed_services(&self) -> usize {
        self.services
            .values()
            .filter(|s| s.visible.is_some())
            .count()
    }

    /// Number of backends in the maps.
    pub fn programmed_backends(&self) -> usize {
        self.backends.written_count()
    }

    /// Writes the difference between what is programmed and `desired`.
    ///
    /// Services that do not fit are reported in [`ReconcileSummary::rejected`] and skipped;
    /// a failed map write stops the apply and is returned.
    pub fn apply(
        &mut self,
        desired: &DesiredState,
        maps: &mut impl MapWriter,
    ) -> Result<ReconcileSummary, ReconcileError> {
        let mut summary = ReconcileSummary::default();
        let gone: Vec<Frontend> = self
            .services
            .keys()
            .filter(|f| !desired.services.contains_key(f))
            .copied()
            .collect();
        for frontend in gone {
            self.remove_service(frontend, maps, &mut summary)?;
        }
        for (frontend, service) in &desired.services {
            match self.plan(frontend, service) {
                Ok(plan) => self.write_service(*frontend, service, plan, maps, &mut summary)?,
                Err(rejected) => summary.rejected.push(rejected),
            }
        }
        self.remove_unused_backends(maps, &mut summary)?;
        Ok(summary)
    }

    /// Reserves the ids a service needs, or explains which capacity it would exceed.
    fn plan(
        &mut self,
        frontend: &Frontend,
        service: &DesiredService,
    ) -> Result<Plan, CapacityError> {
        let exceeds = |resource, needed, available, capacity| CapacityError {
            service: service.name.clone(),
            frontend: *frontend,
            resource,
            needed,
            available,
            capacity,
        };
        let programmed = self.services.get(frontend);
        if programmed.is_none() && self.service_ids.available() == 0 {
            let capacity = self.service_ids.capacity();
            return Err(exceeds("service ids", 1, 0, capacity));
        }
        let new_backends = service
            .endpoints
            .iter()
            .filter(|ep| self.backends.id_of(ep).is_none())
            .count() as u32;
        if new_backends > self.backends.ids.available() {
            let (available, capacity) =
                (self.backends.ids.available(), self.backends.ids.capacity());
            return Err(exceeds("backend ids", new_backends, available, capacity));
        }
        let written = programmed.map_or(0, |s| s.slots.len()) as u32;
        let growth = (service.endpoints.len() as u32).saturating_sub(written);
        let free_slots = self.slot_capacity.saturating_sub(self.backends.slot_refs);
        if growth > free_slots {
            return Err(exceeds(
                "backend slots",
                growth,
                free_slots,
                self.slot_capacity,
            ));
        }

        let service_id = match programmed {
            Some(s) => s.id,
            None => self
                .service_ids
                .allocate()
                .ok_or_else(|| exceeds("service ids", 1, 0, self.service_ids.capacity()))?,
        };
        let mut backend_ids = Vec::with_capacity(service.endpoints.len());
        for endpoint in &service.endpoints {
            let id = self
                .backends
                .id_or_allocate(*endpoint)
                .ok_or_else(|| exceeds("backend ids", 1, 0, self.backends.ids.capacity()))?;
            backend_ids.push(id);
        }
        Ok(Plan {
            service_id,
            backend_ids,
        })
    }

    fn write_service(
        &mut self,
        frontend: Frontend,
        desired: &DesiredService,
        plan: Plan,
        maps: &mut impl MapWriter,
        summary: &mut ReconcileSummary,
    ) -> Result<(), ReconcileError> {
        let context = || format!("programming service {} ({frontend})", desired.name);
        // Recorded before any write, so a failed write cannot leak the new service id.
        let service = self
            .services
            .entry(frontend)
            .or_insert_with(|| ProgrammedService {
                id: plan.service_id,
                name: desired.name.clone(),
                visible: None,
                slots: Vec::new(),
            });
        service.name = desired.name.clone();
        for &id in &plan.backend_ids {
            if self
                .backends
                .write(id, maps)
                .map_err(|e| failed(context(), e))?
            {
                summary.backends_written += 1;
            }
        }
        let visible = service.visible_slots().len();
        let previously_visible = service.visible_slots().to_vec();
        let layout = stable_layout(&previously_visible, &plan.backend_ids);

        // Slots the data path cannot see yet first, then in-place changes of visible ones.
        for index in (visible..layout.len()).chain(0..visible.min(layout.len())) {
            let id = layout[index];
            if service.slots.get(index) == Some(&id) {
                continue;
            }
            maps.set_slot(service.slot_key(index), id)
                .map_err(|e| failed(context(), e))?;
            self.backends.add_ref(id);
            match service.slots.get_mut(index) {
                Some(old) => self.backends.drop_ref(std::mem::replace(old, id)),
                None => service.slots.push(id),
            }
            summary.slots_written += 1;
        }

        let count = layout.len() as u32;
        if service.visible != Some(count) {
            if service.visible.is_none() {
                maps.reset_service_stats(service.id)
                    .map_err(|e| failed(context(), e))?;
            }
            let value = ServiceValue {
                id: service.id,
                backend_count: count,
                ..ServiceValue::default()
            };
            for key in frontend.keys() {
                maps.set_service(&key, &value)
                    .map_err(|e| failed(context(), e))?;
            }
            service.visible = Some(count);
            summary.services_written += 1;
        }

        if frontend.protocol == Protocol::Udp {
            let left: Vec<u32> = previously_visible
                .into_iter()
                .filter(|id| !layout.contains(id))
                .collect();
            if !left.is_empty() {
                summary.conntrack_flushed += maps
                    .flush_udp_conntrack(service.id, &left)
                    .map_err(|e| failed(context(), e))?;
            }
        }

        truncate_slots(service, layout.len(), &mut self.backends, maps, summary)
            .map_err(|e| failed(context(), e))?;
        Ok(())
    }

    fn remove_service(
        &mut self,
        frontend: Frontend,
        maps: &mut impl MapWriter,
        summary: &mut ReconcileSummary,
    ) -> Result<(), ReconcileError> {
        let Some(service) = self.services.get_mut(&frontend) else {
            return Ok(());
        };
        let context = format!("removing service {} ({frontend})", service.name);
        if service.visible.is_some() {
            for key in frontend.keys() {
                maps.remove_service(&key)
                    .map_err(|e| failed(context.clone(), e))?;
            }
            service.visible = None;
            summary.services_removed += 1;
        }
        if frontend.protocol == Protocol::Udp && !service.slots.is_empty() {
            summary.conntrack_flushed += maps
                .flush_udp_conntrack(service.id, &service.slots)
                .map_err(|e| failed(context.clone(), e))?;
        }
        truncate_slots(service, 0, &mut self.backends, maps, summary)
            .map_err(|e| failed(context, e))?;
        let id = service.id;
        self.services.remove(&frontend);
        self.service_ids.release(id);
        Ok(())
    }

    fn remove_unused_backends(
        &mut self,
        maps: &mut impl MapWriter,
        summary: &mut ReconcileSummary,
    ) -> Result<(), ReconcileError> {
        for (id, endpoint) in self.backends.unreferenced() {
            if self
                .backends
                .remove(id, maps)
                .map_err(|e| failed(format!("removing unused backend {id} ({endpoint})"), e))?
            {
                summary.backends_removed += 1;
            }
        }
        Ok(())
    }
}

/// Ids reserved for one service by [`Reconciler::plan`].
struct Plan {
    service_id: u32,
    /// One per desired endpoint, in the desired state's order.
    backend_ids: Vec<u32>,
}

/// Deletes a service's slots from the last down to `len` slots.
fn truncate_slots(
    service: &mut ProgrammedService,
    len: usize,
    backends: &mut Backends,
    maps: &mut impl MapWriter,
    summary: &mut ReconcileSummary,
) -> Result<(), MapWriteError> {
    while service.slots.len() > len {
        let index = service.slots.len() - 1;
        maps.remove_slot(service.slot_key(index))?;
        if let Some(id) = service.slots.pop() {
            backends.drop_ref(id);
        }
        summary.slots_removed += 1;
    }
    Ok(())
}

fn failed(context: String, source: MapWriteError) -> ReconcileError {
    ReconcileError {
        context,
        source: Box::new(source),
    }
}

/// Backend ids by endpoint, whether each is written to the backends map, and how many
/// written slots reference it.
#[derive(Debug)]
struct Backends {
    ids: IdPool,
    /// Written slots over all services: the sum of every backend's `refs`.
    slot_refs: u32,
    by_endpoint: HashMap<Endpoint, u32>,
    by_id: BTreeMap<u32, BackendEntry>,
}

#[derive(Debug)]
struct BackendEntry {
    endpoint: Endpoint,
    written: bool,
    refs: u32,
}

impl Backends {
    fn new(capacity: u32) -> Self {
        Self {
            ids: IdPool::new(capacity),
            slot_refs: 0,
            by_endpoint: HashMap::new(),
            by_id: BTreeMap::new(),
        }
    }

    fn id_of(&self, endpoint: &Endpoint) -> Option<u32> {
        self.by_endpoint.get(endpoint).copied()
    }

    fn id_or_allocate(&mut self, endpoint: Endpoint) -> Option<u32> {
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

    fn written_count(&self) -> usize {
        self.by_id.values().filter(|b| b.written).count()
    }

    /// Writes the backend entry unless it is already written; returns whether it wrote.
    fn write(&mut self, id: u32, maps: &mut impl MapWriter) -> Result<bool, MapWriteError> {
        let Some(entry) = self.by_id.get_mut(&id).filter(|e| !e.written) else {
            return Ok(false);
        };
        maps.set_backend(id, &entry.endpoint.backend())?;
        entry.written = true;
        Ok(true)
    }

    fn add_ref(&mut self, id: u32) {
        if let Some(entry) = self.by_id.get_mut(&id) {
            entry.refs += 1;
            self.slot_refs += 1;
        }
    }

    fn drop_ref(&mut self, id: u32) {
        if let Some(entry) = self.by_id.get_mut(&id) {
            entry.refs -= 1;
            self.slot_refs -= 1;
        }
    }

    fn unreferenced(&self) -> Vec<(u32, Endpoint)> {
        self.by_id
            .iter()
            .filter(|(_, e)| e.refs == 0)
            .map(|(id, e)| (*id, e.endpoint))
            .collect()
    }

    /// Deletes an unreferenced backend and frees its id; returns whether a map entry was
    /// deleted (an id allocated for a rejected service was never written).
    fn remove(&mut self, id: u32, maps: &mut impl MapWriter) -> Result<bool, MapWriteError> {
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
