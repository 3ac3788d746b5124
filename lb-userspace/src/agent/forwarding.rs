//! `net.ipv4.ip_forward`: the kernel must forward for translated packets to reach pods and
//! other nodes. Like kube-proxy, the agent leaves the host-wide setting to the administrator
//! and only says so when it is off.

use std::fs;
use std::path::Path;

use tracing::{debug, warn};

/// Warns when IPv4 forwarding is off (or unreadable), read under `proc_sys_net`.
pub(super) fn check(proc_sys_net: &Path) {
    let path = proc_sys_net.join("ipv4/ip_forward");
    match fs::read_to_string(&path) {
        Ok(value) if value.trim() == "1" => debug!("net.ipv4.ip_forward is 1"),
        Ok(value) => warn!(
            "net.ipv4.ip_forward is {}: the kernel does not forward, so translated packets \
             never reach pods or other nodes; set it to 1 (sysctl -w net.ipv4.ip_forward=1)",
            value.trim()
        ),
        Err(e) => warn!(
            "cannot read {} ({e}); the kernel must forward IPv4",
            path.display()
        ),
    }
}
