//! Metrics of the programming loop: how long map programming takes, how far it lags behind
//! the source, its failures, and what is programmed.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reconciler::{CountedService, Reconciler};

/// The group ids the data path counts under, as last programmed; shared with the scraper.
#[derive(Clone, Debug, Default)]
pub struct CountedServices(Arc<RwLock<Vec<CountedService>>>);

impl CountedServices {
    /// A copy of the current list.
    pub fn get(&self) -> Vec<CountedService> {
        self.0.read().map(|l| l.clone()).unwrap_or_default()
    }

    fn set(&self, services: Vec<CountedService>) {
        if let Ok(mut list) = self.0.write() {
            *list = services;
        }
    }
}

/// Recorder for every map programming run (cheap to clone; all clones record into the same
/// metrics).
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    duration: Histogram,
    last_timestamp: Gauge<f64, AtomicU64>,
    failures: Counter,
    programming_latency: Histogram,
    resync_repairs: Counter,
    services: Gauge,
    backends: Gauge,
    invalid_objects: Gauge,
    counted: CountedServices,
}

impl SyncMetrics {
    /// New metrics, registered in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        // kube-proxy's buckets: 1 ms to ~16 s.
        let buckets = || exponential_buckets(0.001, 2.0, 15);
        let metrics = Self {
            duration: Histogram::new(buckets()),
            last_timestamp: Gauge::default(),
            failures: Counter::default(),
            programming_latency: Histogram::new(buckets()),
            resync_repairs: Counter::default(),
            services: Gauge::default(),
            backends: Gauge::default(),
            invalid_objects: Gauge::default(),
            counted: CountedServices::default(),
        };
        registry.register(
            "lbagent_sync_proxy_rules_duration_seconds",
            "Time one reconcile took to write a desired state into the maps",
            metrics.duration.clone(),
        );
        registry.register(
            "lbagent_sync_proxy_rules_last_timestamp_seconds",
            "Unix time of the last desired state completely programmed",
            metrics.last_timestamp.clone(),
        );
        registry.register(
            "lbagent_sync_proxy_rules_failures",
            "Reconciles that failed on a map write (retried)",
            metrics.failures.clone(),
        );
        registry.register(
            "lbagent_network_programming_duration_seconds",
            "Time from the source publishing a change (API event or manifest file change \
             detected) until the maps hold it",
            metrics.programming_latency.clone(),
        );
        registry.register(
            "lbagent_resync_repairs",
            "Map entries the periodic resync found drifted and repaired",
            metrics.resync_repairs.clone(),
        );
        registry.register(
            "lbagent_programmed_services",
            "Service frontends with an entry in the maps",
            metrics.services.clone(),
        );
        registry.register(
            "lbagent_programmed_backends",
            "Backends in the maps",
            metrics.backends.clone(),
        );
        registry.register(
            "lbagent_invalid_objects",
            "Services and EndpointSlices (and the Node) skipped as invalid by the source",
            metrics.invalid_objects.clone(),
        );
        metrics
    }

    /// The group ids as last programmed.
    pub fn counted_services(&self) -> CountedServices {
        self.counted.clone()
    }

    /// A reconcile completed in `took`; `lag` is the time since its change arrived.
    pub fn applied(&self, reconciler: &Reconciler, took: Duration, lag: Duration, now: SystemTime) {
        self.duration.observe(took.as_secs_f64());
        self.programming_latency.observe(lag.as_secs_f64());
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_timestamp.set(unix.as_secs_f64());
        self.record_programmed(reconciler);
    }

    /// A reconcile failed after `took` (what it wrote before failing is programmed).
    pub fn failed(&self, reconciler: &Reconciler, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        self.failures.inc();
        self.record_programmed(reconciler);
    }

    /// A resync repaired `count` entries.
    pub fn repaired(&self, count: usize) {
        self.resync_repairs.inc_by(count as u64);
    }

    /// The source currently skips `count` invalid objects.
    pub fn invalid_objects(&self, count: usize) {
        self.invalid_objects.set(count as i64);
    }

    fn record_programmed(&self, reconciler: &Reconciler) {
        self.services.set(reconciler.programmed_services() as i64);
        self.backends.set(reconciler.programmed_backends() as i64);
        self.counted.set(reconciler.counted_services());
    }
}
