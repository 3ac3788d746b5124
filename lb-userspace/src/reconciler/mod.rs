//! Turns a [`DesiredState`] into the minimal set of map writes.
//!
//! Every frontend has one services map entry per lookup scope. An entry points at a *slot
//! group*: a group id with its backend slots `1..=backend_count`. Scopes with equal backend
//! sets share one group (the common case: no Local traffic policy); when a policy makes them
//! differ, the internal scope gets a group of its own, and loses it again once they are
//! equal. Flags and the affinity timeout live in the entries, so scopes sharing a group may
//! still differ in them (DROP_IF_NO_BACKEND on a Local policy's side only).
//!
//! The reconciler remembers what it has written (entries, groups and their slots, backend ids
//! and their reference counts) and on every [`Reconciler::apply`] writes only the difference.
//! It plans only the frontends that changed: a frontend whose desired service is the one it
//! last wrote completely (the same `Arc`, or an equal service) is skipped without planning,
//! so one endpoint change costs the same whatever the number of services. Start-up (after
//! [`Reconciler::adopt`]), a failed write and a rejected service leave a frontend unrecorded,
//! and the next apply plans it again in full.
//! Write order keeps the kernel consistent at every step:
//! - backends -> slots -> service entries; slots past what any entry can see are written
//!   before slots the data path can already see;
//! - entries are shrunk or re-pointed before the slots they no longer use are deleted; a
//!   group no entry points at is deleted after that, and backends nobody references last;
//! - a load balancer IP's source ranges (`loadBalancerSourceRanges`, keyed by its external
//!   entry's group) are added before the entry and removed after it, so a change never
//!   drops a source that both the old and the new ranges admit.
//!
//! When a write fails, everything written before it is remembered, so the next `apply`
//! continues from what the kernel really holds. [`Reconciler::resync`] compares the maps'
//! real contents with that record and repairs any drift. [`Reconciler::adopt`] builds that
//! record from the maps themselves, for an agent taking over maps an earlier one wrote.

mod adopt;
mod backends;
mod cluster_ips;
mod error;
mod id_map;
mod ids;
mod resync;
mod service_cidrs;
mod slots;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use ipnet::IpNet;

use lb_common::{BackendSlotKey, ServiceKey, ServiceValue};

use crate::maglev::{self, TableSize};
use crate::model::{
    Algorithm, Changed, DesiredService, DesiredState, Endpoint, Frontend, Protocol,
    ServicePortName, SCOPES,
};
use backends::{describe, Backends};
pub use cluster_ips::{ClusterIpMap, ClusterIps};
pub use error::{CapacityError, MapWriteError, ReconcileError};
use ids::IdPool;
use lb_common::Capacities;
pub use resync::{Drift, MapReader, Repair};
pub use service_cidrs::{ServiceCidrMap, ServiceCidrs};
use slots::stable_layout;

/// The map operations the reconciler needs; implemented by [`crate::datapath::DatapathMaps`] and by an
/// in-memory fake in tests. Removing a key that is already gone succeeds.
pub trait MapWriter {
    fn set_backend(&mut self, id: u32, backend: &lb_common::Backend) -> Result<(), MapWriteError>;
    fn remove_backend(&mut self, id: u32) -> Result<(), MapWriteError>;
    fn set_slot(&mut self, key: BackendSlotKey, backend_id: u32) -> Result<(), MapWriteError>;
    fn remove_slot(&mut self, key: BackendSlotKey) -> Result<(), MapWriteError>;
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapWriteError>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapWriteError>;
    /// Admits new flows from `range` to the load balancer IP whose external entry uses group
    /// `group_id` (`LB_SRC_RANGES`).
    fn set_source_range(&mut self, group_id: u32, range: IpNet) -> Result<(), MapWriteError>;
    fn remove_source_range(&mut self, group_id: u32, range: IpNet) -> Result<(), MapWriteError>;
    /// Zeroes the per-service counters of a group id about to be (re)used.
    fn reset_service_stats(&mut self, group_id: u32) -> Result<(), MapWriteError>;
    /// Deletes the UDP conntrack entries (both directions) whose flow is balanced by a group
    /// to a backend, for each (group id, backend id) pair of `flows`, in one walk of the map;
    /// returns how many were deleted. TCP entries are never touched, so established
    /// connections survive a backend's removal.
    fn flush_udp_conntrack(&mut self, flows: &BTreeSet<(u32, u32)>) -> Result<u32, MapWriteError>;
}

