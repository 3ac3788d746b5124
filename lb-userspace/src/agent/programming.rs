//! Desired states -> maps: applies the latest state (retrying a failed write), resyncs the
//! maps periodically, logs the lines operators and tests read, and records metrics and
//! health.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{error, info, warn};

use crate::datapath::{Capacities, Maps};
use crate::error::Chain;
use crate::health::SyncHealth;
use crate::metrics::SyncMetrics;
use crate::model::DesiredState;
use crate::reconciler::Reconciler;

/// The one reconciler of the agent, whatever the source.
pub(super) struct Programmer {
    reconciler: Reconciler,
    /// A desired state not yet fully written.
    pending: Option<Arc<DesiredState>>,
    /// When the oldest change not yet fully written arrived.
    pending_since: Option<Instant>,
    metrics: SyncMetrics,
    health: SyncHealth,
    /// Whether the maps were checked for entries an earlier agent left (they are pinned and
    /// outlive it), which happens right after the first complete apply.
    leftovers_removed: bool,
}

impl Programmer {
    pub(super) fn new(capacities: &Capacities, metrics: SyncMetrics, health: SyncHealth) -> Self {
        Self {
            reconciler: Reconciler::new(capacities),
            pending: None,
            pending_since: None,
            metrics,
            health,
            leftovers_removed: false,
        }
    }

    /// Whether a desired state waits to be (completely) written.
    pub(super) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Makes `desired` the state to program, replacing any older one not yet written.
    pub(super) fn want(&mut self, desired: Arc<DesiredState>) {
        let now = Instant::now();
        self.pending = Some(desired);
        self.pending_since.get_or_insert(now);
        self.health.queued(now);
    }

    /// Writes the pending state; logs `ready: programmed N services, M backends` once it is
    /// completely written, or the failure (the state stays pending for a retry).
    pub(super) fn apply(&mut self, maps: &mut Maps) {
        let Some(desired) = &self.pending else { return };
        let started = Instant::now();
        match self.reconciler.apply(desired, maps) {
            Ok(summary) => {
                let since = self.pending_since.take().unwrap_or(started);
                let now = SystemTime::now();
                let metrics = &self.metrics;
                metrics.applied(&self.reconciler, started.elapsed(), since.elapsed(), now);
                self.health.updated(now);
                for rejected in &summary.rejected {
                    error!("{rejected}");
                }
                if summary.wrote_anything() {
                    info!(
                        "reconcile applied: service entries {} written {} removed, slots {} \
                         written {} removed, backends {} written {} removed, {} UDP conntrack \
                         entries flushed",
                        summary.services_written,
                        summary.services_removed,
                        summary.slots_written,
                        summary.slots_removed,
                        summary.backends_written,
                        summary.backends_removed,
                        summary.conntrack_flushed,
                    );
                }
                info!(
                    "ready: programmed {} services, {} backends",
                    self.reconciler.programmed_services(),
                    self.reconciler.programmed_backends()
                );
                self.pending = None;
                if !self.leftovers_removed {
                    // The apply overwrote what an earlier agent wrote for the same state;
                    // a resync deletes the rest.
                    self.resync(maps);
                    self.leftovers_removed = true;
                }
            }
            Err(e) => {
                self.metrics.failed(&self.reconciler, started.elapsed());
                error!("reconcile failed, retrying: {}", Chain(&e));
            }
        }
    }

    /// Reads the maps back and repairs whatever differs from what was written.
    pub(super) fn resync(&mut self, maps: &mut Maps) {
        match self.reconciler.resync(maps) {
            Ok(repairs) if repairs.is_empty() => {}
            Ok(repairs) => {
                for repair in &repairs {
                    warn!("resync: {repair}");
                }
                info!("resync repaired {} map entries", repairs.len());
                self.metrics.repaired(repairs.len());
            }
            Err(e) => error!("resync failed, retrying at the next one: {}", Chain(&e)),
        }
    }
}
