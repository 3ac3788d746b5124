//! Service frontends, backend slots and backends (Cilium's service / backend split).
//!
//! A service frontend (`ServiceKey`) maps to a `ServiceValue` whose `group_id` indexes the backend
//! slots `1..=backend_count`; each slot holds a backend id, and each backend id resolves to an
//! address and port in the backends map. Userspace writes backends, then slots, then the
//! service entry, and removes them in reverse, so the kernel never sees half a service.

/// Lookup scope of a frontend: which traffic a service entry answers.
///
/// Every frontend is written once per scope, so a packet needs one lookup whatever the
/// traffic policies: the XDP program on the external interface looks up `EXTERNAL`, the TC
/// program on pod-facing interfaces looks up `INTERNAL`. The two entries differ only when a
/// traffic policy makes them differ, as in kube-proxy: externalTrafficPolicy: Local keeps
/// node-local backends in the `EXTERNAL` entry of NodePort, LoadBalancer and external-IP
/// frontends; internalTrafficPolicy: Local keeps them in both entries of a ClusterIP
/// frontend; pods reaching a NodePort, LoadBalancer or external IP (their `INTERNAL` entry)
/// get every usable backend, subject to neither policy.
pub mod scope {
    /// Traffic arriving from outside the node (the external interface).
    pub const EXTERNAL: u8 = 0;
    /// Traffic from pods on this node (pod-facing interfaces).
    pub const INTERNAL: u8 = 1;
}

/// Bits of [`ServiceValue::flags`].
pub mod service_flags {
    /// sessionAffinity: ClientIP: a client keeps its backend for `affinity_timeout_s` seconds
    /// after its last new flow (the `LB_AFFINITY` map).
    pub const AFFINITY: u32 = 1 << 0;
    /// With no backend, drop silently instead of rejecting (an externalTrafficPolicy: Local
    /// path on a node without a local endpoint, as kube-proxy does).
    pub const DROP_IF_NO_BACKEND: u32 = 1 << 1;
    /// `loadBalancerSourceRanges`: a new flow is served only from a source address inside one
    /// of the group's ranges (`LB_SRC_RANGES`), else dropped. Set only on load-balancer IP
    /// entries (both scopes), so other traffic pays nothing for it.
    pub const SOURCE_RANGES: u32 = 1 << 2;
    /// With [`SOURCE_RANGES`], on the internal entry: a range holds the node's address
    /// (kube-proxy's `allowFromNode`), so the node's own sockets whose source the kernel
    /// picks (the node's address) are served; a socket bound to a source is checked by it.
    pub const NODE_IN_SOURCE_RANGES: u32 = 1 << 3;
}

/// Key of the services map: one service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend (virtual) address, network byte order, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Frontend port, network byte order.
    pub port: [u8; 2],
    /// IP protocol number (`IPPROTO_TCP` or `IPPROTO_UDP`).
    pub proto: u8,
    /// Lookup scope, one of [`scope`].
    pub scope: u8,
}

impl ServiceKey {
    pub const fn new(addr: [u8; 16], port: u16, proto: u8, scope: u8) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            proto,
            scope,
        }
    }

    /// Frontend port in host byte order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// Value of the services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Slot group id (dense, never 0): which backend slots the entry balances over, and the
    /// index of its counters. Frontends and scopes with the same backends may share a group.
    pub group_id: u32,
    /// Number of backend slots in use, `1..=backend_count`; 0 means no usable backend: new
    /// flows are rejected (ICMP port unreachable), or dropped with `DROP_IF_NO_BACKEND`.
    pub backend_count: u32,
    /// Bits of [`service_flags`].
    pub flags: u32,
    /// Session affinity timeout in seconds, with `service_flags::AFFINITY`.
    pub affinity_timeout_s: u32,
}

/// Bits of [`Backend::flags`].
pub mod backend_flags {
    /// The backend runs on this node (its endpoint's `nodeName` is this node). External
    /// (`scope::EXTERNAL`) flows to a backend without it are masqueraded to the node's
    /// address when `NodeConfig::snat_addr` is set, as kube-proxy masquerades
    /// externalTrafficPolicy: Cluster traffic, so that the backend's replies come back
    /// through this node to be translated.
    pub const LOCAL: u8 = 1 << 0;
}

/// Key of the backend slots map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendSlotKey {
    /// The owning service's id.
    pub group_id: u32,
    /// Slot number, `1..=backend_count` (slot 0 is never written).
    pub slot: u32,
}

/// Value of the backends map, keyed by a dense backend id (`u32`, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Backend (pod) address, network byte order, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Backend port, network byte order.
    pub port: [u8; 2],
    /// Bits of [`backend_flags`].
    pub flags: u8,
    pub _pad: u8,
}

impl Backend {
    pub const fn new(addr: [u8; 16], port: u16) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            flags: 0,
            _pad: 0,
        }
    }

    /// Backend port in host byte order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// Key of the session affinity map (`LB_AFFINITY`, an LRU hash).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Client address, network byte order, IPv4-mapped for IPv4.
    pub client_addr: [u8; 16],
    /// Group id the affinity belongs to.
    pub group_id: u32,
}

/// Value of the session affinity map (written by the data path only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    /// Backend the client sticks to.
    pub backend_id: u32,
    /// The service's slot that held `backend_id` when this was recorded. The affinity holds
    /// only while that slot (within the backend count) still holds `backend_id`: one slot
    /// lookup proves the backend still belongs to the service.
    pub slot: u32,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC) of the client's last new flow to the service.
    pub last_used_ns: u64,
}

/// The data of a key of the source ranges map (`LB_SRC_RANGES`, an LPM trie whose keys are
/// `{prefix_len: u32, data: SourceRange}`): a slot group and an allowed source prefix.
///
/// The group id comes first and is always matched in full, so one trie holds every
/// service's ranges and a lookup costs the same whatever their number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    /// Group id of the load-balancer IP's external entry, big-endian (the trie matches bits
    /// from the first byte on).
    pub group_id: [u8; 4],
    /// Source address (the prefix's, or the packet's), network byte order, IPv4-mapped for
    /// IPv4.
    pub addr: [u8; 16],
}

impl SourceRange {
    /// Bits of the key a lookup matches: the group id and the whole address.
    pub const LOOKUP_PREFIX_LEN: u32 = 32 + 128;

    pub const fn new(group_id: u32, addr: [u8; 16]) -> Self {
        Self {
            group_id: group_id.to_be_bytes(),
            addr,
        }
    }

    /// The key's `prefix_len` for an IPv4 prefix of `bits` (IPv4-mapped: 96 bits before it).
    pub const fn ipv4_prefix_len(bits: u8) -> u32 {
        32 + 96 + bits as u32
    }
}

const _: () = assert!(core::mem::size_of::<SourceRange>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 20);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);
const _: () = assert!(core::mem::size_of::<BackendSlotKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 20);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendSlotKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::SourceRange {}
}