/// What one [`Reconciler::apply`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileSummary {
    /// Frontends planned because their desired service is not the one the maps hold.
    pub frontends_planned: u32,
    /// Service entries (one per frontend and scope) written or deleted.
    pub services_written: u32,
    pub services_removed: u32,
    pub slots_written: u32,
    pub slots_removed: u32,
    pub backends_written: u32,
    pub backends_removed: u32,
    /// Source ranges (`loadBalancerSourceRanges`) written or deleted.
    pub source_ranges_written: u32,
    pub source_ranges_removed: u32,
    /// Services that did not fit; each is skipped, the rest is programmed.
    pub rejected: Vec<CapacityError>,
    /// Whether the group ids' services, frontends or scopes changed, i.e.
    /// [`Reconciler::counted_services`] may differ from before.
    pub labels_changed: bool,
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
            + self.source_ranges_written
            + self.source_ranges_removed
            > 0
    }
}

/// A group id the data path counts under (an index of `LB_SVC_STATS`) and what it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedService {
    pub group_id: u32,
    pub name: ServicePortName,
    pub frontend: Frontend,
    /// The lookup scopes (`lb_common::service::scope`) whose entries point at the id.
    pub scopes: Vec<u8>,
}

/// Keeps the maps in line with a desired state, writing only what changed.
#[derive(Debug)]
pub struct Reconciler {
    /// The services map's size: every frontend takes one entry per scope.
    entry_capacity: u32,
    /// Services map entries written.
    entries_written: u32,
    /// Frontends with at least one services map entry.
    frontends_written: usize,
    slot_capacity: u32,
    group_ids: IdPool,
    services: BTreeMap<Frontend, ProgrammedService>,
    backends: Backends,
    /// (group id, backend id) pairs whose UDP flows are still to be flushed: the backend left
    /// the group (see [`Reconciler::flush_udp_conntrack`]).
    udp_flush: BTreeSet<(u32, u32)>,
    /// Frontends rejected for capacity: planned again by every apply until they fit.
    rejected: BTreeSet<Frontend>,
    /// The algorithm of services that do not choose one (`--lb-algorithm`).
    default_algorithm: Algorithm,
    /// The slots of a Maglev group with backends (`--maglev-table-size`).
    maglev_table_size: TableSize,
}

/// A frontend as written to the maps.
#[derive(Debug)]
struct ProgrammedService {
    /// `None` for a service adopted from the maps until a desired state names it.
    name: Option<ServicePortName>,
    /// Slot groups by group id: one, or two while the scopes' backend sets differ (and,
    /// after a failed write, until the next apply frees the one no entry uses). Boxed: a
    /// map node has room for 11 values, and one service in 30,000 has more than one group.
    groups: BTreeMap<u32, Box<SlotGroup>>,
    /// The services map entry of each scope (indexed by scope) as written; `None` while the
    /// map has no entry.
    entries: [Option<ServiceValue>; 2],
    /// The desired service the maps hold completely for this frontend; `None` while a write
    /// is incomplete or the frontend was adopted, which makes the next apply plan it.
    applied: Option<Arc<DesiredService>>,
}

/// One group id's backend slots as written.
#[derive(Debug, Default)]
struct SlotGroup {
    /// Slot `i + 1` holds backend id `slots[i]`. Never shorter than the backend count of an
    /// entry pointing at the group; longer while (or, after a failed write, until) an update
    /// is completed.
    slots: Vec<u32>,
    /// Whether the id's per-service counters were zeroed, which happens before first use.
    stats_reset: bool,
    /// Source ranges written under the id (the groups of a load-balancer IP with ranges).
    source_ranges: BTreeSet<IpNet>,
}

impl ProgrammedService {
    fn has_entries(&self) -> bool {
        self.entries.iter().any(Option::is_some)
    }

    /// Whether the maps hold `desired` for this frontend already.
    fn holds(&self, desired: &Arc<DesiredService>) -> bool {
        self.applied
            .as_ref()
            .is_some_and(|applied| Arc::ptr_eq(applied, desired) || applied == desired)
    }

    /// How many of group `id`'s slots the data path can see: the largest backend count of an
    /// entry pointing at it.
    fn visible(&self, id: u32) -> usize {
        self.entries
            .iter()
            .flatten()
            .filter(|v| v.group_id == id)
            .map(|v| v.backend_count as usize)
            .max()
            .unwrap_or(0)
    }

