//! Desired state: which service frontends exist and which backends each one balances to.
//!
//! Independent of where it comes from (manifest files now, the Kubernetes API later) and of
//! how it is programmed (see [`crate::reconciler`]). Addresses are [`IpAddr`], so IPv6 needs no
//! new types; they become the maps' 16-byte IPv4-mapped form only at the map boundary.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use lb_common::service::{backend_flags, scope, service_flags};
use lb_common::{
    Backend, ServiceKey, ServiceValue, SourceRange, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::objects::ObjectKey;

/// Transport protocol the data path balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IP protocol number, as stored in the maps.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
        }
    }

    /// The protocol with this IP protocol number, if the data path handles it.
    pub const fn from_number(number: u8) -> Option<Protocol> {
        match number {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            IPPROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// The lookup scopes every frontend is written in (`lb_common::service::scope`).
pub const SCOPES: [u8; 2] = [scope::EXTERNAL, scope::INTERNAL];

/// A service frontend: the virtual address, port and protocol clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl Frontend {
    /// The services map key of this frontend in one lookup scope (`lb_common::service::scope`).
    pub fn key(&self, scope: u8) -> ServiceKey {
        ServiceKey::new(
            map_addr(self.addr),
            self.port,
            self.protocol.number(),
            scope,
        )
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketDisplay(self.addr, self.port),
            self.protocol
        )
    }
}

/// A backend: one pod address and port, and whether it runs on this node. Shared by every
/// service that balances to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// The endpoint's `nodeName` is this node. External flows to an endpoint that is not
    /// local are masqueraded to the node (`backend_flags::LOCAL`); one without a `nodeName`
    /// (an off-cluster backend of a selector-less service) is not local.
    pub local: bool,
}

impl Endpoint {
    /// The backends map value of this endpoint.
    pub fn backend(&self) -> Backend {
        let mut backend = Backend::new(map_addr(self.addr), self.port);
        if self.local {
            backend.flags |= backend_flags::LOCAL;
        }
        backend
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketDisplay(self.addr, self.port).fmt(f)
    }
}

/// Which Kubernetes service port a frontend belongs to: `namespace/name:port-name`, as
/// kube-proxy names it (the port name is empty for an unnamed port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

/// What one frontend should balance to, per lookup scope.
///
/// Traffic policies can give the two scopes different backends (externalTrafficPolicy: Local
/// keeps only node-local endpoints for traffic from outside the node, internalTrafficPolicy:
/// Local for traffic from this node's pods); without them both scopes are equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub name: ServicePortName,
    /// Traffic arriving from outside the node (`scope::EXTERNAL`).
    pub external: Arc<BackendSet>,
    /// Traffic from pods on this node (`scope::INTERNAL`); the same `Arc` as `external`
    /// while both are equal (the common case), so the set is held once.
    pub internal: Arc<BackendSet>,
    /// `sessionAffinity: ClientIP`: a client sticks to its backend for this many seconds.
    pub affinity_timeout_s: Option<u32>,
    /// How new flows pick a backend, when the Service says (its annotation); `None` takes the
    /// node's `--lb-algorithm`.
    pub algorithm: Option<Algorithm>,
    /// The frontend is a Service's ClusterIP: its address goes into `LB_CLUSTER_IPS`, so new
    /// flows to ports and protocols the address does not expose are rejected.
    pub cluster_ip: bool,
    /// `loadBalancerSourceRanges` of a load-balancer IP frontend: new flows from outside the
    /// node, from pods and from the node's own sockets are served only from these sources.
    /// Empty: every source (and every other frontend).
    pub source_ranges: BTreeSet<IpNet>,
    /// A source range holds the node's address (kube-proxy's `allowFromNode`): the node's own
    /// sockets that leave their source to the kernel are served.
    pub source_ranges_hold_node: bool,
}

/// How new flows pick among a frontend's backends (affinity, where set, comes first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// The flow hash modulo the backend count: even spread, but a changed backend set moves
    /// most flows' choice.
    #[default]
    Random,
    /// The flow hash into a Maglev table ([`crate::maglev`]): the same choice on every node
    /// for the same endpoints, and about 1/N of choices move when one of N leaves.
    Maglev,
}

