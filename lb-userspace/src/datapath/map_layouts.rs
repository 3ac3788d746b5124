//! The layout each map of this build needs, and the check that decides whether a map pinned
//! by an earlier agent can be reused by this one.

use std::fmt;
use std::fs;
use std::io;
use std::mem::size_of;
use std::path::Path;

use aya::maps::{MapInfo, MapType};
use lb_common::{
    map_names, AffinityKey, AffinityValue, Backend, BackendSlotKey, Counter, CtKey, CtValue,
    NodeConfig, ServiceKey, ServiceStats, ServiceValue,
};
use tracing::{debug, warn};

use super::Capacities;

/// What the kernel must agree on for a pinned map to be read as this build's map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct MapLayout {
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl fmt::Display for MapLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

impl MapLayout {
    fn of<K, V>(map_type: MapType, max_entries: u32) -> Self {
        Self {
            map_type,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries,
        }
    }

    /// Whether `wanted` is this layout with another number of entries (a changed capacity).
    fn resized_to(&self, wanted: &MapLayout) -> bool {
        MapLayout {
            max_entries: wanted.max_entries,
            ..*self
        } == *wanted
    }

    fn from_info(info: &MapInfo) -> Option<Self> {
        Some(Self {
            map_type: info.map_type().ok()?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        })
    }
}

/// Every map of the object with the layout it gets when loaded with `capacities`.
pub(super) fn expected(capacities: &Capacities) -> [(&'static str, MapLayout); 8] {
    [
        (
            map_names::SERVICES,
            MapLayout::of::<ServiceKey, ServiceValue>(MapType::Hash, capacities.services),
        ),
        (
            map_names::BACKEND_SLOTS,
            MapLayout::of::<BackendSlotKey, u32>(MapType::Hash, capacities.backend_slots),
        ),
        (
            map_names::BACKENDS,
            MapLayout::of::<u32, Backend>(MapType::Hash, capacities.backends),
        ),
        (
            map_names::CONNTRACK,
            MapLayout::of::<CtKey, CtValue>(MapType::LruHash, capacities.conntrack),
        ),
        (
            map_names::AFFINITY,
            MapLayout::of::<AffinityKey, AffinityValue>(MapType::LruHash, capacities.affinity),
        ),
        (
            map_names::STATS,
            MapLayout::of::<u32, u64>(MapType::PerCpuArray, Counter::COUNT),
        ),
        (
            map_names::SERVICE_STATS,
            MapLayout::of::<u32, ServiceStats>(
                MapType::PerCpuArray,
                capacities.service_stats_len(),
            ),
        ),
        (
            map_names::CONFIG,
            MapLayout::of::<u32, NodeConfig>(MapType::Array, 1),
        ),
    ]
}

/// Removes the pin at `path` unless it holds a map of layout `wanted`, so that loading creates
/// a fresh map there. Logs why a pin is replaced and what its entries were.
pub(super) fn drop_incompatible_pin(name: &str, path: &Path, wanted: &MapLayout) {
    let found = match MapInfo::from_pin(path) {
        Ok(info) => MapLayout::from_info(&info),
        Err(e) => {
            if matches!(fs::symlink_metadata(path), Err(ref e) if e.kind() == io::ErrorKind::NotFound)
            {
                return;
            }
            debug!("reading pinned map {}: {e}", path.display());
            None
        }
    };
    if found.as_ref() == Some(wanted) {
        return;
    }
    let lost = match name {
        map_names::CONNTRACK => "; established connections lose their conntrack entries",
        map_names::AFFINITY => "; clients lose their session affinity",
        map_names::STATS | map_names::SERVICE_STATS => "; the counters restart from zero",
        _ => "; the agent writes its entries again",
    };
    match found {
        Some(found) if found.resized_to(wanted) => warn!(
            "pinned map {name} at {} is sized for {} entries but {} are configured: replacing it \
             with a new map of the configured size{lost}",
            path.display(),
            found.max_entries,
            wanted.max_entries
        ),
        found => {
            let found = found.map_or("not a readable BPF map".to_string(), |f| f.to_string());
            warn!(
                "pinned map {name} at {} has a different layout ({found}) than this version \
                 needs ({wanted}): replacing it with a new map{lost}",
                path.display()
            )
        }
    }
    if let Err(e) = fs::remove_file(path) {
        warn!("removing the pin {} failed: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_of(capacities: &Capacities, name: &str) -> MapLayout {
        let found = expected(capacities).into_iter().find(|(n, _)| *n == name);
        found.map(|(_, layout)| layout).unwrap()
    }

    #[test]
    fn every_capacity_sizes_its_map_and_a_resize_is_told_apart() {
        let defaults = Capacities::default();
        let small = Capacities {
            services: 8,
            backends: 4,
            backend_slots: 16,
            conntrack: 1024,
            affinity: 64,
        };
        for (name, entries) in [
            (map_names::SERVICES, 8),
            (map_names::SERVICE_STATS, 9),
            (map_names::BACKENDS, 4),
            (map_names::BACKEND_SLOTS, 16),
            (map_names::CONNTRACK, 1024),
            (map_names::AFFINITY, 64),
        ] {
            let layout = layout_of(&small, name);
            assert_eq!(layout.max_entries, entries, "{name}");
            assert!(layout.resized_to(&layout_of(&defaults, name)), "{name}");
        }
        let services = layout_of(&defaults, map_names::SERVICES);
        let conntrack = layout_of(&defaults, map_names::CONNTRACK);
        assert!(!services.resized_to(&conntrack));
    }
}