    /// The groups to keep using for the external scope and, when the scopes' backends
    /// differ, for the internal one: the group its entry points at (for the external scope,
    /// or else the internal entry's); `None` where a new group is needed. A group left
    /// without a scope is freed by the apply.
    fn reusable_ids(&self) -> [Option<u32>; 2] {
        let existing = |id: Option<u32>| id.filter(|id| self.groups.contains_key(id));
        let [ext_entry, int_entry] = self.entries.map(|e| e.map(|v| v.group_id));
        let external = existing(ext_entry).or(existing(int_entry));
        let internal = existing(int_entry).filter(|id| Some(*id) != external);
        [external, internal]
    }
}

fn slot_key(group_id: u32, index: usize) -> BackendSlotKey {
    BackendSlotKey {
        group_id,
        slot: index as u32 + 1,
    }
}

impl Reconciler {
    /// A reconciler for empty maps of the given capacities.
    pub fn new(capacities: &Capacities) -> Self {
        Self {
            entry_capacity: capacities.services,
            entries_written: 0,
            frontends_written: 0,
            slot_capacity: capacities.backend_slots,
            group_ids: IdPool::new(capacities.services),
            services: BTreeMap::new(),
            backends: Backends::new(capacities.backends),
            udp_flush: BTreeSet::new(),
            rejected: BTreeSet::new(),
            default_algorithm: Algorithm::default(),
            maglev_table_size: TableSize::DEFAULT,
        }
    }

    /// The same, with the node's backend selection for services that choose none, and the
    /// Maglev table size.
    pub fn with_selection(
        self,
        default_algorithm: Algorithm,
        maglev_table_size: TableSize,
    ) -> Self {
        Self {
            default_algorithm,
            maglev_table_size,
            ..self
        }
    }

    /// The same, with `other`'s backend selection (for a reconciler that adopted the maps).
    pub fn with_selection_of(self, other: &Reconciler) -> Self {
        self.with_selection(other.default_algorithm, other.maglev_table_size)
    }

    /// The Maglev table size of `service`, if it uses Maglev.
    fn maglev_size(&self, service: &DesiredService) -> Option<TableSize> {
        let algorithm = service.algorithm.unwrap_or(self.default_algorithm);
        (algorithm == Algorithm::Maglev).then_some(self.maglev_table_size)
    }

    /// Number of frontends with a service entry in the maps.
    pub fn programmed_services(&self) -> usize {
        self.frontends_written
    }

    /// Number of backends in the maps.
    pub fn programmed_backends(&self) -> usize {
        self.backends.written_count()
    }

    /// Every group id some services map entry points at, with its service and scopes: a
    /// read-only view for labelling the per-service counters. Services adopted from the maps
    /// are left out until a desired state names them.
    pub fn counted_services(&self) -> Vec<CountedService> {
        let mut counted = Vec::new();
        for (frontend, service) in &self.services {
            let Some(name) = &service.name else { continue };
            for id in service.groups.keys() {
                let scopes: Vec<u8> = SCOPES
                    .into_iter()
                    .filter(|scope| {
                        service.entries[*scope as usize].is_some_and(|v| v.group_id == *id)
                    })
                    .collect();
                if !scopes.is_empty() {
                    counted.push(CountedService {
                        group_id: *id,
                        name: name.clone(),
                        frontend: *frontend,
                        scopes,
                    });
                }
            }
        }
        counted
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
        self.apply_changes(desired, &Changed::Everything, maps)
    }

