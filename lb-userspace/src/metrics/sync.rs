//! Metrics of the programming loop: how long map programming takes, how far it lags behind
//! the source, its failures, and what is programmed.
//!
//! The ones kube-proxy also has are served under its names too (`kubeproxy_...`, from its
//! `pkg/proxy/metrics`, with its help texts, buckets and units), so dashboards and alerts
//! written for kube-proxy (the kubernetes-mixin's) keep working after the swap.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reconciler::{CountedService, ReconcileSummary, Reconciler};

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

/// kube-proxy's `network_programming_duration_seconds` buckets: 0, 0.25 s, 0.5 s, then every
/// second to 59 s, every 5 s to 115 s and every 30 s to 5 min (its `MergeBuckets` starts with
/// a 0 bucket).
fn network_programming_buckets() -> impl Iterator<Item = f64> {
    std::iter::once(0.0)
        .chain(linear_buckets(0.25, 0.25, 2))
        .chain(linear_buckets(1.0, 1.0, 59))
        .chain(linear_buckets(60.0, 5.0, 12))
        .chain(linear_buckets(120.0, 30.0, 7))
}

/// `time` as Unix seconds (0 before the epoch).
fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Recorder for every map programming run (cheap to clone; all clones record into the same
/// metrics).
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    duration: Histogram,
    last_timestamp: Gauge<f64, AtomicU64>,
    failures: Counter,
    programming_latency: Histogram,
    /// The same as `programming_latency`, in kube-proxy's buckets.
    kube_proxy_programming_latency: Histogram,
    last_queued_timestamp: Gauge<f64, AtomicU64>,
    resync_repairs: Counter,
    services: Gauge,
    backends: Gauge,
    invalid_objects: Gauge,
    health_check_ports: Gauge,
    health_check_ports_unbound: Gauge,
    counted: CountedServices,
}

