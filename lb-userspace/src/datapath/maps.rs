//! Typed access to the data path's maps, from a loaded object or from pins. Which maps exist
//! and their layouts come from lb-common's registry (`lb_common::maps`).

use std::collections::BTreeSet;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{
    Array, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuValues, ProgramArray,
};
use aya::programs::ProgramFd;
use aya::{Ebpf, Pod};
use ipnet::IpNet;
use lb_common::maps::{self as registry, MapDef, MapSpec};
use lb_common::{
    Backend, BackendSlotKey, Counter, CtKey, CtValue, NodeConfig, RejectLimits, ServiceKey,
    ServiceName, ServiceStats, ServiceValue, SourceRange, IPPROTO_UDP,
};

use super::batch;
use super::DatapathError;
use crate::model::{service_cidr_key, service_cidr_of, source_range_key, source_range_of};
use crate::reconciler::{ClusterIpMap, MapReader, MapWriteError, MapWriter, ServiceCidrMap};

/// The data path's maps, one per registry entry, each checked against its entry's layout.
pub struct DatapathMaps {
    /// In the order of [`registry::ALL`].
    maps: Vec<Map>,
}

impl DatapathMaps {
    /// Takes the maps out of a loaded object, checking their layouts.
    pub(super) fn take_from(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let maps = registry::ALL
            .iter()
            .map(|spec| {
                let map = ebpf
                    .take_map(spec.name)
                    .ok_or(DatapathError::MissingMap(spec.name))?;
                check_layout(spec, &map)?;
                Ok(map)
            })
            .collect::<Result<_, DatapathError>>()?;
        Ok(Self { maps })
    }

    /// Opens the maps pinned by [`super::Datapath::pin_maps`] in `dir`.
    pub fn from_pins(dir: &Path) -> Result<Self, DatapathError> {
        if !dir.join(registry::SERVICES.name).exists() {
            return Err(DatapathError::NotPinned(dir.to_path_buf()));
        }
        let maps = registry::ALL
            .iter()
            .map(|spec| {
                let path = dir.join(spec.name);
                let map = MapData::from_pin(&path)
                    .and_then(Map::from_map_data)
                    .map_err(|source| DatapathError::OpenPin { path, source })?;
                check_layout(spec, &map)?;
                Ok(map)
            })
            .collect::<Result<_, DatapathError>>()?;
        Ok(Self { maps })
    }

