//! Typed access to the data path's maps, from a loaded object or from pins.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::{Ebpf, Pod};
use lb_common::{
    map_names, Backend, BackendSlotKey, Counter, CtKey, CtValue, NodeConfig, ServiceKey,
    ServiceStats, ServiceValue, IPPROTO_UDP,
};

use super::DatapathError;
use crate::reconciler::{MapReader, MapWriteError, MapWriter};

/// The data path's maps. Each accessor checks the map's key and value sizes against
/// lb-common's types.
pub struct Maps {
    services: Map,
    slots: Map,
    backends: Map,
    conntrack: Map,
    stats: Map,
    service_stats: Map,
    config: Map,
}

impl Maps {
    /// Takes the maps out of a loaded object, checking their layouts.
    pub(super) fn take_from(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let mut take = |name| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        Self {
            services: take(map_names::SERVICES)?,
            slots: take(map_names::BACKEND_SLOTS)?,
            backends: take(map_names::BACKENDS)?,
            conntrack: take(map_names::CONNTRACK)?,
            stats: take(map_names::STATS)?,
            service_stats: take(map_names::SERVICE_STATS)?,
            config: take(map_names::CONFIG)?,
        }
        .checked()
    }

    /// Opens the maps pinned by [`super::Datapath::pin_maps`] in `dir`.
    pub fn from_pins(dir: &Path) -> Result<Self, DatapathError> {
        if !dir.join(map_names::SERVICES).exists() {
            return Err(DatapathError::NotPinned(dir.to_path_buf()));
        }
        let open = |name: &str| {
            let path = dir.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| DatapathError::OpenPin { path, source })
        };
        Self {
            services: open(map_names::SERVICES)?,
            slots: open(map_names::BACKEND_SLOTS)?,
            backends: open(map_names::BACKENDS)?,
            conntrack: open(map_names::CONNTRACK)?,
            stats: open(map_names::STATS)?,
            service_stats: open(map_names::SERVICE_STATS)?,
            config: open(map_names::CONFIG)?,
        }
        .checked()
    }

    fn checked(self) -> Result<Self, DatapathError> {
        let layout = |map| move |source| DatapathError::MapLayout { map, source };
        hash::<ServiceKey, ServiceValue>(&self.services).map_err(layout(map_names::SERVICES))?;
        hash::<BackendSlotKey, u32>(&self.slots).map_err(layout(map_names::BACKEND_SLOTS))?;
        hash::<u32, Backend>(&self.backends).map_err(layout(map_names::BACKENDS))?;
        hash::<CtKey, CtValue>(&self.conntrack).map_err(layout(map_names::CONNTRACK))?;
        PerCpuArray::<_, u64>::try_from(&self.stats).map_err(layout(map_names::STATS))?;
        PerCpuArray::<_, ServiceStats>::try_from(&self.service_stats)
            .map_err(layout(map_names::SERVICE_STATS))?;
        Array::<_, NodeConfig>::try_from(&self.config).map_err(layout(map_names::CONFIG))?;
        Ok(self)
    }

    /// Every map with its name.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&'static str, &Map)> {
        [
            (map_names::SERVICES, &self.services),
            (map_names::BACKEND_SLOTS, &self.slots),
            (map_names::BACKENDS, &self.backends),
            (map_names::CONNTRACK, &self.conntrack),
            (map_names::STATS, &self.stats),
            (map_names::SERVICE_STATS, &self.service_stats),
            (map_names::CONFIG, &self.config),
        ]
        .into_iter()
    }

    pub(super) fn pin(&self, dir: &Path) -> Result<(), DatapathError> {
        for (map, data) in self.iter() {
            let path = dir.join(map);
            data.pin(&path)
                .map_err(|source| DatapathError::Pin { map, path, source })?;
        }
        Ok(())
    }

    /// Every service entry.
    pub fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, DatapathError> {
        entries(&self.services, map_names::SERVICES)
    }

    /// Every backend slot.
    pub fn slots(&self) -> Result<Vec<(BackendSlotKey, u32)>, DatapathError> {
        entries(&self.slots, map_names::BACKEND_SLOTS)
    }

    /// Every backend by id.
    pub fn backends(&self) -> Result<Vec<(u32, Backend)>, DatapathError> {
        entries(&self.backends, map_names::BACKENDS)
    }

    /// Every conntrack entry (forward and reply).
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        entries(&self.conntrack, map_names::CONNTRACK)
    }

    /// The node-wide counters, each summed over all CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        let read = |source| DatapathError::Read {
            map: map_names::STATS,
            source,
        };
        let array = PerCpuArray::<_, u64>::try_from(&self.stats).map_err(read)?;
        Counter::ALL
            .iter()
            .map(|c| {
                let values = array.get(&(*c as u32), 0).map_err(read)?;
                Ok((*c, values.iter().sum()))
            })
            .collect()
    }

    /// A service's counters summed over all CPUs.
    pub fn service_stats(&self, service_id: u32) -> Result<ServiceStats, DatapathError> {
        let read = |source| DatapathError::Read {
            map: map_names::SERVICE_STATS,
            source,
        };
        let array = PerCpuArray::<_, ServiceStats>::try_from(&self.service_stats).map_err(read)?;
        let per_cpu = array.get(&service_id, 0).map_err(read)?;
        Ok(per_cpu
            .iter()
            .fold(ServiceStats::default(), |sum, s| ServiceStats {
                packets: sum.packets + s.packets,
                bytes: sum.bytes + s.bytes,
                new_flows: sum.new_flows + s.new_flows,
                rejects: sum.rejects + s.rejects,
                drops: sum.drops + s.drops,
            }))
    }

    /// The node-wide settings the data path reads (`LB_CONFIG[0]`; all zero until set).
    pub fn node_config(&self) -> Result<NodeConfig, DatapathError> {
        let read = |source| DatapathError::Read {
            map: map_names::CONFIG,
            source,
        };
        Array::<_, NodeConfig>::try_from(&self.config)
            .and_then(|array| array.get(&0, 0))
            .map_err(read)
    }

    /// Replaces the node-wide settings; new flows use them at once.
    pub fn set_node_config(&mut self, config: &NodeConfig) -> Result<(), MapWriteError> {
        Array::<_, NodeConfig>::try_from(&mut self.config)
            .and_then(|mut array| array.set(0, *config, 0))
            .map_err(|source| MapWriteError {
                map: map_names::CONFIG,
                op: "update",
                source,
            })
    }
}

