//! Service frontends, backend slots and backends (Cilium's service / backend split).
//!
//! A service frontend (`ServiceKey`) maps to a `ServiceValue` whose `id` indexes the backend
//! slots `1..=backend_count`; each slot holds a backend id, and each backend id resolves to an
//! address and port in the backends map. Userspace writes backends, then slots, then the
//! service entry, and removes them in reverse, so the kernel never sees half a service.

/// Lookup scope of a frontend: which traffic a service entry answers.
pub mod scope {
    /// Traffic from anywhere (the only scope until traffic policies split it).
    pub const ALL: u8 = 0;
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
    pub const fn new(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            proto,
            scope: scope::ALL,
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
    /// Dense service id (never 0): the backend slots' and per-service counters' index.
    pub id: u32,
    /// Number of backend slots in use, `1..=backend_count`; 0 means no backend is ready.
    pub backend_count: u32,
    /// Reserved for service flags (traffic policy, affinity); 0 for now.
    pub flags: u32,
    /// Reserved for the session affinity timeout in seconds; 0 for now.
    pub affinity_timeout_s: u32,
}

/// Key of the backend slots map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendSlotKey {
    /// The owning service's id.
    pub service_id: u32,
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
    /// Reserved for backend state flags (terminating, maintenance); 0 for now.
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

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);
const _: () = assert!(core::mem::size_of::<BackendSlotKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 20);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendSlotKey {}
    unsafe impl aya::Pod for super::Backend {}
}