    /// [`Reconciler::apply`] when only `changed` frontends (and those rejected before) may
    /// differ from what is programmed, as the source that made `desired` says: the others
    /// are not even compared, so the cost does not grow with the number of services.
    pub fn apply_changes(
        &mut self,
        desired: &DesiredState,
        changed: &Changed,
        maps: &mut impl MapWriter,
    ) -> Result<ReconcileSummary, ReconcileError> {
        let mut summary = ReconcileSummary::default();
        let (gone, changed) = match changed {
            Changed::Everything => self.changes(desired),
            Changed::Frontends(frontends) => self.changes_among(desired, frontends),
        };
        for frontend in gone {
            self.remove_service(frontend, maps, &mut summary)?;
        }
        summary.frontends_planned = changed.len() as u32;
        for (frontend, service) in changed {
            self.plan_and_write(frontend, service, maps, &mut summary)?;
        }
        self.remove_unused_backends(maps, &mut summary)?;
        self.rejected.clear();
        if !summary.rejected.is_empty() {
            // The backend ids and slots freed above may make room for what was rejected.
            for rejected in std::mem::take(&mut summary.rejected) {
                let frontend = rejected.frontend;
                if let Some(service) = desired.services.get(&frontend) {
                    self.plan_and_write(frontend, service, maps, &mut summary)?;
                }
            }
            self.remove_unused_backends(maps, &mut summary)?;
        }
        self.rejected
            .extend(summary.rejected.iter().map(|rejected| rejected.frontend));
        Ok(summary)
    }

