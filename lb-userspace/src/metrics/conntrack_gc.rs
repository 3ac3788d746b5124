//! Metrics of the conntrack garbage collector (`agent::conntrack_gc`).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Recorder for every walk of the collector (cheap to clone).
#[derive(Clone, Debug)]
pub struct ConntrackGcMetrics {
    collected: Counter,
    duration: Histogram,
}

impl ConntrackGcMetrics {
    /// New metrics, registered in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            collected: Counter::default(),
            // 1 ms to ~16 s: a walk of a full default-sized table takes a fraction of that.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        };
        registry.register(
            "lbagent_conntrack_gc_collected",
            "Conntrack entries the garbage collector deleted as idle past their state's timeout",
            metrics.collected.clone(),
        );
        registry.register(
            "lbagent_conntrack_gc_duration_seconds",
            "Time one garbage collector walk of the conntrack map took",
            metrics.duration.clone(),
        );
        metrics
    }

    /// Records one walk.
    pub fn record(&self, collected: u32, duration: Duration) {
        self.collected.inc_by(u64::from(collected));
        self.duration.observe(duration.as_secs_f64());
    }
}
