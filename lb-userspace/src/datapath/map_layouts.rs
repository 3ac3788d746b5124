//! The layout each map of this build needs, and the check that decides whether a map pinned
//! by an earlier agent can be reused by this one.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use aya::maps::{MapInfo, MapType};
use lb_common::maps::{self as registry, MapKind, MapSpec};
use lb_common::Capacities;
use tracing::{debug, warn};

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
    /// The layout of a registry entry's map with `capacities`.
    fn of(spec: &MapSpec, capacities: &Capacities) -> Self {
        Self {
            map_type: map_type(spec.kind),
            key_size: spec.key_size,
            value_size: spec.value_size,
            max_entries: spec.entries.with(capacities),
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

/// aya's name for a registry entry's kind.
fn map_type(kind: MapKind) -> MapType {
    match kind {
        MapKind::HashMap => MapType::Hash,
        MapKind::Array => MapType::Array,
        MapKind::PerCpuArray => MapType::PerCpuArray,
        MapKind::LruHashMap => MapType::LruHash,
        MapKind::LpmTrie => MapType::LpmTrie,
        MapKind::ProgramArray => MapType::ProgramArray,
    }
}

/// Every map of the object with the layout it gets when loaded with `capacities`.
pub(super) fn expected(
    capacities: &Capacities,
) -> impl Iterator<Item = (&'static str, MapLayout)> + '_ {
    registry::ALL
        .iter()
        .map(move |spec| (spec.name, MapLayout::of(spec, capacities)))
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
    let lost = if name == registry::CONNTRACK.name {
        "; established connections lose their conntrack entries"
    } else if name == registry::AFFINITY.name {
        "; clients lose their session affinity"
    } else if name == registry::SOCK_REVNAT.name {
        "; UDP sockets translated before see their backend's address as the peer"
    } else if [registry::STATS.name, registry::SERVICE_STATS.name].contains(&name) {
        "; the counters restart from zero"
    } else {
        "; the agent writes its entries again"
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
        let found = expected(capacities).find(|(n, _)| *n == name);
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
            (registry::SERVICES.name, 8),
            (registry::SERVICE_STATS.name, 9),
            (registry::BACKENDS.name, 4),
            (registry::BACKEND_SLOTS.name, 16),
            (registry::CONNTRACK.name, 1024),
            (registry::AFFINITY.name, 64),
        ] {
            let layout = layout_of(&small, name);
            assert_eq!(layout.max_entries, entries, "{name}");
            assert!(layout.resized_to(&layout_of(&defaults, name)), "{name}");
        }
        let services = layout_of(&defaults, registry::SERVICES.name);
        let conntrack = layout_of(&defaults, registry::CONNTRACK.name);
        assert!(!services.resized_to(&conntrack));
    }
}