    /// Frontends programmed but no longer desired, and desired frontends whose service the
    /// maps do not hold yet: one walk over both sorted maps.
    #[allow(clippy::type_complexity)]
    fn changes<'a>(
        &self,
        desired: &'a DesiredState,
    ) -> (Vec<Frontend>, Vec<(Frontend, &'a Arc<DesiredService>)>) {
        let (mut gone, mut changed) = (Vec::new(), Vec::new());
        let mut programmed = self.services.iter().peekable();
        for (frontend, service) in &desired.services {
            while let Some((old, _)) = programmed.next_if(|(old, _)| *old < frontend) {
                gone.push(*old);
            }
            match programmed.next_if(|(old, _)| *old == frontend) {
                Some((_, old)) if old.holds(service) => {}
                _ => changed.push((*frontend, service)),
            }
        }
        gone.extend(programmed.map(|(old, _)| *old));
        (gone, changed)
    }

    /// [`Reconciler::changes`] looking only at `frontends` and the ones rejected before.
    #[allow(clippy::type_complexity)]
    fn changes_among<'a>(
        &self,
        desired: &'a DesiredState,
        frontends: &BTreeSet<Frontend>,
    ) -> (Vec<Frontend>, Vec<(Frontend, &'a Arc<DesiredService>)>) {
        let (mut gone, mut changed) = (Vec::new(), Vec::new());
        for frontend in frontends.union(&self.rejected) {
            let programmed = self.services.get(frontend);
            match desired.services.get(frontend) {
                Some(service) if !programmed.is_some_and(|p| p.holds(service)) => {
                    changed.push((*frontend, service));
                }
                Some(_) => {}
                None if programmed.is_some() => gone.push(*frontend),
                None => {}
            }
        }
        (gone, changed)
    }

    /// Deletes the UDP conntrack entries of the backends that left a slot group in the
    /// applies so far, in one walk of the conntrack map; returns how many it deleted. Kept
    /// out of [`Reconciler::apply`], so a walk of a full conntrack table never delays
    /// programming: the agent calls it once the maps hold the new state. What a failed walk
    /// did not delete is retried by the next call.
    pub fn flush_udp_conntrack(
        &mut self,
        maps: &mut impl MapWriter,
    ) -> Result<u32, ReconcileError> {
        if self.udp_flush.is_empty() {
            return Ok(0);
        }
        let flushed = maps.flush_udp_conntrack(&self.udp_flush).map_err(|e| {
            let context = "flushing the UDP conntrack entries of removed backends";
            failed(context.to_string(), e)
        })?;
        self.udp_flush.clear();
        Ok(flushed)
    }

    /// Writes `service` if it fits, else records why not in `summary`.
    fn plan_and_write(
        &mut self,
        frontend: Frontend,
        service: &Arc<DesiredService>,
        maps: &mut impl MapWriter,
        summary: &mut ReconcileSummary,
    ) -> Result<(), ReconcileError> {
        let had_entries = self.has_entries(&frontend);
        let result = match self.plan(&frontend, service) {
            Ok(plan) => self.write_service(frontend, service, plan, maps, summary),
            Err(rejected) => {
                summary.rejected.push(rejected);
                Ok(())
            }
        };
        self.count_entries(had_entries, &frontend);
        result
    }

    fn has_entries(&self, frontend: &Frontend) -> bool {
        self.services
            .get(frontend)
            .is_some_and(ProgrammedService::has_entries)
    }

    /// Keeps [`Reconciler::programmed_services`] in step after `frontend` was written.
    fn count_entries(&mut self, had_entries: bool, frontend: &Frontend) {
        match (had_entries, self.has_entries(frontend)) {
            (false, true) => self.frontends_written += 1,
            (true, false) => self.frontends_written -= 1,
            _ => {}
        }
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
        let shared = service.external.endpoints == service.internal.endpoints;
        let [ext_id, int_id] = programmed.map_or([None, None], ProgrammedService::reusable_ids);
        let mut wanted = vec![(ext_id, &service.external.endpoints)];
        if !shared {
            wanted.push((int_id, &service.internal.endpoints));
        }

        let new_ids = wanted.iter().filter(|(id, _)| id.is_none()).count() as u32;
        if new_ids > self.group_ids.available() {
            let (available, capacity) = (self.group_ids.available(), self.group_ids.capacity());
            return Err(exceeds("slot group ids", new_ids, available, capacity));
        }
        let endpoints: BTreeSet<_> = wanted.iter().flat_map(|(_, set)| set.iter()).collect();
        let new_backends = endpoints
            .iter()
            .filter(|ep| self.backends.id_of(ep).is_none())
            .count() as u32;
        if new_backends > self.backends.ids.available() {
            let (available, capacity) =
                (self.backends.ids.available(), self.backends.ids.capacity());
            return Err(exceeds("backend ids", new_backends, available, capacity));
        }
        let written = |id: Option<u32>| {
            id.and_then(|id| programmed.and_then(|p| p.groups.get(&id)))
                .map_or(0, |g| g.slots.len())
        };
        let maglev_size = self.maglev_size(service);
        let slots = |set: &BTreeSet<Endpoint>| match maglev_size {
            Some(size) if !set.is_empty() => size.get() as usize,
            _ => set.len(),
        };
        let growth: u32 = wanted
            .iter()
            .map(|(id, set)| slots(set).saturating_sub(written(*id)) as u32)
            .sum();
        let free_slots = self.slot_capacity.saturating_sub(self.backends.slot_refs);
        if growth > free_slots {
            return Err(exceeds(
                "backend slots",
                growth,
                free_slots,
                self.slot_capacity,
            ));
        }

        let written_entries = programmed.map_or(0, |p| p.entries.iter().flatten().count());
        let new_entries = (SCOPES.len() - written_entries) as u32;
        let free_entries = self.entry_capacity.saturating_sub(self.entries_written);
        if new_entries > free_entries {
            return Err(exceeds(
                "services map entries",
                new_entries,
                free_entries,
                self.entry_capacity,
            ));
        }

        let mut groups = Vec::with_capacity(wanted.len());
        for (id, set) in wanted {
            let id = match id {
                Some(id) => id,
                None => self
                    .group_ids
                    .allocate()
                    .ok_or_else(|| exceeds("slot group ids", 1, 0, self.group_ids.capacity()))?,
            };
            let mut backend_ids = Vec::with_capacity(set.len());
            for endpoint in set {
                let backend_id = self
                    .backends
                    .id_or_allocate(*endpoint)
                    .ok_or_else(|| exceeds("backend ids", 1, 0, self.backends.ids.capacity()))?;
                backend_ids.push(backend_id);
            }
            let maglev = maglev_size.map(|size| {
                let addrs: Vec<_> = set.iter().map(|ep| (ep.addr, ep.port)).collect();
                let table = maglev::table(&addrs, size);
                table.into_iter().map(|i| backend_ids[i]).collect()
            });
            groups.push(PlannedGroup {
                id,
                backend_ids,
                maglev,
            });
        }
        Ok(Plan { groups })
    }

    fn write_service(
        &mut self,
        frontend: Frontend,
        desired: &Arc<DesiredService>,
        plan: Plan,
        maps: &mut impl MapWriter,
        summary: &mut ReconcileSummary,
    ) -> Result<(), ReconcileError> {
        let context = || format!("programming service {} ({frontend})", desired.name);
        let fail = |e| failed(context(), e);
        let service = self
            .services
            .entry(frontend)
            .or_insert_with(|| ProgrammedService {
                name: None,
                groups: BTreeMap::new(),
                entries: [None, None],
                applied: None,
            });
        service.applied = None;
        if service.name.as_ref() != Some(&desired.name) {
            service.name = Some(desired.name.clone());
            summary.labels_changed = true;
        }
        // Recorded before any write, so a failed write cannot leak a new group id.
        for group in &plan.groups {
            service.groups.entry(group.id).or_default();
        }
        for id in plan.groups.iter().flat_map(|g| &g.backend_ids) {
            if self.backends.write(*id, maps).map_err(fail)? {
                summary.backends_written += 1;
            }
        }

        // Slots the data path cannot see yet first, then in-place changes of visible ones.
        let mut layouts = Vec::with_capacity(plan.groups.len());
        for planned in &plan.groups {
            let visible = service.visible(planned.id);
            let group = service.groups.entry(planned.id).or_default();
            if !group.stats_reset {
                maps.reset_service_stats(planned.id).map_err(fail)?;
                group.stats_reset = true;
            }
            let previously_visible = group.slots[..visible].to_vec();
            let layout = match &planned.maglev {
                Some(table) => table.clone(),
                None => stable_layout(&previously_visible, &planned.backend_ids),
            };
            for index in (visible..layout.len()).chain(0..visible.min(layout.len())) {
                let id = layout[index];
                if group.slots.get(index) == Some(&id) {
                    continue;
                }
                maps.set_slot(slot_key(planned.id, index), id)
                    .map_err(fail)?;
                self.backends.add_ref(id);
                match group.slots.get_mut(index) {
                    Some(old) => self.backends.drop_ref(std::mem::replace(old, id)),
                    None => group.slots.push(id),
                }
                summary.slots_written += 1;
            }
            let kept: HashSet<u32> = layout.iter().copied().collect();
            let left: BTreeSet<u32> = previously_visible
                .into_iter()
                .filter(|id| !kept.contains(id))
                .collect();
            layouts.push((planned.id, layout.len(), left));
        }

        // Both scopes' entries filter on the ranges (outside the node, and pods and the
        // node's own sockets), each under its own group id.
        for (id, _, _) in &layouts {
            if let Some(group) = service.groups.get_mut(id) {
                for range in desired
                    .source_ranges
                    .difference(&group.source_ranges.clone())
                {
                    maps.set_source_range(*id, *range).map_err(fail)?;
                    group.source_ranges.insert(*range);
                    summary.source_ranges_written += 1;
                }
            }
        }

        for scope in SCOPES {
            let index = plan.group_of(scope);
            let (id, count, _) = layouts[index];
            let value = desired.value(scope, id, count as u32);
            let written = &mut service.entries[scope as usize];
            if *written != Some(value) {
                maps.set_service(&frontend.key(scope), &value)
                    .map_err(fail)?;
                if written.is_none_or(|old| old.group_id != value.group_id) {
                    summary.labels_changed = true;
                }
                if written.replace(value).is_none() {
                    self.entries_written += 1;
                }
                summary.services_written += 1;
            }
        }

        for (id, group) in service.groups.iter_mut() {
            let keep = match layouts.iter().any(|(planned, _, _)| planned == id) {
                true => &desired.source_ranges,
                false => &BTreeSet::new(),
            };
            remove_source_ranges(*id, group, keep, maps, summary).map_err(fail)?;
        }

        for (id, count, left) in layouts {
            if frontend.protocol == Protocol::Udp {
                self.udp_flush
                    .extend(left.iter().map(|backend| (id, *backend)));
            }
            if let Some(group) = service.groups.get_mut(&id) {
                truncate_slots(id, group, count, &mut self.backends, maps, summary)
                    .map_err(fail)?;
            }
        }
        let unused: Vec<u32> = service
            .groups
            .keys()
            .filter(|id| !plan.groups.iter().any(|g| g.id == **id))
            .copied()
            .collect();
        for id in unused {
            release_group(
                service,
                id,
                frontend.protocol,
                &mut self.group_ids,
                &mut self.backends,
                &mut self.udp_flush,
                maps,
                summary,
            )
            .map_err(fail)?;
        }
        service.applied = Some(Arc::clone(desired));
        Ok(())
    }

    fn remove_service(
        &mut self,
        frontend: Frontend,
        maps: &mut impl MapWriter,
        summary: &mut ReconcileSummary,
    ) -> Result<(), ReconcileError> {
        let had_entries = self.has_entries(&frontend);
        let result = self.remove_entries_and_groups(frontend, maps, summary);
        self.count_entries(had_entries, &frontend);
        result
    }

    fn remove_entries_and_groups(
        &mut self,
        frontend: Frontend,
        maps: &mut impl MapWriter,
        summary: &mut ReconcileSummary,
    ) -> Result<(), ReconcileError> {
        let Some(service) = self.services.get_mut(&frontend) else {
            return Ok(());
        };
        service.applied = None;
        summary.labels_changed = true;
        let context = match &service.name {
            Some(name) => format!("removing service {name} ({frontend})"),
            None => format!("removing service {frontend} adopted from the maps"),
        };
        let fail = |e| failed(context.clone(), e);
        for scope in SCOPES {
            if service.entries[scope as usize].is_some() {
                maps.remove_service(&frontend.key(scope)).map_err(fail)?;
                service.entries[scope as usize] = None;
                self.entries_written -= 1;
                summary.services_removed += 1;
            }
        }
        let ids: Vec<u32> = service.groups.keys().copied().collect();
        for id in ids {
            release_group(
                service,
                id,
                frontend.protocol,
                &mut self.group_ids,
                &mut self.backends,
                &mut self.udp_flush,
                maps,
                summary,
            )
            .map_err(fail)?;
        }
        self.services.remove(&frontend);
        Ok(())
    }

    fn remove_unused_backends(
        &mut self,
        maps: &mut impl MapWriter,
        summary: &mut ReconcileSummary,
    ) -> Result<(), ReconcileError> {
        for (id, backend) in self.backends.unreferenced() {
            let context = || format!("removing unused backend {id} ({})", describe(&backend));
            if self
                .backends
                .remove(id, maps)
                .map_err(|e| failed(context(), e))?
            {
                summary.backends_removed += 1;
            }
        }
        Ok(())
    }
}

