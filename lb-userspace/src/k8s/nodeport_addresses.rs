//! kube-proxy's `--nodeport-addresses`: which of this node's addresses serve node ports, and
//! where health check node ports listen.
//!
//! `primary` (the default) keeps every address of the Node (or `--node-address`); a CIDR
//! list keeps the addresses inside one of its CIDRs. As in kube-proxy, the list applies per
//! address family: a list without an IPv4 CIDR keeps every IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use tracing::warn;

/// One value of `--nodeport-addresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    /// `primary`: the node's own addresses.
    Primary,
    Cidr(IpNet),
}

impl FromStr for NodePortAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "primary" {
            return Ok(NodePortAddress::Primary);
        }
        text.parse().map(NodePortAddress::Cidr).map_err(|_| {
            format!("{text:?} is neither a CIDR (such as 198.18.0.0/24) nor \"primary\"")
        })
    }
}

/// Where node ports are served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every address of the node.
    #[default]
    Primary,
    /// The node's addresses inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

impl NodePortAddresses {
    /// The flag's values: `primary` alone (or nothing), or CIDRs only.
    pub fn new(values: &[NodePortAddress]) -> Result<Self, String> {
        let mut cidrs = Vec::new();
        for value in values {
            match value {
                NodePortAddress::Cidr(cidr) => cidrs.push(*cidr),
                NodePortAddress::Primary if values.len() == 1 => {}
                NodePortAddress::Primary => {
                    return Err("\"primary\" cannot be combined with CIDRs".into())
                }
            }
        }
        Ok(match cidrs.is_empty() {
            true => NodePortAddresses::Primary,
            false => NodePortAddresses::Cidrs(cidrs),
        })
    }

    /// The addresses of `addresses` that serve node ports.
    pub fn select(&self, addresses: &[IpAddr]) -> Vec<IpAddr> {
        let NodePortAddresses::Cidrs(cidrs) = self else {
            return addresses.to_vec();
        };
        let keeps = |addr: &IpAddr| {
            let family: Vec<&IpNet> = cidrs
                .iter()
                .filter(|cidr| cidr.addr().is_ipv4() == addr.is_ipv4())
                .collect();
            family.is_empty() || family.iter().any(|cidr| cidr.contains(addr))
        };
        addresses.iter().copied().filter(keeps).collect()
    }

    /// Where health check node ports listen, given the addresses that serve node ports
    /// (`serving`), as kube-proxy's service health server does per family. IPv4: on every
    /// address (`0.0.0.0`) when the setting matches every IPv4 address (no IPv4 CIDR, or a /0)
    /// or `primary` knows no IPv4 address of the node; else on each serving IPv4 address (none
    /// when no address matches). IPv6, only when an IPv6 address serves node ports (an
    /// IPv4-only node opens no IPv6 listener): on every IPv6 address (`::`) when the setting
    /// matches them all (CIDRs, none of them IPv6 or one a /0), else on each serving one.
    pub fn health_check_addresses(&self, serving: &[IpAddr]) -> Vec<IpAddr> {
        let of_family = |v6: bool| -> Vec<IpAddr> {
            serving
                .iter()
                .copied()
                .filter(|a| a.is_ipv6() == v6)
                .collect()
        };
        let matches_all = |v6: bool| match self {
            NodePortAddresses::Primary => false,
            NodePortAddresses::Cidrs(cidrs) => {
                let mut family = cidrs.iter().filter(|c| c.addr().is_ipv6() == v6).peekable();
                family.peek().is_none() || family.any(|cidr| cidr.prefix_len() == 0)
            }
        };
        let v4 = of_family(false);
        let everywhere = match self {
            NodePortAddresses::Primary => v4.is_empty(),
            NodePortAddresses::Cidrs(_) => matches_all(false),
        };
        let mut addrs = match everywhere {
            true => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            false => v4,
        };
        let v6 = of_family(true);
        if !v6.is_empty() {
            match matches_all(true) {
                true => addrs.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                false => addrs.extend(v6),
            }
        }
        addrs
    }

    /// [`NodePortAddresses::select`] for node `node`, warning (once while `warned` stays set)
    /// when it has addresses but none serves node ports: then no node port is served, as
    /// with kube-proxy.
    pub fn serving(&self, node: &str, addresses: &[IpAddr], warned: &mut bool) -> Vec<IpAddr> {
        let serving = self.select(addresses);
        let none = serving.is_empty() && !addresses.is_empty();
        if none && !*warned {
            let listed: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            warn!(
                "--nodeport-addresses {self} matches none of node {node}'s addresses ({}): no \
                 node port is served",
                listed.join(", ")
            );
        }
        *warned = none;
        serving
    }
}

