//! The registry of the data path's maps: each map is described once here (name, kind, key and
//! value types, size) and everything else is derived from that description. The kernel
//! declares its map statics from these entries (lb-ebpf's `maps.rs`, which checks at compile
//! time that each static has the entry's name, kind and types); the agent loads, sizes, pins,
//! checks and opens every map by iterating [`ALL`].
//!
//! Adding a map is one line in [`registry!`] below plus its use on each side.

use core::marker::PhantomData;
use core::mem::size_of;

use crate::capacity::{Capacities, Capacity};
use crate::{
    AffinityKey, AffinityValue, Backend, BackendSlotKey, Counter, CtKey, CtValue, FragKey,
    FragPorts, NodeConfig, RejectLimits, ServiceKey, ServiceName, ServiceStats, ServiceValue,
    SockRevKey, SockRevValue, SourceRange, TokenBucket,
};

/// The kind of a BPF map. Variants are named after aya's map types and valued as the kernel's
/// `bpf_map_type`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    HashMap = 1,
    Array = 2,
    /// Programs for tail calls; values are program fds when written, ids when read.
    ProgramArray = 3,
    PerCpuArray = 6,
    LruHashMap = 9,
    /// Keys are `{prefix_len: u32, data: K}`: the registry's key type is the data.
    LpmTrie = 11,
}

/// How many entries a map has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// Always this many.
    Fixed(u32),
    /// As many as the capacity the operator chose.
    Sized(Capacity),
    /// One more than the capacity: an array indexed by ids `1..=capacity` (index 0 unused).
    IdIndexed(Capacity),
}

impl Entries {
    /// The number of entries with the given capacities.
    pub const fn with(self, capacities: &Capacities) -> u32 {
        match self {
            Entries::Fixed(entries) => entries,
            Entries::Sized(capacity) => capacities.get(capacity),
            Entries::IdIndexed(capacity) => capacities.get(capacity).saturating_add(1),
        }
    }

    /// The number of entries with default capacities: what the object declares.
    pub const fn default_entries(self) -> u32 {
        match self {
            Entries::Fixed(entries) => entries,
            Entries::Sized(capacity) => capacity.default_entries(),
            Entries::IdIndexed(capacity) => capacity.default_entries() + 1,
        }
    }

    /// The capacity that sizes the map, if any.
    pub const fn capacity(self) -> Option<Capacity> {
        match self {
            Entries::Fixed(_) => None,
            Entries::Sized(capacity) | Entries::IdIndexed(capacity) => Some(capacity),
        }
    }
}

/// One map of the data path, with its key and value types.
pub struct MapDef<K, V> {
    /// The map's name in the object, the kernel and bpffs (at most 15 bytes, no dot).
    pub name: &'static str,
    pub kind: MapKind,
    pub entries: Entries,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for MapDef<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for MapDef<K, V> {}

impl<K, V> MapDef<K, V> {
    const fn new(name: &'static str, kind: MapKind, entries: Entries) -> Self {
        // The kernel truncates longer names, and bpffs refuses pin names with a dot.
        assert!(name.len() <= 15, "map names have at most 15 bytes");
        let mut i = 0;
        while i < name.len() {
            assert!(name.as_bytes()[i] != b'.', "map names cannot contain a dot");
            i += 1;
        }
        Self {
            name,
            kind,
            entries,
            types: PhantomData,
        }
    }

    /// The map without its types.
    pub const fn spec(&self) -> MapSpec {
        MapSpec {
            name: self.name,
            kind: self.kind,
            key_size: size_of::<K>() as u32
                + match self.kind {
                    MapKind::LpmTrie => 4,
                    _ => 0,
                },
            value_size: size_of::<V>() as u32,
            entries: self.entries,
        }
    }

