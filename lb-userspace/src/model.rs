//! Desired state: which service frontends exist and which backends each one balances to.
//!
//! Independent of where it comes from (manifest files now, the Kubernetes API later) and of
//! how it is programmed (see [`crate::reconciler`]). Addresses are [`IpAddr`], so IPv6 needs no
//! new types; they become the maps' 16-byte IPv4-mapped form only at the map boundary.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use lb_common::{service::scope, Backend, ServiceKey, IPPROTO_TCP, IPPROTO_UDP};

/// Transport protocol the data path balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number, as stored in the maps.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    /// The protocol with this IP protocol number, if the data path handles it.
    pub const fn from_number(number: u8) -> Option<Protocol> {
        match number {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

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

    /// The services map keys of this frontend, one per lookup scope; all share one entry.
    pub fn keys(&self) -> [ServiceKey; 2] {
        [self.key(scope::EXTERNAL), self.key(scope::INTERNAL)]
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

/// A backend: one pod address and port. Shared by every service that balances to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl Endpoint {
    /// The backends map value of this endpoint.
    pub fn backend(&self) -> Backend {
        Backend::new(map_addr(self.addr), self.port)
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

/// What one frontend should balance to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub name: ServicePortName,
    /// Backends that accept new connections; empty means new connections are dropped.
    pub endpoints: BTreeSet<Endpoint>,
}

/// Every frontend the node should serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<Frontend, DesiredService>,
}

/// An address in the maps' 16-byte form (IPv4-mapped for IPv4).
pub fn map_addr(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => lb_common::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
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
        let [external, internal] = fe.keys();
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
        };
        assert_eq!(v6.to_string(), "[2001:2::1]:80");
    }
}