impl fmt::Display for NodePortAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodePortAddresses::Primary => f.write_str("primary"),
            NodePortAddresses::Cidrs(cidrs) => {
                let list: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<NodePortAddresses, String> {
        let values: Vec<NodePortAddress> =
            values.iter().map(|v| v.parse()).collect::<Result<_, _>>()?;
        NodePortAddresses::new(&values)
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn primary_keeps_every_address_and_cidrs_keep_those_inside() {
        let node = ips(&["198.18.1.1", "198.18.2.1", "2001:2::1"]);
        for primary in [&[][..], &["primary"]] {
            assert_eq!(parse(primary).unwrap().select(&node), node);
        }
        let lan = parse(&["198.18.2.0/24"]).unwrap();
        assert_eq!(lan.select(&node), ips(&["198.18.2.1", "2001:2::1"]));
        let two = parse(&["198.18.1.1/32", "198.18.2.0/24"]).unwrap();
        assert_eq!(two.to_string(), "198.18.1.1/32,198.18.2.0/24");
        assert_eq!(
            two.select(&node),
            ips(&["198.18.1.1", "198.18.2.1", "2001:2::1"])
        );
        assert_eq!(
            parse(&["198.19.0.0/16"]).unwrap().select(&node),
            ips(&["2001:2::1"]),
            "no IPv4 address inside: no IPv4 node port"
        );
        assert_eq!(
            parse(&["2001:3::/48"]).unwrap().select(&node),
            ips(&["198.18.1.1", "198.18.2.1"]),
            "per family, as kube-proxy: without an IPv4 CIDR every IPv4 address serves"
        );
    }

    #[test]
    fn health_checks_listen_on_the_serving_addresses_or_everywhere_per_family_as_kube_proxy() {
        let node = ips(&["198.18.1.1", "198.18.2.1", "2001:2::1"]);
        let v4_node = ips(&["198.18.1.1", "198.18.2.1"]);
        let listen = |values: &[&str], addresses: &[IpAddr]| {
            let setting = parse(values).unwrap();
            setting.health_check_addresses(&setting.select(addresses))
        };
        assert_eq!(
            listen(&["primary"], &node),
            ips(&["198.18.1.1", "198.18.2.1", "2001:2::1"]),
            "primary: the node's addresses"
        );
        assert_eq!(
            listen(&["primary"], &v4_node),
            ips(&["198.18.1.1", "198.18.2.1"]),
            "an IPv4-only node opens no IPv6 listener"
        );
        assert_eq!(
            listen(&["primary"], &ips(&["2001:2::1"])),
            ips(&["0.0.0.0", "2001:2::1"])
        );
        assert_eq!(
            listen(&["primary"], &[]),
            ips(&["0.0.0.0"]),
            "no node address known yet"
        );
        assert_eq!(
            listen(&["198.18.2.0/24"], &node),
            ips(&["198.18.2.1", "::"])
        );
        assert_eq!(listen(&["198.18.2.0/24"], &v4_node), ips(&["198.18.2.1"]));
        assert_eq!(
            listen(&["198.19.0.0/16"], &node),
            ips(&["::"]),
            "no IPv4 one matches"
        );
        assert_eq!(
            listen(&["2001:2::/48"], &node),
            ips(&["0.0.0.0", "2001:2::1"])
        );
        assert_eq!(
            listen(&["0.0.0.0/0", "::/0"], &node),
            ips(&["0.0.0.0", "::"])
        );
    }

    #[test]
    fn invalid_values_are_named() {
        assert_eq!(
            parse(&["198.18.0.0/33"]).unwrap_err(),
            "\"198.18.0.0/33\" is neither a CIDR (such as 198.18.0.0/24) nor \"primary\""
        );
        assert!(
            parse(&["198.18.0.1"]).is_err(),
            "an address without a prefix length"
        );
        assert!(parse(&["Primary"]).is_err());
        assert_eq!(
            parse(&["primary", "198.18.0.0/24"]).unwrap_err(),
            "\"primary\" cannot be combined with CIDRs"
        );
    }
}
