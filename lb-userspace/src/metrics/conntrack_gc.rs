//! Metrics of the conntrack garbage collector (`agent::conntrack_gc`), and the live entry
//! count its last walk kept, which `lbagent_conntrack_entries` reports so a scrape never reads
//! the conntrack map.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Recorder for every walk of the collector (cheap to clone).
#[derive(Clone, Debug)]
pub struct ConntrackGcMetrics {
    collected: Counter,
    duration: Histogram,
    last_walk: LastWalk,
}

/// The entries the last finished walk kept, shared with the scrape; `None` before the first.
#[derive(Clone, Debug, Default)]
pub(super) struct LastWalk(Arc<Mutex<Option<Kept>>>);

/// What one walk left in the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Kept {
    /// Entries read and not deleted (forward and reply entries of live flows).
    pub entries: usize,
    /// When the walk started: every entry made before then is counted (unless deleted).
    pub at: SystemTime,
}

impl LastWalk {
    /// The last walk's result, if any walk has finished.
    pub(super) fn get(&self) -> Option<Kept> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, kept: Kept) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(kept);
    }
}

impl ConntrackGcMetrics {
    /// New metrics, registered in `registry` (the kept count is encoded by the map collector).
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            collected: Counter::default(),
            // 1 ms to ~16 s: a walk of a full default-sized table takes a fraction of that.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            last_walk: LastWalk::default(),
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

    /// Records one walk, which just ended after `duration`, that read `walked` entries and
    /// deleted `collected` of them.
    pub fn record(&self, walked: usize, collected: u32, duration: Duration) {
        self.collected.inc_by(u64::from(collected));
        self.duration.observe(duration.as_secs_f64());
        let now = SystemTime::now();
        self.last_walk.set(Kept {
            entries: walked.saturating_sub(collected as usize),
            at: now.checked_sub(duration).unwrap_or(now),
        });
    }

    /// The last walk's result, for the scrape.
    pub(super) fn last_walk(&self) -> LastWalk {
        self.last_walk.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_publishes_the_entries_it_kept() {
        let metrics = ConntrackGcMetrics::register(&mut Registry::default());
        let last_walk = metrics.last_walk();
        assert_eq!(last_walk.get(), None, "nothing before the first walk");
        let before = SystemTime::now();
        metrics.record(10, 4, Duration::from_secs(60));
        let kept = last_walk.get().unwrap();
        assert_eq!(kept.entries, 6);
        assert!(
            kept.at <= before - Duration::from_secs(59),
            "when the walk started"
        );
        metrics.record(6, 6, Duration::from_millis(1));
        assert_eq!(last_walk.get().unwrap().entries, 0);
    }
}
