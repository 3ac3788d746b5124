//! Desired states -> maps: adopts what the pinned maps hold, applies the latest state (its
//! services, then the cluster IPs and the service CIDRs; retrying a failed write), resyncs
//! the maps periodically, logs the lines operators and tests read, records metrics and
//! health, and serves the health check node ports of what it programmed.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{error, info, warn};

use super::health_check_ports::HealthCheckPorts;
use super::service_names::ServiceNames;
use crate::datapath::{Capacities, DatapathMaps};
use crate::error::Chain;
use crate::health::SyncHealth;
use crate::metrics::SyncMetrics;
use crate::model::Changed;
use crate::reconciler::{ClusterIps, ReconcileError, Reconciler, ServiceCidrs};
use crate::source::Update;

/// The one reconciler of the agent, whatever the source.
pub(super) struct Programmer {
    capacities: Capacities,
    reconciler: Reconciler,
    /// `LB_CLUSTER_IPS`, synced after each complete write of the services.
    cluster_ips: ClusterIps,
    /// `LB_SVC_CIDRS`, synced after the cluster IPs, so no ClusterIP is dropped for want of
    /// its entries.
    service_cidrs: ServiceCidrs,
    /// `LB_SVC_NAMES`, synced after each complete write of the services.
    service_names: ServiceNames,
    /// Whether `reconciler` took over what the pinned maps hold (an earlier agent's writes
    /// outlive it), which happens before anything is written or resynced.
    adopted: bool,
    /// A desired state not yet fully written, with the frontends changed since the last one
    /// that was.
    pending: Option<Update>,
    /// When the oldest change not yet fully written arrived.
    pending_since: Option<Instant>,
    metrics: SyncMetrics,
    health: SyncHealth,
    health_check_ports: HealthCheckPorts,
}

impl Programmer {
    pub(super) fn new(
        capacities: &Capacities,
        reconciler: Reconciler,
        metrics: SyncMetrics,
        health: SyncHealth,
    ) -> Self {
        Self {
            capacities: *capacities,
            reconciler,
            cluster_ips: ClusterIps::default(),
            service_cidrs: ServiceCidrs::default(),
            service_names: ServiceNames::default(),
            adopted: false,
            pending: None,
            pending_since: None,
            health_check_ports: HealthCheckPorts::new(health.clone(), metrics.clone()),
            metrics,
            health,
        }
    }

    /// Whether a desired state waits to be (completely) written.
    pub(super) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Makes `update`'s state the one to program, replacing any older one not yet written
    /// (whose changes are kept).
    pub(super) fn want(&mut self, update: Update) {
        let now = Instant::now();
        match &mut self.pending {
            Some(pending) => pending.merge(update),
            None => self.pending = Some(update),
        }
        self.pending_since.get_or_insert(now);
        self.health.queued(now);
        self.metrics.queued(SystemTime::now());
    }

    /// Writes the pending state; logs `ready: programmed N services, M backends` once it is
    /// completely written, or the failure (the state stays pending for a retry). Then flushes
    /// the UDP flows of backends that left, outside the time programming is measured by, and
    /// updates the health check node ports.
    pub(super) async fn apply(&mut self, maps: &mut DatapathMaps) {
        if self.pending.is_none() || !self.adopt(maps) {
            return;
        }
        let Some(pending) = &mut self.pending else {
            return;
        };
        let started = Instant::now();
        let applied = self
            .reconciler
            .apply_changes(&pending.state, &pending.changed, maps)
            .and_then(|summary| {
                self.cluster_ips
                    .sync(&pending.state, &pending.changed, maps)
                    .map_err(|e| ReconcileError {
                        context: "cannot list the cluster IPs".into(),
                        source: Box::new(e),
                    })
                    .map(|()| summary)
            })
            .and_then(|summary| {
                self.service_cidrs
                    .sync(&pending.state.service_cidrs, maps)
                    .map_err(|e| ReconcileError {
                        context: "cannot write the service CIDRs".into(),
                        source: Box::new(e),
                    })
                    .map(|()| summary)
            });
        // What a failed apply wrote is recorded, but not which frontends it left half done.
        pending.changed = Changed::Everything;
        // The health checks of a state completely written.
        let mut programmed = None;
        match applied {
            Ok(summary) => {
                let since = self.pending_since.take().unwrap_or(started);
                let now = SystemTime::now();
                let (took, lag) = (started.elapsed(), since.elapsed());
                self.metrics
                    .applied(&self.reconciler, &summary, took, lag, now);
                self.health.updated(now);
                for rejected in &summary.rejected {
                    error!("{rejected}");
                }
                if summary.wrote_anything() {
                    info!(
                        "reconcile applied: service entries {} written {} removed, slots {} \
                         written {} removed, backends {} written {} removed",
                        summary.services_written,
                        summary.services_removed,
                        summary.slots_written,
                        summary.slots_removed,
                        summary.backends_written,
                        summary.backends_removed,
                    );
                }
                info!(
                    "ready: programmed {} services, {} backends",
                    self.reconciler.programmed_services(),
                    self.reconciler.programmed_backends()
                );
                if summary.labels_changed || !self.service_names.is_known() {
                    let counted = self.reconciler.counted_services();
                    if let Err(e) = self.service_names.sync(&counted, maps) {
                        warn!("inspect's service names not written: {}", Chain(&e));
                    }
                }
                programmed = Some(Arc::clone(&pending.state.health_checks));
                self.pending = None;
            }
            Err(e) => {
                // A failed apply may have changed names it did not report: sync them all next.
                self.service_names.forget();
                self.metrics.failed(&self.reconciler, started.elapsed());
                error!("reconcile failed, retrying: {}", Chain(&e));
            }
        }
        self.flush_udp_conntrack(maps);
        if let Some(health_checks) = programmed {
            self.health_check_ports.sync(&health_checks).await;
        }
    }

    /// Deletes the UDP flows of backends that left their services; a failure is retried by
    /// the next apply or resync.
    fn flush_udp_conntrack(&mut self, maps: &mut DatapathMaps) {
        match self.reconciler.flush_udp_conntrack(maps) {
            Ok(0) => {}
            Ok(flushed) => info!("flushed {flushed} UDP conntrack entries of removed backends"),
            Err(e) => error!("{}, retrying", Chain(&e)),
        }
    }

    /// Reads the maps back and repairs whatever differs from what was written; tries the
    /// health check node ports that could not be opened again.
    pub(super) async fn resync(&mut self, maps: &mut DatapathMaps) {
        self.health_check_ports.open_unbound().await;
        if !self.adopt(maps) {
            return;
        }
        self.flush_udp_conntrack(maps);
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

    /// Takes over what the pinned maps hold unless done already, so that the first apply is
    /// a minimal diff against them; returns whether the maps are adopted.
    fn adopt(&mut self, maps: &mut DatapathMaps) -> bool {
        if self.adopted {
            return true;
        }
        let started = Instant::now();
        match Reconciler::adopt(&self.capacities, maps) {
            Ok((reconciler, repairs)) => {
                for repair in &repairs {
                    warn!("adopting the pinned maps: {repair}");
                }
                info!(
                    "adopted {} services, {} backends from the pinned maps in {:.1} ms",
                    reconciler.programmed_services(),
                    reconciler.programmed_backends(),
                    started.elapsed().as_secs_f64() * 1000.0
                );
                self.reconciler = reconciler.with_selection_of(&self.reconciler);
                self.adopted = true;
            }
            Err(e) => error!("adopting the pinned maps failed, retrying: {}", Chain(&e)),
        }
        self.adopted
    }
}
