//! The map sizes an operator chooses at load time: one [`Capacity`] per sized map (each is an
//! `lb-agent run` flag), gathered in [`Capacities`].

use core::fmt;

/// The largest size accepted for any map, in entries: 2^24, the limit Cilium puts on its
/// tables. The kernel refuses hash maps only near 2^28 entries, but long before that the maps
/// cost gigabytes (conntrack: about 160 B per entry), and the per-service counters, one per-CPU
/// entry per group id, cost `services x CPUs x 40 B`. It also keeps `services + 1` (the
/// counters' length, indexed by group id) inside `u32`.
pub const MAX_ENTRIES: u32 = 1 << 24;

/// A map size chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    /// Services map entries: one per frontend and lookup scope, so two per Service port. Also
    /// the highest group id.
    Services,
    /// Distinct backends; also the highest backend id.
    Backends,
    /// Backend slots over all services.
    BackendSlots,
    /// Conntrack entries (two per flow).
    Conntrack,
    /// Session affinity entries (one per client and service).
    Affinity,
}

impl Capacity {
    /// Every capacity.
    pub const ALL: [Capacity; 5] = [
        Capacity::Services,
        Capacity::Backends,
        Capacity::BackendSlots,
        Capacity::Conntrack,
        Capacity::Affinity,
    ];

    /// The size used unless the operator chooses another.
    pub const fn default_entries(self) -> u32 {
        match self {
            Capacity::Services => 65_536,
            Capacity::Backends => 65_536,
            Capacity::BackendSlots => 262_144,
            Capacity::Conntrack => 262_144,
            Capacity::Affinity => 65_536,
        }
    }

    /// The `lb-agent run` flag that sets it (without the leading `--`).
    pub const fn flag(self) -> &'static str {
        match self {
            Capacity::Services => "max-service-entries",
            Capacity::Backends => "max-backends",
            Capacity::BackendSlots => "max-backend-slots",
            Capacity::Conntrack => "conntrack-size",
            Capacity::Affinity => "affinity-size",
        }
    }

    /// What the flag's help says the map holds.
    pub const fn help(self) -> &'static str {
        match self {
            Capacity::Services => {
                "Services map: one entry per Service port and lookup scope, so two per Service \
                 port (ClusterIP, each node port, external and load-balancer IP count as ports)"
            }
            Capacity::Backends => {
                "Backends map: distinct endpoint address:port pairs over all Services"
            }
            Capacity::BackendSlots => {
                "Backend slots map: the sum of every Service port's endpoint count (twice for a \
                 port whose traffic policy makes its external and internal endpoints differ)"
            }
            Capacity::Conntrack => {
                "Conntrack map (LRU): two entries per tracked flow; when it is full the flows \
                 idle longest are evicted"
            }
            Capacity::Affinity => {
                "Session affinity map (LRU): one entry per client and ClientIP-affinity Service"
            }
        }
    }

    /// The name errors use (the [`Capacities`] field's).
    pub const fn name(self) -> &'static str {
        match self {
            Capacity::Services => "services",
            Capacity::Backends => "backends",
            Capacity::BackendSlots => "backend_slots",
            Capacity::Conntrack => "conntrack",
            Capacity::Affinity => "affinity",
        }
    }
}

/// Map sizes chosen at load time, in entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// See [`Capacity::Services`].
    pub services: u32,
    /// See [`Capacity::Backends`].
    pub backends: u32,
    /// See [`Capacity::BackendSlots`].
    pub backend_slots: u32,
    /// See [`Capacity::Conntrack`].
    pub conntrack: u32,
    /// See [`Capacity::Affinity`].
    pub affinity: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        let mut capacities = Capacities {
            services: 0,
            backends: 0,
            backend_slots: 0,
            conntrack: 0,
            affinity: 0,
        };
        for capacity in Capacity::ALL {
            *capacities.get_mut(capacity) = capacity.default_entries();
        }
        capacities
    }
}

impl Capacities {
    /// The size chosen for `capacity`.
    pub const fn get(&self, capacity: Capacity) -> u32 {
        match capacity {
            Capacity::Services => self.services,
            Capacity::Backends => self.backends,
            Capacity::BackendSlots => self.backend_slots,
            Capacity::Conntrack => self.conntrack,
            Capacity::Affinity => self.affinity,
        }
    }

    /// The size chosen for `capacity`, to set.
    pub fn get_mut(&mut self, capacity: Capacity) -> &mut u32 {
        match capacity {
            Capacity::Services => &mut self.services,
            Capacity::Backends => &mut self.backends,
            Capacity::BackendSlots => &mut self.backend_slots,
            Capacity::Conntrack => &mut self.conntrack,
            Capacity::Affinity => &mut self.affinity,
        }
    }

    /// Checks that every size is between 1 and [`MAX_ENTRIES`].
    pub fn check(&self) -> Result<(), CapacityRangeError> {
        for capacity in Capacity::ALL {
            check_entries(capacity.name(), self.get(capacity))?;
        }
        Ok(())
    }
}

/// A map size outside `1..=MAX_ENTRIES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapacityRangeError {
    /// Which capacity ([`Capacity::name`]).
    pub map: &'static str,
    pub entries: u32,
}

impl fmt::Display for CapacityRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} capacity {} is out of range: it must be between 1 and {MAX_ENTRIES} entries",
            self.map, self.entries
        )
    }
}

impl core::error::Error for CapacityRangeError {}

/// Checks one map size against `1..=MAX_ENTRIES`.
pub fn check_entries(map: &'static str, entries: u32) -> Result<u32, CapacityRangeError> {
    match entries {
        1..=MAX_ENTRIES => Ok(entries),
        _ => Err(CapacityRangeError { map, entries }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_each_capacitys_and_within_range() {
        let defaults = Capacities::default();
        for capacity in Capacity::ALL {
            assert_eq!(defaults.get(capacity), capacity.default_entries());
        }
        assert_eq!(defaults.check(), Ok(()));
    }

    #[test]
    fn zero_and_oversized_maps_are_refused_by_name() {
        let zero = Capacities {
            backends: 0,
            ..Capacities::default()
        };
        let error = zero.check().unwrap_err();
        assert_eq!(error.map, "backends");
        let message = std::format!("{error}");
        assert!(message.contains("between 1 and 16777216"), "{message}");
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
        assert_eq!(check_entries("conntrack", 1), Ok(1));
    }
}