    /// Every map with its name.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&'static str, &Map)> {
        registry::ALL.iter().map(|spec| spec.name).zip(&self.maps)
    }

    pub(super) fn pin(&self, dir: &Path) -> Result<(), DatapathError> {
        for (map, data) in self.iter() {
            let path = dir.join(map);
            data.pin(&path)
                .map_err(|source| DatapathError::Pin { map, path, source })?;
        }
        Ok(())
    }

    /// The map of registry entry `def`.
    fn map<K, V>(&self, def: MapDef<K, V>) -> &Map {
        &self.maps[index_of(def.name)]
    }

    fn map_mut<K, V>(&mut self, def: MapDef<K, V>) -> &mut Map {
        &mut self.maps[index_of(def.name)]
    }

    /// The service entry of `key`, if any (one lookup).
    pub fn service(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, DatapathError> {
        let read = |source| DatapathError::Read {
            map: registry::SERVICES.name,
            source,
        };
        match self.hash(registry::SERVICES).map_err(read)?.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(read(e)),
        }
    }

    /// Every service entry.
    pub fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, DatapathError> {
        self.entries(registry::SERVICES)
    }

    /// Every backend slot.
    pub fn slots(&self) -> Result<Vec<(BackendSlotKey, u32)>, DatapathError> {
        self.entries(registry::BACKEND_SLOTS)
    }

    /// Every backend by id.
    pub fn backends(&self) -> Result<Vec<(u32, Backend)>, DatapathError> {
        self.entries(registry::BACKENDS)
    }

    /// The `namespace/name:port` the agent wrote for slot group `group_id`, if any (one
    /// lookup); `None` also for a name that is not UTF-8.
    pub fn service_name(&self, group_id: u32) -> Result<Option<String>, DatapathError> {
        let read = |source| DatapathError::Read {
            map: registry::SERVICE_NAMES.name,
            source,
        };
        match self
            .hash(registry::SERVICE_NAMES)
            .map_err(read)?
            .get(&group_id, 0)
        {
            Ok(name) => Ok(name.as_str().map(str::to_string)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(read(e)),
        }
    }

    /// Every service name by group id.
    pub(crate) fn read_service_names(
        &self,
    ) -> Result<std::collections::BTreeMap<u32, String>, MapWriteError> {
        let names = self.read_all(registry::SERVICE_NAMES)?;
        Ok(names
            .into_iter()
            .map(|(id, name)| (id, name.as_str().unwrap_or_default().to_string()))
            .collect())
    }

    pub(crate) fn set_service_name(
        &mut self,
        group_id: u32,
        name: &str,
    ) -> Result<(), MapWriteError> {
        self.insert(registry::SERVICE_NAMES, group_id, ServiceName::new(name))
    }

    pub(crate) fn remove_service_name(&mut self, group_id: u32) -> Result<(), MapWriteError> {
        self.remove(registry::SERVICE_NAMES, &group_id)
    }

    /// Every conntrack entry (forward and reply).
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        self.conntrack_entries()
            .map_err(|source| DatapathError::Read {
                map: registry::CONNTRACK.name,
                source,
            })
    }

    /// Deletes the conntrack entries under `keys` (one gone already counts as deleted
    /// nothing); returns how many were deleted.
    pub fn remove_conntrack(&mut self, keys: &[CtKey]) -> Result<u32, DatapathError> {
        remove_all(self.map_mut(registry::CONNTRACK), keys).map_err(|source| {
            DatapathError::Delete {
                map: registry::CONNTRACK.name,
                source,
            }
        })
    }

    /// Every conntrack entry, read in batches.
    fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtValue)>, MapError> {
        let map_type = registry::CONNTRACK.kind as u32;
        let conntrack = map_data(self.map(registry::CONNTRACK));
        let conntrack = conntrack.ok_or(MapError::InvalidMapType { map_type })?;
        batch::entries(conntrack).map_err(MapError::IoError)
    }

    /// The node-wide counters, each summed over all CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        let read = |source| DatapathError::Read {
            map: registry::STATS.name,
            source,
        };
        let array = PerCpuArray::<_, u64>::try_from(self.map(registry::STATS)).map_err(read)?;
        Counter::ALL
            .iter()
            .map(|c| {
                let values = array.get(&(*c as u32), 0).map_err(read)?;
                Ok((*c, values.iter().sum()))
            })
            .collect()
    }

    /// A service's counters summed over all CPUs.
    pub fn service_stats(&self, group_id: u32) -> Result<ServiceStats, DatapathError> {
        let read = |source| DatapathError::Read {
            map: registry::SERVICE_STATS.name,
            source,
        };
        let array = PerCpuArray::<_, ServiceStats>::try_from(self.map(registry::SERVICE_STATS))
            .map_err(read)?;
        let per_cpu = array.get(&group_id, 0).map_err(read)?;
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
            map: registry::CONFIG.name,
            source,
        };
        Array::<_, NodeConfig>::try_from(self.map(registry::CONFIG))
            .and_then(|array| array.get(&0, 0))
            .map_err(read)
    }

    /// Replaces the node-wide settings; new flows use them at once.
    pub fn set_node_config(&mut self, config: &NodeConfig) -> Result<(), MapWriteError> {
        Array::<_, NodeConfig>::try_from(self.map_mut(registry::CONFIG))
            .and_then(|mut array| array.set(0, *config, 0))
            .map_err(|source| MapWriteError {
                map: registry::CONFIG.name,
                op: "update",
                source,
            })
    }

    /// Puts the program `fd` in `slot` of the program array `def` (the IPv6 programs the IPv4
    /// ones tail-call: `lb_common::maps::ipv6_slot`). An adopted array's earlier program is
    /// replaced atomically.
    pub(super) fn set_program(
        &mut self,
        def: MapDef<u32, u32>,
        slot: u32,
        fd: &ProgramFd,
    ) -> Result<(), MapWriteError> {
        ProgramArray::try_from(self.map_mut(def))
            .and_then(|mut array| array.set(slot, fd, 0))
            .map_err(|source| MapWriteError {
                map: def.name,
                op: "update",
                source,
            })
    }

    /// Sets the number of `lb-agent monitor` clients (`LB_MONITOR[0]`): while it is 0 the
    /// programs write no rejects, new flows or masquerade allocations as events.
    pub fn set_monitor_clients(&mut self, clients: u32) -> Result<(), MapWriteError> {
        Array::<_, u32>::try_from(self.map_mut(registry::MONITOR))
            .and_then(|mut array| array.set(0, clients, 0))
            .map_err(|source| MapWriteError {
                map: registry::MONITOR.name,
                op: "update",
                source,
            })
    }

    /// Replaces the rate limits of rejects (`LB_REJECT_CFG[0]`); the next reject uses them.
    pub fn set_reject_limits(&mut self, limits: &RejectLimits) -> Result<(), MapWriteError> {
        Array::<_, RejectLimits>::try_from(self.map_mut(registry::REJECT_LIMITS))
            .and_then(|mut array| array.set(0, *limits, 0))
            .map_err(|source| MapWriteError {
                map: registry::REJECT_LIMITS.name,
                op: "update",
                source,
            })
    }
}

