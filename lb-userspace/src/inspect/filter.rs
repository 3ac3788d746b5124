//! What `inspect` narrows its tables to: `--service`, `--frontend` and `--backend`, parsed
//! from their flags and matched against map entries.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::model::unmap_addr;

/// `NS/NAME[:PORT]`: a Service, or one of its ports by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFilter {
    /// `namespace/name`.
    service: String,
    port: Option<String>,
}

impl ServiceFilter {
    /// Whether `name` (`namespace/name:port`, as the agent writes it) is this Service's.
    pub fn matches(&self, name: &str) -> bool {
        let Some((service, port)) = name.split_once(':') else {
            return false;
        };
        service == self.service && self.port.as_deref().is_none_or(|p| p == port)
    }
}

impl FromStr for ServiceFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (service, port) = match text.split_once(':') {
            Some((service, port)) => (service, Some(port.to_string())),
            None => (text, None),
        };
        match service.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    service: service.to_string(),
                    port,
                })
            }
            _ => Err(format!("{text:?} is not NAMESPACE/NAME[:PORT]")),
        }
    }
}

impl fmt::Display for ServiceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            Some(port) => write!(f, "{}:{port}", self.service),
            None => f.write_str(&self.service),
        }
    }
}

/// `IP[:PORT]` (`[IPv6]:PORT` with a port): an address, on one port or on any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrFilter {
    addr: IpAddr,
    port: Option<u16>,
}

impl AddrFilter {
    /// Whether a map's address (IPv4-mapped for IPv4) and port (network order) match.
    pub fn matches(&self, addr: [u8; 16], port: [u8; 2]) -> bool {
        unmap_addr(addr) == self.addr && self.port.is_none_or(|p| p == u16::from_be_bytes(port))
    }
}

impl FromStr for AddrFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return Ok(Self {
                addr: socket.ip(),
                port: Some(socket.port()),
            });
        }
        match text.parse::<IpAddr>() {
            Ok(addr) => Ok(Self { addr, port: None }),
            Err(_) => Err(format!("{text:?} is not IP[:PORT]")),
        }
    }
}

/// The filters given; an absent one lets everything through.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub service: Option<ServiceFilter>,
    pub frontend: Option<AddrFilter>,
    pub backend: Option<AddrFilter>,
}

#[cfg(test)]
mod tests {
    use lb_common::ipv4_mapped;

    use super::*;

    #[test]
    fn a_service_filter_matches_a_service_or_one_port() {
        let web: ServiceFilter = "default/web".parse().unwrap();
        assert!(web.matches("default/web:http"));
        assert!(web.matches("default/web:"));
        assert!(!web.matches("default/web2:http"));
        assert!(!web.matches("other/web:http"));
        let http: ServiceFilter = "default/web:http".parse().unwrap();
        assert!(http.matches("default/web:http"));
        assert!(!http.matches("default/web:https"));
        assert_eq!(http.to_string(), "default/web:http");
    }

    #[test]
    fn a_service_filter_needs_a_namespace_and_a_name() {
        for bad in ["web", "/web", "default/", "a/b/c", ""] {
            assert_eq!(
                bad.parse::<ServiceFilter>(),
                Err(format!("{bad:?} is not NAMESPACE/NAME[:PORT]"))
            );
        }
    }

    #[test]
    fn an_address_filter_matches_an_address_and_maybe_a_port() {
        let vip = ipv4_mapped([198, 19, 0, 10]);
        let any: AddrFilter = "198.19.0.10".parse().unwrap();
        assert!(any.matches(vip, 80u16.to_be_bytes()));
        assert!(!any.matches(ipv4_mapped([198, 19, 0, 11]), 80u16.to_be_bytes()));
        let port: AddrFilter = "198.19.0.10:80".parse().unwrap();
        assert!(port.matches(vip, 80u16.to_be_bytes()));
        assert!(!port.matches(vip, 81u16.to_be_bytes()));
        let v6: AddrFilter = "[2001:2::1]:80".parse().unwrap();
        let addr = "2001:2::1".parse::<std::net::Ipv6Addr>().unwrap().octets();
        assert!(v6.matches(addr, 80u16.to_be_bytes()));
        for bad in ["198.19.0", "198.19.0.10:http", "2001:2::1:80:x", ""] {
            assert_eq!(
                bad.parse::<AddrFilter>(),
                Err(format!("{bad:?} is not IP[:PORT]"))
            );
        }
    }
}
