//! Masquerading (externalTrafficPolicy: Cluster): which address and ports external flows to
//! backends on other nodes are source-NATed to, written to the data path's `LB_CONFIG`.
//!
//! A flow that enters through the external interface (XDP) and is sent to a pod on another
//! node must come back through this node to be translated, so its source becomes this node's
//! address of the flow's family and a port from the range, as kube-proxy masquerades such
//! traffic. Each family's default address is the XDP interface's first of that family (for
//! IPv6 the first that is not link-local), where the other nodes' replies arrive. Without an
//! XDP interface there is no external path and so no masquerading.

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use lb_common::config::{SNAT_PORT_MAX, SNAT_PORT_MIN};
use lb_common::{ipv4_mapped, NodeConfig};
use tracing::{info, warn};

/// Where the kernel's ephemeral port range is read (per network namespace).
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// `--masquerade-address`, `--masquerade-ports`, `--no-masquerade`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masquerade {
    /// `--no-masquerade`: external flows to other nodes' backends are only DNATed.
    Off,
    /// Masquerade each family to its address in `addrs`, or to the XDP interface's.
    On {
        addrs: MasqueradeAddrs,
        ports: PortRange,
    },
}

impl Default for Masquerade {
    fn default() -> Self {
        Masquerade::On {
            addrs: MasqueradeAddrs::default(),
            ports: PortRange::default(),
        }
    }
}

/// `--masquerade-address`: at most one address per family; a family not given takes the
/// XDP interface's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasqueradeAddrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl MasqueradeAddrs {
    /// The flag's addresses, checked: none unspecified, at most one of each family.
    pub fn new(addrs: &[IpAddr]) -> Result<Self, String> {
        let mut chosen = MasqueradeAddrs::default();
        for &addr in addrs {
            if addr.is_unspecified() {
                return Err(format!(
                    "{addr} cannot be masqueraded to (use --no-masquerade)"
                ));
            }
            let taken = match addr {
                IpAddr::V4(v4) => chosen.v4.replace(v4).map(IpAddr::V4),
                IpAddr::V6(v6) => chosen.v6.replace(v6).map(IpAddr::V6),
            };
            if let Some(first) = taken {
                return Err(format!(
                    "{first} and {addr} are of one family: give at most one IPv4 and one IPv6 \
                     address"
                ));
            }
        }
        Ok(chosen)
    }
}

/// An inclusive port range, `MIN-MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for PortRange {
    /// `lb_common::config::SNAT_PORT_MIN..=SNAT_PORT_MAX`, above Linux's default ephemeral
    /// range.
    fn default() -> Self {
        Self {
            min: SNAT_PORT_MIN,
            max: SNAT_PORT_MAX,
        }
    }
}

impl PortRange {
    fn overlaps(&self, other: &PortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// Why a `MIN-MAX` port range is invalid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error("{0:?} is not a port range like 61000-65535 (MIN-MAX)")]
    Syntax(String),
    #[error("{0:?} is not a port number from 1 to 65535")]
    Port(String),
    #[error("the range {min}-{max} is empty: the first port must not exceed the last")]
    Empty { min: u16, max: u16 },
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (min, max) = text
            .split_once('-')
            .ok_or_else(|| PortRangeError::Syntax(text.to_string()))?;
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(PortRangeError::Port(p.to_string())),
            Ok(port) => Ok(port),
        };
        let (min, max) = (port(min)?, port(max)?);
        if min > max {
            return Err(PortRangeError::Empty { min, max });
        }
        Ok(PortRange { min, max })
    }
}

