//! `net.ipv4.ip_forward`: the kernel must forward for translated packets to reach pods and
//! other nodes. Like kube-proxy, the agent leaves the host-wide setting to the administrator
//! and only says so when it is off.

use std::fs;

use tracing::{debug, warn};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Warns when IPv4 forwarding is off (or unreadable).
pub(super) fn check() {
    match fs::read_to_string(IP_FORWARD) {
        Ok(value) if value.trim() == "1" => debug!("net.ipv4.ip_forward is 1"),
        Ok(value) => warn!(
            "net.ipv4.ip_forward is {}: the kernel does not forward, so translated packets \
             never reach pods or other nodes; set it to 1 (sysctl -w net.ipv4.ip_forward=1)",
            value.trim()
        ),
        Err(e) => warn!("cannot read {IP_FORWARD} ({e}); the kernel must forward IPv4"),
    }
}
