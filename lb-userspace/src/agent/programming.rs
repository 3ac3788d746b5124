//! Desired states -> maps: applies the latest state (retrying a failed write), resyncs the
//! maps periodically, and logs the lines operators and tests read.

use std::sync::Arc;

use tracing::{error, info, warn};

use crate::datapath::{Capacities, Maps};
use crate::error::Chain;
use crate::model::DesiredState;
use crate::reconciler::Reconciler;

/// The one reconciler of the agent, whatever the source.
pub(super) struct Programmer {
    reconciler: Reconciler,
    /// A desired state not yet fully written.
    pending: Option<Arc<DesiredState>>,
}

impl Programmer {
    pub(super) fn new(capacities: &Capacities) -> Self {
        Self {
            reconciler: Reconciler::new(capacities),
            pending: None,
        }
    }

    /// Whether a desired state waits to be (completely) written.
    pub(super) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Makes `desired` the state to program, replacing any older one not yet written.
    pub(super) fn want(&mut self, desired: Arc<DesiredState>) {
        self.pending = Some(desired);
    }

    /// Writes the pending state; logs `ready: programmed N services, M backends` once it is
    /// completely written, or the failure (the state stays pending for a retry).
    pub(super) fn apply(&mut self, maps: &mut Maps) {
        let Some(desired) = &self.pending else { return };
        match self.reconciler.apply(desired, maps) {
            Ok(summary) => {
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
            }
            Err(e) => error!("reconcile failed, retrying: {}", Chain(&e)),
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
            }
            Err(e) => error!("resync failed, retrying at the next one: {}", Chain(&e)),
        }
    }
}