impl DesiredService {
    /// A service whose scopes both balance to `endpoints`, without affinity.
    pub fn uniform(name: ServicePortName, endpoints: BTreeSet<Endpoint>) -> Self {
        let backends = Arc::new(BackendSet {
            endpoints,
            drop_if_empty: false,
        });
        Self {
            name,
            external: Arc::clone(&backends),
            internal: backends,
            affinity_timeout_s: None,
            algorithm: None,
            cluster_ip: false,
            source_ranges: BTreeSet::new(),
            source_ranges_hold_node: false,
        }
    }

    /// The backends of one lookup scope.
    pub fn backends(&self, scope: u8) -> &BackendSet {
        match scope {
            scope::EXTERNAL => &self.external,
            _ => &self.internal,
        }
    }

    /// The services map value of one scope's entry, for service `id` with `backend_count`
    /// slots.
    pub fn value(&self, scope: u8, id: u32, backend_count: u32) -> ServiceValue {
        let mut flags = 0;
        if self.affinity_timeout_s.is_some() {
            flags |= service_flags::AFFINITY;
        }
        if self.backends(scope).drop_if_empty {
            flags |= service_flags::DROP_IF_NO_BACKEND;
        }
        if !self.source_ranges.is_empty() {
            flags |= service_flags::SOURCE_RANGES;
            if scope == scope::INTERNAL && self.source_ranges_hold_node {
                flags |= service_flags::NODE_IN_SOURCE_RANGES;
            }
        }
        ServiceValue {
            group_id: id,
            backend_count,
            flags,
            affinity_timeout_s: self.affinity_timeout_s.unwrap_or(0),
        }
    }
}

/// The backends one scope of a frontend balances to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendSet {
    /// Backends that accept new connections.
    pub endpoints: BTreeSet<Endpoint>,
    /// While `endpoints` is empty, drop new connections silently instead of rejecting them
    /// (a Local traffic policy on a node without local endpoints, as kube-proxy does).
    pub drop_if_empty: bool,
}

/// Every frontend the node should serve, and the health check node ports it answers on.
///
/// Services are shared (`Arc`): a source that recomputes only what changed hands on the same
/// `Arc` for every other frontend, and the reconciler skips a frontend whose service is the
/// one it last wrote, so a change costs in proportion to what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<Frontend, Arc<DesiredService>>,
    /// Per Service (namespace and name); the same `Arc` while no health check changed, so
    /// the agent compares them only after a change.
    pub health_checks: Arc<BTreeMap<ObjectKey, HealthCheck>>,
    /// The service CIDRs (IPv4): new flows to their addresses that no Service holds are
    /// dropped. Empty: nothing is.
    pub service_cidrs: BTreeSet<IpNet>,
}

/// A Service's `healthCheckNodePort` (a LoadBalancer with `externalTrafficPolicy: Local`),
/// where cloud load balancers ask whether this node has endpoints of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    /// Ready endpoints on this node, counted by address (kube-proxy's count).
    pub local_endpoints: usize,
    /// The addresses the port listens on (`0.0.0.0`, `::`: every address of the family), the
    /// node's (`--nodeport-addresses`).
    pub addrs: Arc<[IpAddr]>,
}

impl DesiredState {
    /// Adds or replaces a frontend's service.
    pub fn insert(&mut self, frontend: Frontend, service: DesiredService) {
        self.services.insert(frontend, Arc::new(service));
    }
}

impl Extend<(Frontend, DesiredService)> for DesiredState {
    fn extend<I: IntoIterator<Item = (Frontend, DesiredService)>>(&mut self, services: I) {
        for (frontend, service) in services {
            self.insert(frontend, service);
        }
    }
}

impl FromIterator<(Frontend, DesiredService)> for DesiredState {
    fn from_iter<I: IntoIterator<Item = (Frontend, DesiredService)>>(services: I) -> Self {
        let mut state = DesiredState::default();
        state.extend(services);
        state
    }
}

/// Which frontends of a desired state changed since an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Possibly every frontend: the reconciler compares them all.
    Everything,
    /// Only these (added, changed or removed).
    Frontends(BTreeSet<Frontend>),
}

impl Changed {
    /// Adds what changed after this.
    pub fn merge(&mut self, later: Changed) {
        match (self, later) {
            (Changed::Frontends(these), Changed::Frontends(later)) => these.extend(later),
            (this, _) => *this = Changed::Everything,
        }
    }
}