/// The `LB_CONFIG` value for `setting` on a node whose external interface is `xdp_iface`,
/// with a log line saying what it is (and a warning when the ports overlap the kernel's
/// ephemeral range). Masquerading is off without an XDP interface; a family is not
/// masqueraded without an address of its own.
pub(super) fn node_config(setting: &Masquerade, xdp_iface: Option<&str>) -> NodeConfig {
    let Masquerade::On { addrs, ports } = setting else {
        info!(
            "masquerading off (--no-masquerade): external flows to backends on other nodes \
             keep the client's address, so those nodes must route replies back through this one"
        );
        return NodeConfig::default();
    };
    let Some(iface) = xdp_iface else {
        info!("no XDP interface: external traffic is not masqueraded");
        return NodeConfig::default();
    };
    let found = match addrs.v4.is_none() || addrs.v6.is_none() {
        true => first_addresses(iface).unwrap_or_else(|e| {
            warn!("reading the addresses of {iface} failed: {e} (give --masquerade-address)");
            MasqueradeAddrs::default()
        }),
        false => MasqueradeAddrs::default(),
    };
    let (v4, v6) = (addrs.v4.or(found.v4), addrs.v6.or(found.v6));
    let leaves_as: Vec<String> = [v4.map(IpAddr::V4), v6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .map(|addr| addr.to_string())
        .collect();
    if leaves_as.is_empty() {
        warn!(
            "{iface} has no IPv4 or IPv6 address: external traffic is not masqueraded (give \
             --masquerade-address)"
        );
        return NodeConfig::default();
    }
    for (family, missing) in [("IPv4", v4.is_none()), ("IPv6", v6.is_none())] {
        if missing {
            info!("{iface} has no {family} address to masquerade to: {family} flows are not masqueraded");
        }
    }
    info!(
        "masquerading: external flows to backends on other nodes leave as {}, ports {ports} \
         (LB_CONFIG)",
        leaves_as.join(" or ")
    );
    warn_if_ephemeral(ports);
    let v4 = v4.map_or([0; 16], |addr| ipv4_mapped(addr.octets()));
    NodeConfig::masquerading(v4, ports.min, ports.max)
        .with_snat_addr6(v6.map_or([0; 16], |addr| addr.octets()))
}

/// Warns when `ports` overlap `net.ipv4.ip_local_port_range`: a masqueraded flow could then
/// take the tuple of one of the node's own connections to the same backend.
fn warn_if_ephemeral(ports: &PortRange) {
    let Some(ephemeral) = fs::read_to_string(LOCAL_PORT_RANGE)
        .ok()
        .and_then(|text| parse_local_port_range(&text))
    else {
        return;
    };
    if ports.overlaps(&ephemeral) {
        warn!(
            "masquerading ports {ports} overlap net.ipv4.ip_local_port_range {ephemeral}: a \
             masqueraded flow and a connection of the node itself to the same backend may \
             collide; choose --masquerade-ports outside it"
        );
    }
}

/// `ip_local_port_range`'s two numbers (tab separated).
fn parse_local_port_range(text: &str) -> Option<PortRange> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(min)), Some(Ok(max))) => Some(PortRange { min, max }),
        _ => None,
    }
}