    /// For the kernel's map statics: fails the build unless the static named `name` of kind
    /// `kind` is this map; returns the entries the object declares.
    pub const fn declared_as(&self, name: &str, kind: MapKind) -> u32 {
        assert!(
            str_eq(self.name, name),
            "a map static is not named as its registry entry"
        );
        assert!(
            self.kind as u32 == kind as u32,
            "a map static is not of its entry's kind"
        );
        self.entries.default_entries()
    }
}

/// A map without its types: what loading, sizing, pinning and layout checks need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    /// Key size in bytes (4 for arrays, whose keys are `u32` indexes).
    pub key_size: u32,
    pub value_size: u32,
    pub entries: Entries,
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Entries of `LB_SOCK_REVNAT`: translated sockets remembered at once (about 7 MB).
pub const SOCK_REVNAT_ENTRIES: u32 = 65_536;

/// Entries of `LB_SRC_RANGES`: source ranges over all Services. The trie allocates per
/// entry, so an unused capacity costs nothing.
pub const SOURCE_RANGE_ENTRIES: u32 = 65_536;

/// Entries of `LB_REJECT_SRC`: client addresses whose reject rate is tracked at once (about
/// 1.5 MB). Beyond that the LRU forgets the quietest, which then start with a full burst
/// again; the node-wide bucket still bounds the total.
pub const REJECT_SOURCE_ENTRIES: u32 = 16_384;

/// Entries of `LB_SVC_CIDRS`: service CIDRs (a cluster has a handful).
pub const SERVICE_CIDR_ENTRIES: u32 = 256;

/// Entries of `LB_FRAGMENTS`: fragmented datagrams in flight at once (under 1 MB). An entry
/// is read only until the datagram's last fragment passed, so the LRU evicts finished ones
/// before those in flight.
pub const FRAGMENT_ENTRIES: u32 = 8_192;

/// Declares each map as a [`MapDef`] constant and lists them all in [`ALL`].
macro_rules! registry {
    ($($(#[$doc:meta])* $def:ident = $name:literal: $kind:ident<$key:ty, $value:ty>, $entries:expr;)*) => {
        $($(#[$doc])* pub const $def: MapDef<$key, $value> = MapDef::new($name, MapKind::$kind, $entries);)*
        /// Every map of the data path.
        pub const ALL: &[MapSpec] = &[$($def.spec()),*];
    };
}

registry! {
    /// Service frontends, one entry per lookup scope, each pointing at a slot group.
    SERVICES = "LB_SERVICES": HashMap<ServiceKey, ServiceValue>, Entries::Sized(Capacity::Services);
    /// Slot groups' backend slots: (group id, slot) -> backend id.
    BACKEND_SLOTS = "LB_SLOTS": HashMap<BackendSlotKey, u32>, Entries::Sized(Capacity::BackendSlots);
    /// Backends by id.
    BACKENDS = "LB_BACKENDS": HashMap<u32, Backend>, Entries::Sized(Capacity::Backends);
    /// Tracked flows, a forward and a reply entry each.
    CONNTRACK = "LB_CONNTRACK": LruHashMap<CtKey, CtValue>, Entries::Sized(Capacity::Conntrack);
    /// Session affinity: (client, slot group) -> backend.
    AFFINITY = "LB_AFFINITY": LruHashMap<AffinityKey, AffinityValue>, Entries::Sized(Capacity::Affinity);
    /// Node-wide per-CPU counters, indexed by [`Counter`].
    STATS = "LB_STATS": PerCpuArray<u32, u64>, Entries::Fixed(Counter::COUNT);
    /// Per-CPU counters per slot group id.
    SERVICE_STATS = "LB_SVC_STATS": PerCpuArray<u32, ServiceStats>, Entries::IdIndexed(Capacity::Services);
    /// Node-wide settings, one element.
    CONFIG = "LB_CONFIG": Array<u32, NodeConfig>, Entries::Fixed(1);
    /// Sockets translated to a backend: (socket cookie, backend) -> Service address, for
    /// `recvmsg` and `getpeername`. Entries are not deleted when a socket closes; the LRU
    /// evicts those of sockets gone longest.
    SOCK_REVNAT = "LB_SOCK_REVNAT": LruHashMap<SockRevKey, SockRevValue>, Entries::Fixed(SOCK_REVNAT_ENTRIES);
    /// Addresses (IPv4-mapped) that are ClusterIPs, each -> 0: a new flow to one on a port or
    /// protocol no Service exposes is rejected, as kube-proxy's nftables mode does.
    CLUSTER_IPS = "LB_CLUSTER_IPS": HashMap<[u8; 16], u32>, Entries::Sized(Capacity::Services);
    /// `loadBalancerSourceRanges`: (group id, allowed source prefix) -> 1, read for new flows
    /// to entries with `service_flags::SOURCE_RANGES`.
    SOURCE_RANGES = "LB_SRC_RANGES": LpmTrie<SourceRange, u8>, Entries::Fixed(SOURCE_RANGE_ENTRIES);
    /// Rate limits of rejects (ICMP errors the data path answers with), one element.
    REJECT_LIMITS = "LB_REJECT_CFG": Array<u32, RejectLimits>, Entries::Fixed(1);
    /// Reject token buckets per client address (IPv4-mapped).
    REJECT_SOURCES = "LB_REJECT_SRC": LruHashMap<[u8; 16], TokenBucket>, Entries::Fixed(REJECT_SOURCE_ENTRIES);
    /// The node's reject token bucket, one element shared by every CPU.
    REJECT_GLOBAL = "LB_REJECT_ALL": Array<u32, TokenBucket>, Entries::Fixed(1);

    /// The service CIDRs (`ServiceCIDR` objects or `--service-cidrs`): IPv4-mapped prefix ->
    /// 1. A new flow to an address inside one that no Service holds is dropped, as kube-proxy
    /// nftables does.
    SERVICE_CIDRS = "LB_SVC_CIDRS": LpmTrie<[u8; 16], u8>, Entries::Fixed(SERVICE_CIDR_ENTRIES);
    /// Fragmented datagrams: (source, destination, protocol, IP id) -> ports, from the first
    /// fragment, for the later ones (which carry no TCP or UDP header).
    FRAGMENTS = "LB_FRAGMENTS": LruHashMap<FragKey, FragPorts>, Entries::Fixed(FRAGMENT_ENTRIES);
    /// `namespace/name:port` by slot group id, for `lb-agent inspect` (the agent writes it,
    /// the data path never reads it; not preallocated).
    SERVICE_NAMES = "LB_SVC_NAMES": HashMap<u32, ServiceName>, Entries::Sized(Capacity::Services);
    /// The number of `lb-agent monitor` clients connected, one element (the agent writes it):
    /// while it is 0 the data path writes no rejects, new flows or masquerade allocations to
    /// the ring buffer of `crate::event`.
    MONITOR = "LB_MONITOR": Array<u32, u32>, Entries::Fixed(1);
    /// The IPv6 programs of the TC hooks, at the [`ipv6_slot`] indices: the IPv4 programs
    /// (each program's verifier budget holds one family's pipeline) tail-call them for IPv6,
    /// and ICMPv6 error programs for IPv6 ICMPv6 frames.
    TC_IPV6 = "LB_TC_V6": ProgramArray<u32, u32>, Entries::Fixed(4);
    /// The IPv6 programs of the XDP hook (a program array holds one program type).
    XDP_IPV6 = "LB_XDP_V6": ProgramArray<u32, u32>, Entries::Fixed(2);
}

/// Indices of the IPv6 programs in [`TC_IPV6`] and [`XDP_IPV6`].
pub mod ipv6_slot {
    /// `program_names::TC_INGRESS6` in `TC_IPV6`.
    pub const TC_INGRESS: u32 = 0;
    /// `program_names::TC_EGRESS6` in `TC_IPV6`.
    pub const TC_EGRESS: u32 = 1;
    /// `program_names::TC_ICMP6_INGRESS` in `TC_IPV6`.
    pub const TC_INGRESS_ICMP: u32 = 2;
    /// `program_names::TC_ICMP6_EGRESS` in `TC_IPV6`.
    pub const TC_EGRESS_ICMP: u32 = 3;
    /// `program_names::XDP_INGRESS6` in `XDP_IPV6`.
    pub const XDP: u32 = 0;
    /// `program_names::XDP_ICMP6` in `XDP_IPV6`.
    pub const XDP_ICMP: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_a_distinct_name_and_its_types_sizes() {
        for (i, spec) in ALL.iter().enumerate() {
            assert!(ALL[..i].iter().all(|other| other.name != spec.name));
        }
        assert_eq!(SERVICES.spec().key_size, 20);
        assert_eq!(STATS.spec().key_size, 4);
        assert_eq!(SOURCE_RANGES.spec().key_size, 24, "prefix length + data");
        assert_eq!(SERVICE_CIDRS.spec().key_size, 20, "prefix length + address");
        let capacities = Capacities {
            services: 8,
            ..Capacities::default()
        };
        assert_eq!(SERVICES.entries.with(&capacities), 8);
        assert_eq!(SERVICE_STATS.entries.with(&capacities), 9);
        assert_eq!(STATS.entries.with(&capacities), Counter::COUNT);
        assert_eq!(SERVICE_STATS.entries.default_entries(), 65_537);
    }

    #[test]
    fn a_static_is_checked_against_its_entry() {
        assert_eq!(
            SERVICES.declared_as("LB_SERVICES", MapKind::HashMap),
            65_536
        );
        assert!(!str_eq("LB_SERVICES", "LB_SERVICE"));
    }
}
