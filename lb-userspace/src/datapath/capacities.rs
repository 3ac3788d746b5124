//! How many entries each map holds, chosen when the data path is loaded.

use lb_common::capacity;

/// The largest size accepted for any map, in entries: 2^24, the limit Cilium puts on its
/// tables. The kernel refuses hash maps only near 2^28 entries, but long before that the maps
/// cost gigabytes (conntrack: about 160 B per entry), and the per-service counters, one per-CPU
/// entry per service id, cost `services x CPUs x 40 B`. It also keeps `services + 1` (the
/// counters' length, indexed by service id) inside `u32`.
pub const MAX_ENTRIES: u32 = 1 << 24;

/// Map sizes chosen at load time, in entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// Services map entries: one per frontend and lookup scope, so two per Service port. Also
    /// the highest service id.
    pub services: u32,
    /// Distinct backends; also the highest backend id.
    pub backends: u32,
    /// Backend slots over all services.
    pub backend_slots: u32,
    /// Conntrack entries (two per flow).
    pub conntrack: u32,
    /// Session affinity entries (one per client and service).
    pub affinity: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            services: capacity::SERVICES,
            backends: capacity::BACKENDS,
            backend_slots: capacity::BACKEND_SLOTS,
            conntrack: capacity::CONNTRACK,
            affinity: capacity::AFFINITY,
        }
    }
}

/// A map size outside `1..=MAX_ENTRIES`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{map} capacity {entries} is out of range: it must be between 1 and {MAX_ENTRIES} entries")]
pub struct CapacityRangeError {
    /// Which capacity (as [`Capacities`] names it).
    pub map: &'static str,
    pub entries: u32,
}

impl Capacities {
    /// Checks that every size is between 1 and [`MAX_ENTRIES`].
    pub fn check(&self) -> Result<(), CapacityRangeError> {
        let sizes = [
            ("services", self.services),
            ("backends", self.backends),
            ("backend_slots", self.backend_slots),
            ("conntrack", self.conntrack),
            ("affinity", self.affinity),
        ];
        for (map, entries) in sizes {
            check_entries(map, entries)?;
        }
        Ok(())
    }

    /// Length of the per-service counters array: service ids run `1..=services`, index 0 is
    /// never used. [`Capacities::check`] keeps it inside `u32`.
    pub fn service_stats_len(&self) -> u32 {
        self.services.saturating_add(1)
    }
}

/// Checks one map size against `1..=MAX_ENTRIES`.
fn check_entries(map: &'static str, entries: u32) -> Result<u32, CapacityRangeError> {
    match entries {
        1..=MAX_ENTRIES => Ok(entries),
        _ => Err(CapacityRangeError { map, entries }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_lb_commons_and_within_range() {
        let defaults = Capacities::default();
        assert_eq!(defaults.affinity, capacity::AFFINITY);
        assert_eq!(defaults.conntrack, capacity::CONNTRACK);
        assert_eq!(defaults.check(), Ok(()));
        assert_eq!(defaults.service_stats_len(), capacity::SERVICES + 1);
    }

    #[test]
    fn zero_and_oversized_maps_are_refused_by_name() {
        let zero = Capacities {
            backends: 0,
            ..Capacities::default()
        };
        let error = zero.check().unwrap_err();
        assert_eq!(error.map, "backends");
        assert!(
            error.to_string().contains("between 1 and 16777216"),
            "{error}"
        );
        let huge = Capacities {
            affinity: MAX_ENTRIES + 1,
            ..Capacities::default()
        };
        assert_eq!(huge.check().unwrap_err().map, "affinity");
        let largest = Capacities {
            services: MAX_ENTRIES,
            ..Capacities::default()
        };
        assert_eq!(largest.check(), Ok(()));
        assert_eq!(largest.service_stats_len(), MAX_ENTRIES + 1);
        assert_eq!(check_entries("conntrack", 1), Ok(1));
    }
}