/// Registers each `(name, help, metric)`; a metric's clone shares its values.
macro_rules! register {
    ($registry:expr, [$(($name:expr, $help:expr, $metric:expr)),* $(,)?]) => {
        $($registry.register($name, $help, $metric.clone());)*
    };
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
            kube_proxy_programming_latency: Histogram::new(network_programming_buckets()),
            last_queued_timestamp: Gauge::default(),
            resync_repairs: Counter::default(),
            services: Gauge::default(),
            backends: Gauge::default(),
            invalid_objects: Gauge::default(),
            health_check_ports: Gauge::default(),
            health_check_ports_unbound: Gauge::default(),
            counted: CountedServices::default(),
        };
        let help_programming = "Time from the source publishing a change (API event or \
                                manifest file change detected) until the maps hold it";
        register!(
            registry,
            [
                (
                    "lbagent_sync_proxy_rules_duration_seconds",
                    "Time one reconcile took to write a desired state into the maps",
                    metrics.duration
                ),
                (
                    "lbagent_sync_proxy_rules_last_timestamp_seconds",
                    "Unix time of the last desired state completely programmed",
                    metrics.last_timestamp
                ),
                (
                    "lbagent_sync_proxy_rules_failures",
                    "Reconciles that failed on a map write (retried)",
                    metrics.failures
                ),
                (
                    "lbagent_network_programming_duration_seconds",
                    help_programming,
                    metrics.programming_latency
                ),
                (
                    "lbagent_resync_repairs",
                    "Map entries the periodic resync found drifted and repaired",
                    metrics.resync_repairs
                ),
                (
                    "lbagent_programmed_services",
                    "Service frontends with an entry in the maps",
                    metrics.services
                ),
                (
                    "lbagent_programmed_backends",
                    "Backends in the maps",
                    metrics.backends
                ),
                (
                    "lbagent_invalid_objects",
                    "Objects the source skips: invalid or nameless Services and EndpointSlices (and the Node), duplicates and manifest files that do not parse",
                    metrics.invalid_objects
                ),
                (
                    "lbagent_health_check_node_ports",
                    "healthCheckNodePorts served",
                    metrics.health_check_ports
                ),
                (
                    "lbagent_health_check_node_ports_unbound",
                    "healthCheckNodePorts that could not be opened (another process holds \
                     them; tried again at every sync)",
                    metrics.health_check_ports_unbound
                ),
            ]
        );
        metrics.register_kube_proxy_names(registry);
        metrics
    }

    /// kube-proxy's names for what is measured here.
    fn register_kube_proxy_names(&self, registry: &mut Registry) {
        // A metric's clones share its values: each is recorded once, served twice.
        register!(
            registry,
            [
                (
                    "kubeproxy_sync_proxy_rules_duration_seconds",
                    "SyncProxyRules latency in seconds",
                    self.duration
                ),
                (
                    "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                    "The last time proxy rules were successfully synced",
                    self.last_timestamp
                ),
                (
                    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                    "The last time a sync of proxy rules was queued",
                    self.last_queued_timestamp
                ),
                (
                    "kubeproxy_network_programming_duration_seconds",
                    "In Cluster Network Programming Latency in seconds",
                    self.kube_proxy_programming_latency
                ),
            ]
        );
    }

    /// A new desired state arrived at `now` and waits to be programmed.
    pub fn queued(&self, now: SystemTime) {
        self.last_queued_timestamp.set(unix_seconds(now));
    }

    /// The group ids as last programmed.
    pub fn counted_services(&self) -> CountedServices {
        self.counted.clone()
    }

    /// A reconcile completed in `took`; `lag` is the time since its change arrived. The
    /// group ids' labels are read again only when `summary` says they changed.
    pub fn applied(
        &self,
        reconciler: &Reconciler,
        summary: &ReconcileSummary,
        took: Duration,
        lag: Duration,
        now: SystemTime,
    ) {
        self.duration.observe(took.as_secs_f64());
        self.programming_latency.observe(lag.as_secs_f64());
        self.kube_proxy_programming_latency
            .observe(lag.as_secs_f64());
        self.last_timestamp.set(unix_seconds(now));
        self.record_programmed(reconciler, summary.labels_changed);
    }

    /// A reconcile failed after `took` (what it wrote before failing is programmed).
    pub fn failed(&self, reconciler: &Reconciler, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        self.failures.inc();
        self.record_programmed(reconciler, true);
    }

    /// A resync repaired `count` entries.
    pub fn repaired(&self, count: usize) {
        self.resync_repairs.inc_by(count as u64);
    }

    /// The source currently skips `count` invalid objects.
    pub fn invalid_objects(&self, count: usize) {
        self.invalid_objects.set(count as i64);
    }

    /// `serving` health check node ports are open, `unbound` could not be opened.
    pub fn health_check_ports(&self, serving: usize, unbound: usize) {
        self.health_check_ports.set(serving as i64);
        self.health_check_ports_unbound.set(unbound as i64);
    }

    fn record_programmed(&self, reconciler: &Reconciler, labels_changed: bool) {
        self.services.set(reconciler.programmed_services() as i64);
        self.backends.set(reconciler.programmed_backends() as i64);
        if labels_changed {
            self.counted.set(reconciler.counted_services());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use lb_common::capacity::Capacities;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::SyncMetrics;
    use crate::reconciler::{ReconcileSummary, Reconciler};

    /// The value of the sample line starting with `series` (name and labels).
    fn sample(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line[series.len()..].trim().parse().unwrap()
    }

    #[test]
    fn kube_proxys_names_serve_the_same_measurements_in_its_buckets() {
        let mut registry = Registry::default();
        let metrics = SyncMetrics::register(&mut registry);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        metrics.queued(at);
        let reconciler = Reconciler::new(&Capacities::default());
        let (took, lag) = (Duration::from_millis(3), Duration::from_millis(700));
        let summary = ReconcileSummary::default();
        metrics.applied(
            &reconciler,
            &summary,
            took,
            lag,
            at + Duration::from_secs(1),
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();

        for prefix in ["lbagent", "kubeproxy"] {
            let name = format!("{prefix}_sync_proxy_rules_duration_seconds");
            assert_eq!(sample(&text, &format!("{name}_count")), 1.0);
            assert_eq!(sample(&text, &format!("{name}_sum")), 0.003);
            // kube-proxy's buckets: 1 ms doubling, 15 of them.
            assert_eq!(
                sample(&text, &format!("{name}_bucket{{le=\"0.002\"}}")),
                0.0
            );
            assert_eq!(
                sample(&text, &format!("{name}_bucket{{le=\"0.004\"}}")),
                1.0
            );
            assert_eq!(
                sample(&text, &format!("{name}_bucket{{le=\"16.384\"}}")),
                1.0
            );
            let last = format!("{prefix}_sync_proxy_rules_last_timestamp_seconds");
            assert_eq!(sample(&text, &last), 1_700_000_001.0);
        }
        assert_eq!(
            sample(
                &text,
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
            ),
            1_700_000_000.0
        );

        let name = "kubeproxy_network_programming_duration_seconds";
        assert_eq!(sample(&text, &format!("{name}_count")), 1.0);
        assert_eq!(sample(&text, &format!("{name}_sum")), 0.7);
        let bucket = |le: &str| sample(&text, &format!("{name}_bucket{{le=\"{le}\"}}"));
        assert_eq!(bucket("0.0"), 0.0);
        assert_eq!(bucket("0.5"), 0.0);
        assert_eq!(bucket("1.0"), 1.0);
        assert_eq!(bucket("59.0"), 1.0);
        assert_eq!(bucket("115.0"), 1.0);
        assert_eq!(bucket("300.0"), 1.0);
        let buckets = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket")))
            .count();
        // 0, 0.25, 0.5, 1..=59, 60..=115, 120..=300 and +Inf.
        assert_eq!(buckets, 1 + 2 + 59 + 12 + 7 + 1);
    }
}