impl MapWriter for Maps {
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError> {
        insert(&mut self.backends, map_names::BACKENDS, id, *backend)
    }

    fn remove_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        remove::<_, Backend>(&mut self.backends, map_names::BACKENDS, &id)
    }

    fn set_slot(&mut self, key: BackendSlotKey, backend_id: u32) -> Result<(), MapWriteError> {
        insert(&mut self.slots, map_names::BACKEND_SLOTS, key, backend_id)
    }

    fn remove_slot(&mut self, key: BackendSlotKey) -> Result<(), MapWriteError> {
        remove::<_, u32>(&mut self.slots, map_names::BACKEND_SLOTS, &key)
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapWriteError> {
        insert(&mut self.services, map_names::SERVICES, *key, *value)
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapWriteError> {
        remove::<_, ServiceValue>(&mut self.services, map_names::SERVICES, key)
    }

    fn reset_service_stats(&mut self, service_id: u32) -> Result<(), MapWriteError> {
        let failed = |source| MapWriteError {
            map: map_names::SERVICE_STATS,
            op: "reset",
            source,
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| failed(MapError::IoError(e)))?;
        let zeros = PerCpuValues::try_from(vec![ServiceStats::default(); cpus])
            .map_err(|e| failed(MapError::IoError(e)))?;
        PerCpuArray::<_, ServiceStats>::try_from(&mut self.service_stats)
            .and_then(|mut array| array.set(service_id, zeros, 0))
            .map_err(failed)
    }

    fn flush_udp_conntrack(
        &mut self,
        service_id: u32,
        backend_ids: &[u32],
    ) -> Result<u32, MapWriteError> {
        let failed = |source| MapWriteError {
            map: map_names::CONNTRACK,
            op: "flush",
            source,
        };
        let stale: Vec<CtKey> = hash::<CtKey, CtValue>(&self.conntrack)
            .map_err(failed)?
            .iter()
            .filter_map(|entry| match entry {
                Ok((key, value))
                    if key.proto == IPPROTO_UDP
                        && value.service_id == service_id
                        && backend_ids.contains(&value.backend_id) =>
                {
                    Some(Ok(key))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        remove_all(&mut self.conntrack, &stale).map_err(failed)
    }
}

impl MapReader for Maps {
    fn read_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapWriteError> {
        read_all(&self.services, map_names::SERVICES)
    }

    fn read_slots(&self) -> Result<Vec<(BackendSlotKey, u32)>, MapWriteError> {
        read_all(&self.slots, map_names::BACKEND_SLOTS)
    }

    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, MapWriteError> {
        read_all(&self.backends, map_names::BACKENDS)
    }
}

fn hash<K: Pod, V: Pod>(map: &Map) -> Result<HashMap<&MapData, K, V>, MapError> {
    HashMap::try_from(map)
}

fn read_all<K: Pod, V: Pod>(map: &Map, name: &'static str) -> Result<Vec<(K, V)>, MapWriteError> {
    hash::<K, V>(map)
        .and_then(|h| h.iter().collect())
        .map_err(|source| MapWriteError {
            map: name,
            op: "read",
            source,
        })
}

fn entries<K: Pod, V: Pod>(map: &Map, name: &'static str) -> Result<Vec<(K, V)>, DatapathError> {
    read_all(map, name).map_err(|e| DatapathError::Read {
        map: e.map,
        source: e.source,
    })
}

fn insert<K: Pod, V: Pod>(
    map: &mut Map,
    name: &'static str,
    key: K,
    value: V,
) -> Result<(), MapWriteError> {
    HashMap::<_, K, V>::try_from(map)
        .and_then(|mut h| h.insert(key, value, 0))
        .map_err(|source| MapWriteError {
            map: name,
            op: "update",
            source,
        })
}

fn remove<K: Pod, V: Pod>(map: &mut Map, name: &'static str, key: &K) -> Result<(), MapWriteError> {
    HashMap::<_, K, V>::try_from(map)
        .and_then(|mut h| ignore_missing(h.remove(key)))
        .map_err(|source| MapWriteError {
            map: name,
            op: "delete",
            source,
        })
}

/// Deletes conntrack keys, skipping any the LRU already evicted; returns how many it deleted.
fn remove_all(map: &mut Map, keys: &[CtKey]) -> Result<u32, MapError> {
    let mut conntrack = HashMap::<_, CtKey, CtValue>::try_from(map)?;
    let mut removed = 0;
    for key in keys {
        match conntrack.remove(key) {
            Ok(()) => removed += 1,
            Err(e) => ignore_missing(Err(e))?,
        }
    }
    Ok(removed)
}

/// Treats "no such key" as success: the entry is gone either way.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