/// Ids reserved for one service by [`Reconciler::plan`].
struct Plan {
    /// The external scope's group first, then the internal scope's if the sets differ.
    groups: Vec<PlannedGroup>,
}

impl Plan {
    /// Index into `groups` of the group serving `scope`.
    fn group_of(&self, scope: u8) -> usize {
        (scope as usize).min(self.groups.len() - 1)
    }
}

struct PlannedGroup {
    id: u32,
    /// One per desired endpoint, in the desired state's order.
    backend_ids: Vec<u32>,
    /// For a Maglev service, the slots' backend ids (its table) instead of one slot each.
    maglev: Option<Vec<u32>>,
}

/// Deletes a group no entry points at any more: its slots, then its id; its UDP flows are
/// left to [`Reconciler::flush_udp_conntrack`].
#[allow(clippy::too_many_arguments)]
fn release_group(
    service: &mut ProgrammedService,
    id: u32,
    protocol: Protocol,
    group_ids: &mut IdPool,
    backends: &mut Backends,
    udp_flush: &mut BTreeSet<(u32, u32)>,
    maps: &mut impl MapWriter,
    summary: &mut ReconcileSummary,
) -> Result<(), MapWriteError> {
    let Some(group) = service.groups.get_mut(&id) else {
        return Ok(());
    };
    if protocol == Protocol::Udp {
        udp_flush.extend(group.slots.iter().map(|backend| (id, *backend)));
    }
    remove_source_ranges(id, group, &BTreeSet::new(), maps, summary)?;
    truncate_slots(id, group, 0, backends, maps, summary)?;
    service.groups.remove(&id);
    group_ids.release(id);
    summary.labels_changed = true;
    Ok(())
}

/// Deletes the source ranges of group `id` that are not in `keep`.
fn remove_source_ranges(
    id: u32,
    group: &mut SlotGroup,
    keep: &BTreeSet<IpNet>,
    maps: &mut impl MapWriter,
    summary: &mut ReconcileSummary,
) -> Result<(), MapWriteError> {
    let stale: Vec<IpNet> = group.source_ranges.difference(keep).copied().collect();
    for range in stale {
        maps.remove_source_range(id, range)?;
        group.source_ranges.remove(&range);
        summary.source_ranges_removed += 1;
    }
    Ok(())
}

/// Deletes a group's slots from the last down to `len` slots.
fn truncate_slots(
    group_id: u32,
    group: &mut SlotGroup,
    len: usize,
    backends: &mut Backends,
    maps: &mut impl MapWriter,
    summary: &mut ReconcileSummary,
) -> Result<(), MapWriteError> {
    while group.slots.len() > len {
        let index = group.slots.len() - 1;
        maps.remove_slot(slot_key(group_id, index))?;
        if let Some(id) = group.slots.pop() {
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