impl MapWriter for DatapathMaps {
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapWriteError> {
        self.insert(registry::BACKENDS, id, *backend)
    }

    fn remove_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        self.remove(registry::BACKENDS, &id)
    }

    fn set_slot(&mut self, key: BackendSlotKey, backend_id: u32) -> Result<(), MapWriteError> {
        self.insert(registry::BACKEND_SLOTS, key, backend_id)
    }

    fn remove_slot(&mut self, key: BackendSlotKey) -> Result<(), MapWriteError> {
        self.remove(registry::BACKEND_SLOTS, &key)
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapWriteError> {
        self.insert(registry::SERVICES, *key, *value)
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapWriteError> {
        self.remove(registry::SERVICES, key)
    }

    fn set_source_range(&mut self, group_id: u32, range: IpNet) -> Result<(), MapWriteError> {
        let (prefix_len, data) = source_range_key(group_id, range);
        self.source_ranges()
            .and_then(|mut trie| trie.insert(&Key::new(prefix_len, data), 1, 0))
            .map_err(|source| MapWriteError {
                map: registry::SOURCE_RANGES.name,
                op: "update",
                source,
            })
    }

    fn remove_source_range(&mut self, group_id: u32, range: IpNet) -> Result<(), MapWriteError> {
        let (prefix_len, data) = source_range_key(group_id, range);
        self.source_ranges()
            .and_then(|mut trie| ignore_missing(trie.remove(&Key::new(prefix_len, data))))
            .map_err(|source| MapWriteError {
                map: registry::SOURCE_RANGES.name,
                op: "delete",
                source,
            })
    }

    fn reset_service_stats(&mut self, group_id: u32) -> Result<(), MapWriteError> {
        let failed = |source| MapWriteError {
            map: registry::SERVICE_STATS.name,
            op: "reset",
            source,
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| failed(MapError::IoError(e)))?;
        let zeros = PerCpuValues::try_from(vec![ServiceStats::default(); cpus])
            .map_err(|e| failed(MapError::IoError(e)))?;
        PerCpuArray::<_, ServiceStats>::try_from(self.map_mut(registry::SERVICE_STATS))
            .and_then(|mut array| array.set(group_id, zeros, 0))
            .map_err(failed)
    }

    fn flush_udp_conntrack(&mut self, flows: &BTreeSet<(u32, u32)>) -> Result<u32, MapWriteError> {
        let failed = |source| MapWriteError {
            map: registry::CONNTRACK.name,
            op: "flush",
            source,
        };
        let stale: Vec<CtKey> = self
            .conntrack_entries()
            .map_err(failed)?
            .into_iter()
            .filter(|(key, value)| {
                key.proto == IPPROTO_UDP && flows.contains(&(value.group_id, value.backend_id))
            })
            .map(|(key, _)| key)
            .collect();
        remove_all(self.map_mut(registry::CONNTRACK), &stale).map_err(failed)
    }
}

impl ClusterIpMap for DatapathMaps {
    fn read_cluster_ips(&self) -> Result<Vec<[u8; 16]>, MapWriteError> {
        let entries = self.read_all(registry::CLUSTER_IPS)?;
        Ok(entries.into_iter().map(|(addr, _)| addr).collect())
    }

    fn set_cluster_ip(&mut self, addr: &[u8; 16]) -> Result<(), MapWriteError> {
        self.insert(registry::CLUSTER_IPS, *addr, 0)
    }

    fn remove_cluster_ip(&mut self, addr: &[u8; 16]) -> Result<(), MapWriteError> {
        self.remove(registry::CLUSTER_IPS, addr)
    }
}

impl ServiceCidrMap for DatapathMaps {
    fn read_service_cidrs(&self) -> Result<Vec<IpNet>, MapWriteError> {
        LpmTrie::<_, [u8; 16], u8>::try_from(self.map(registry::SERVICE_CIDRS))
            .and_then(|trie| trie.keys().collect::<Result<Vec<_>, _>>())
            .map(|keys| {
                keys.into_iter()
                    .filter_map(|key| service_cidr_of(key.prefix_len(), key.data()))
                    .collect()
            })
            .map_err(|source| MapWriteError {
                map: registry::SERVICE_CIDRS.name,
                op: "read",
                source,
            })
    }

    fn set_service_cidr(&mut self, cidr: IpNet) -> Result<(), MapWriteError> {
        let (prefix_len, data) = service_cidr_key(cidr);
        LpmTrie::try_from(self.map_mut(registry::SERVICE_CIDRS))
            .and_then(|mut trie| trie.insert(&Key::new(prefix_len, data), 1u8, 0))
            .map_err(|source| MapWriteError {
                map: registry::SERVICE_CIDRS.name,
                op: "update",
                source,
            })
    }

    fn remove_service_cidr(&mut self, cidr: IpNet) -> Result<(), MapWriteError> {
        let (prefix_len, data) = service_cidr_key(cidr);
        LpmTrie::<_, [u8; 16], u8>::try_from(self.map_mut(registry::SERVICE_CIDRS))
            .and_then(|mut trie| ignore_missing(trie.remove(&Key::new(prefix_len, data))))
            .map_err(|source| MapWriteError {
                map: registry::SERVICE_CIDRS.name,
                op: "delete",
                source,
            })
    }
}

impl MapReader for DatapathMaps {
    fn read_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapWriteError> {
        self.read_all(registry::SERVICES)
    }

    fn read_slots(&self) -> Result<Vec<(BackendSlotKey, u32)>, MapWriteError> {
        self.read_all(registry::BACKEND_SLOTS)
    }

    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, MapWriteError> {
        self.read_all(registry::BACKENDS)
    }

    fn read_source_ranges(&self) -> Result<Vec<(u32, IpNet)>, MapWriteError> {
        LpmTrie::<_, SourceRange, u8>::try_from(self.map(registry::SOURCE_RANGES))
            .and_then(|trie| trie.keys().collect::<Result<Vec<_>, _>>())
            .map(|keys| {
                keys.into_iter()
                    .filter_map(|key| source_range_of(key.prefix_len(), key.data()))
                    .collect()
            })
            .map_err(|source| MapWriteError {
                map: registry::SOURCE_RANGES.name,
                op: "read",
                source,
            })
    }
}

/// Typed hash map access by registry entry; each fails with the map's name.
impl DatapathMaps {
    fn source_ranges(&mut self) -> Result<LpmTrie<&mut MapData, SourceRange, u8>, MapError> {
        LpmTrie::try_from(self.map_mut(registry::SOURCE_RANGES))
    }

    fn hash<K: Pod, V: Pod>(&self, def: MapDef<K, V>) -> Result<HashMap<&MapData, K, V>, MapError> {
        HashMap::try_from(self.map(def))
    }

    fn read_all<K: Pod, V: Pod>(&self, def: MapDef<K, V>) -> Result<Vec<(K, V)>, MapWriteError> {
        self.hash(def)
            .and_then(|h| h.iter().collect())
            .map_err(|source| MapWriteError {
                map: def.name,
                op: "read",
                source,
            })
    }

    fn entries<K: Pod, V: Pod>(&self, def: MapDef<K, V>) -> Result<Vec<(K, V)>, DatapathError> {
        self.read_all(def).map_err(|e| DatapathError::Read {
            map: e.map,
            source: e.source,
        })
    }

    fn insert<K: Pod, V: Pod>(
        &mut self,
        def: MapDef<K, V>,
        key: K,
        value: V,
    ) -> Result<(), MapWriteError> {
        HashMap::<_, K, V>::try_from(self.map_mut(def))
            .and_then(|mut h| h.insert(key, value, 0))
            .map_err(|source| MapWriteError {
                map: def.name,
                op: "update",
                source,
            })
    }

    fn remove<K: Pod, V: Pod>(&mut self, def: MapDef<K, V>, key: &K) -> Result<(), MapWriteError> {
        HashMap::<_, K, V>::try_from(self.map_mut(def))
            .and_then(|mut h| ignore_missing(h.remove(key)))
            .map_err(|source| MapWriteError {
                map: def.name,
                op: "delete",
                source,
            })
    }
}

/// Position of the map named `name` in [`registry::ALL`]; every `MapDef` is there.
fn index_of(name: &str) -> usize {
    registry::ALL
        .iter()
        .position(|spec| spec.name == name)
        .unwrap_or_else(|| unreachable!("map {name} is not in the registry"))
}

/// The map behind `map`, if it is of a kind the registry uses.
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::Array(data)
        | Map::PerCpuArray(data)
        | Map::LpmTrie(data)
        | Map::ProgramArray(data) => Some(data),
        _ => None,
    }
}

/// Checks a map's kind, key and value sizes against its registry entry (not its size: that is
/// chosen at load time).
fn check_layout(spec: &MapSpec, map: &Map) -> Result<(), DatapathError> {
    let layout = |source| DatapathError::MapLayout {
        map: spec.name,
        source,
    };
    let Some(data) = map_data(map) else {
        let map_type = spec.kind as u32;
        return Err(layout(MapError::InvalidMapType { map_type }));
    };
    let info: MapInfo = data.info().map_err(layout)?;
    let map_type = info.map_type().map_err(layout)? as u32;
    if map_type != spec.kind as u32 {
        return Err(layout(MapError::InvalidMapType { map_type }));
    }
    if info.key_size() != spec.key_size {
        return Err(layout(MapError::InvalidKeySize {
            size: info.key_size() as usize,
            expected: spec.key_size as usize,
        }));
    }
    if info.value_size() != spec.value_size {
        return Err(layout(MapError::InvalidValueSize {
            size: info.value_size() as usize,
            expected: spec.value_size as usize,
        }));
    }
    Ok(())
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