/// The first IPv4 address, and the first IPv6 address that is not link-local, of interface
/// `iface`, in the kernel's order.
fn first_addresses(iface: &str) -> std::io::Result<MasqueradeAddrs> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer; on success it is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = MasqueradeAddrs::default();
    let mut entry = list;
    while !entry.is_null() && (found.v4.is_none() || found.v6.is_none()) {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string for every entry.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if ifa.ifa_addr.is_null() || name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and starts with a sockaddr header.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                found.v4 = found.v4.or(Some(addr));
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                let addr = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if !addr.is_unicast_link_local() {
                    found.v6 = found.v6.or(Some(addr));
                }
            }
            _ => {}
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_reject_bad_input_clearly() {
        assert_eq!(
            "61000-65535".parse::<PortRange>(),
            Ok(PortRange {
                min: 61000,
                max: 65535
            })
        );
        assert_eq!("7-7".parse::<PortRange>(), Ok(PortRange { min: 7, max: 7 }));
        let error = |text: &str| text.parse::<PortRange>().unwrap_err().to_string();
        assert_eq!(
            error("61000"),
            "\"61000\" is not a port range like 61000-65535 (MIN-MAX)"
        );
        assert_eq!(error("0-100"), "\"0\" is not a port number from 1 to 65535");
        assert_eq!(
            error("100-70000"),
            "\"70000\" is not a port number from 1 to 65535"
        );
        assert_eq!(
            error("2000-1000"),
            "the range 2000-1000 is empty: the first port must not exceed the last"
        );
        assert!("a-b".parse::<PortRange>().is_err());
        assert_eq!(PortRange::default().to_string(), "61000-65535");
    }

    #[test]
    fn overlap_with_the_ephemeral_range_is_detected() {
        let ephemeral = parse_local_port_range("32768\t60999\n").unwrap();
        assert_eq!(ephemeral.to_string(), "32768-60999");
        assert!(!PortRange::default().overlaps(&ephemeral));
        let low: PortRange = "60000-61000".parse().unwrap();
        assert!(low.overlaps(&ephemeral));
        let edge: PortRange = "60999-60999".parse().unwrap();
        assert!(edge.overlaps(&ephemeral));
        assert_eq!(parse_local_port_range("garbage"), None);
    }

    #[test]
    fn no_masquerading_without_an_xdp_interface_or_when_off() {
        assert!(!node_config(&Masquerade::default(), None).masquerades());
        let addrs = MasqueradeAddrs::new(&["198.18.1.1".parse().unwrap()]).unwrap();
        let given = Masquerade::On {
            addrs,
            ports: "62000-62999".parse().unwrap(),
        };
        assert!(!node_config(&given, None).masquerades());
        assert_eq!(
            node_config(&Masquerade::Off, Some("lo")),
            NodeConfig::default()
        );
        let config = node_config(&given, Some("lo"));
        assert_eq!(config.snat_addr, ipv4_mapped([198, 18, 1, 1]));
        assert_eq!(
            (config.snat_port_min(), config.snat_port_max()),
            (62000, 62999)
        );
    }

    #[test]
    fn the_flag_takes_one_address_per_family_and_nothing_unspecified() {
        let addrs = |text: &[&str]| {
            let parsed: Vec<IpAddr> = text.iter().map(|t| t.parse().unwrap()).collect();
            MasqueradeAddrs::new(&parsed)
        };
        assert_eq!(
            addrs(&["2001:2::1", "198.18.1.1"]),
            Ok(MasqueradeAddrs {
                v4: Some(Ipv4Addr::new(198, 18, 1, 1)),
                v6: Some("2001:2::1".parse().unwrap()),
            })
        );
        assert_eq!(
            addrs(&["198.18.1.1", "198.18.1.2"]).unwrap_err(),
            "198.18.1.1 and 198.18.1.2 are of one family: give at most one IPv4 and one IPv6 \
             address"
        );
        assert_eq!(
            addrs(&["::"]).unwrap_err(),
            ":: cannot be masqueraded to (use --no-masquerade)"
        );
        // A given family is used as given, the other taken from the interface.
        let given = Masquerade::On {
            addrs: addrs(&["2001:2::1"]).unwrap(),
            ports: PortRange::default(),
        };
        let config = node_config(&given, Some("no-such-if0"));
        assert_eq!(
            config.snat_addr6,
            "2001:2::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(config.snat_addr, [0; 16], "no IPv4 address on no interface");
    }

    #[test]
    fn the_default_addresses_are_the_interfaces_first_of_each_family() {
        // Every network namespace has lo with 127.0.0.1 and ::1 (once it is up, as in any real
        // one, and unless IPv6 is off).
        let found = first_addresses("lo").unwrap();
        if found.v4.is_none() {
            eprintln!("skipped: lo has no IPv4 address in this network namespace");
            return;
        }
        assert_eq!(found.v4, Some(Ipv4Addr::LOCALHOST));
        assert!(
            found.v6.is_none_or(|v6| v6 == Ipv6Addr::LOCALHOST),
            "{found:?}"
        );
        let config = node_config(&Masquerade::default(), Some("lo"));
        assert_eq!(config.snat_addr, ipv4_mapped([127, 0, 0, 1]));
        assert_eq!(
            config.snat_addr6,
            found.v6.map_or([0; 16], |v6| v6.octets())
        );
        assert_eq!(
            (config.snat_port_min(), config.snat_port_max()),
            (SNAT_PORT_MIN, SNAT_PORT_MAX)
        );
        assert!(!node_config(&Masquerade::default(), Some("no-such-if0")).masquerades());
    }
}