/// An address in the maps' 16-byte form (IPv4-mapped for IPv4).
pub fn map_addr(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => lb_common::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The source ranges map key of `range` for group `group_id`: its `prefix_len` and data.
pub fn source_range_key(group_id: u32, range: IpNet) -> (u32, SourceRange) {
    let range = range.trunc();
    let prefix_len = match range {
        IpNet::V4(v4) => SourceRange::ipv4_prefix_len(v4.prefix_len()),
        IpNet::V6(v6) => 32 + u32::from(v6.prefix_len()),
    };
    (
        prefix_len,
        SourceRange::new(group_id, map_addr(range.addr())),
    )
}

/// The group id and range of a source ranges map key; `None` for a prefix length no range
/// has (at most 32 bits for IPv4, 128 for IPv6, after the group id's 32).
pub fn source_range_of(prefix_len: u32, key: SourceRange) -> Option<(u32, IpNet)> {
    let group_id = u32::from_be_bytes(key.group_id);
    let range = match unmap_addr(key.addr) {
        IpAddr::V4(v4) => {
            let bits = prefix_len.checked_sub(SourceRange::ipv4_prefix_len(0))?;
            IpNet::new(v4.into(), u8::try_from(bits).ok()?).ok()?
        }
        IpAddr::V6(v6) => {
            IpNet::new(v6.into(), u8::try_from(prefix_len.checked_sub(32)?).ok()?).ok()?
        }
    };
    Some((group_id, range))
}

/// The service CIDRs map key of `cidr`: its `prefix_len` (IPv4-mapped: 96 bits before an
/// IPv4 range's) and the address as maps hold it.
pub fn service_cidr_key(cidr: IpNet) -> (u32, [u8; 16]) {
    let cidr = cidr.trunc();
    let mapped = match cidr {
        IpNet::V4(_) => 96,
        IpNet::V6(_) => 0,
    };
    (mapped + u32::from(cidr.prefix_len()), map_addr(cidr.addr()))
}

/// The range of a service CIDRs map key; `None` for one no range has.
pub fn service_cidr_of(prefix_len: u32, addr: [u8; 16]) -> Option<IpNet> {
    match lb_common::ipv4_unmapped(&addr) {
        Some(v4) => {
            let bits = u8::try_from(prefix_len.checked_sub(96)?).ok()?;
            IpNet::new(v4.into(), bits).ok()
        }
        None => IpNet::new(Ipv6Addr::from(addr).into(), u8::try_from(prefix_len).ok()?).ok(),
    }
}

/// An address from the maps' 16-byte form (IPv4-mapped becomes IPv4).
pub fn unmap_addr(addr: [u8; 16]) -> IpAddr {
    match lb_common::ipv4_unmapped(&addr) {
        Some(v4) => IpAddr::from(v4),
        None => IpAddr::V6(Ipv6Addr::from(addr)),
    }
}

/// Formats `addr:port`, bracketing IPv6 addresses.
pub struct SocketDisplay(pub IpAddr, pub u16);

impl fmt::Display for SocketDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.1),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cidr_keys_round_trip() {
        let cidr: IpNet = "198.19.0.0/16".parse().unwrap();
        let (prefix_len, addr) = service_cidr_key(cidr);
        assert_eq!(prefix_len, 112);
        assert_eq!(&addr[10..], &[0xff, 0xff, 198, 19, 0, 0]);
        assert_eq!(service_cidr_of(prefix_len, addr), Some(cidr));
        assert_eq!(service_cidr_of(95, addr), None);
        assert_eq!(service_cidr_of(129, addr), None);
    }

    #[test]
    fn addresses_round_trip_through_map_form() {
        let v4: IpAddr = "198.18.0.1".parse().unwrap();
        let v6: IpAddr = "2001:2::1".parse().unwrap();
        assert_eq!(map_addr(v4)[10..], [0xff, 0xff, 198, 18, 0, 1]);
        assert_eq!(unmap_addr(map_addr(v4)), v4);
        assert_eq!(unmap_addr(map_addr(v6)), v6);
    }

    #[test]
    fn frontend_key_uses_network_byte_order() {
        let fe = Frontend {
            addr: "198.18.0.1".parse().unwrap(),
            port: 8080,
            protocol: Protocol::Udp,
        };
        let [external, internal] = SCOPES.map(|s| fe.key(s));
        assert_eq!(external.port, [0x1f, 0x90]);
        assert_eq!(external.proto, IPPROTO_UDP);
        assert_eq!(
            (external.scope, internal.scope),
            (scope::EXTERNAL, scope::INTERNAL)
        );
        assert_eq!(
            ServiceKey {
                scope: scope::EXTERNAL,
                ..internal
            },
            external
        );
        assert_eq!(fe.to_string(), "198.18.0.1:8080/UDP");
        let v6 = Endpoint {
            addr: "2001:2::1".parse().unwrap(),
            port: 80,
            local: false,
        };
        assert_eq!(v6.to_string(), "[2001:2::1]:80");
    }

    #[test]
    fn local_endpoints_carry_the_local_backend_flag() {
        let remote = Endpoint {
            addr: "198.18.1.1".parse().unwrap(),
            port: 8080,
            local: false,
        };
        let local = Endpoint {
            local: true,
            ..remote
        };
        assert_eq!(remote.backend().flags, 0);
        assert_eq!(local.backend().flags, backend_flags::LOCAL);
        assert_eq!(
            (local.backend().addr, local.backend().port),
            (remote.backend().addr, remote.backend().port)
        );
        // Locality is part of the backend's identity: a change is a different backend.
        assert_ne!(local, remote);
    }

    #[test]
    fn scope_values_carry_the_service_flags() {
        let name = ServicePortName {
            namespace: "shop".into(),
            name: "web".into(),
            port_name: "http".into(),
        };
        let mut service = DesiredService::uniform(name, BTreeSet::new());
        assert_eq!(service.value(scope::EXTERNAL, 3, 2).flags, 0);
        service.affinity_timeout_s = Some(600);
        Arc::make_mut(&mut service.external).drop_if_empty = true;
        let external = service.value(scope::EXTERNAL, 3, 0);
        let internal = service.value(scope::INTERNAL, 4, 2);
        assert_eq!(
            external,
            ServiceValue {
                group_id: 3,
                backend_count: 0,
                flags: service_flags::AFFINITY | service_flags::DROP_IF_NO_BACKEND,
                affinity_timeout_s: 600,
            }
        );
        assert_eq!(internal.flags, service_flags::AFFINITY);
        assert_eq!((internal.group_id, internal.backend_count), (4, 2));
        service
            .source_ranges
            .insert("203.0.113.0/24".parse().unwrap());
        assert_eq!(
            service.value(scope::EXTERNAL, 3, 1).flags,
            service_flags::AFFINITY
                | service_flags::DROP_IF_NO_BACKEND
                | service_flags::SOURCE_RANGES
        );
        assert_eq!(
            service.value(scope::INTERNAL, 4, 2).flags,
            service_flags::AFFINITY | service_flags::SOURCE_RANGES,
            "pods and the node are filtered too"
        );
        service.source_ranges_hold_node = true;
        assert_eq!(
            service.value(scope::INTERNAL, 4, 2).flags,
            service_flags::AFFINITY
                | service_flags::SOURCE_RANGES
                | service_flags::NODE_IN_SOURCE_RANGES
        );
        assert_eq!(
            service.value(scope::EXTERNAL, 3, 1).flags & service_flags::NODE_IN_SOURCE_RANGES,
            0,
            "only the node's sockets read it, in the internal scope"
        );
        service.source_ranges.clear();
        assert_eq!(
            service.value(scope::INTERNAL, 4, 2).flags,
            service_flags::AFFINITY
        );
    }

    #[test]
    fn source_range_keys_match_the_group_and_the_prefix() {
        let (len, key) = source_range_key(7, "203.0.113.77/24".parse().unwrap());
        assert_eq!(len, 32 + 96 + 24);
        assert_eq!(key.group_id, [0, 0, 0, 7]);
        assert_eq!(
            key.addr[10..],
            [0xff, 0xff, 203, 0, 113, 0],
            "host bits cleared"
        );
        assert_eq!(
            source_range_of(len, key),
            Some((7, "203.0.113.0/24".parse().unwrap()))
        );
        assert_eq!(source_range_of(32 + 96 + 33, key), None);
        assert_eq!(source_range_of(32 + 95, key), None);
        let (len, key) = source_range_key(1, "2001:2::/48".parse().unwrap());
        assert_eq!(
            (len, key.addr[..6].to_vec()),
            (32 + 48, vec![0x20, 0x01, 0, 2, 0, 0])
        );
        assert_eq!(
            source_range_of(len, key),
            Some((1, "2001:2::/48".parse().unwrap()))
        );
    }
}
