//! `net.ipv4.conf.<iface>.accept_local` on the pod-facing interfaces.
//!
//! The TC program translates a backend's reply back to the frontend it was sent to. For a
//! node port that frontend is one of the node's own addresses, so the reply enters the node
//! from the pod's veth with a local source address, and the kernel drops such packets as
//! martians unless `accept_local` is set on the interface they arrive on.
//!
//! The setting stays on when the agent exits: the pinned programs keep translating replies
//! while no agent runs, and a restarted agent expects it.

use std::fs;
use std::io;

use tracing::info;

/// Switches `accept_local` on for every interface in `ifaces`.
pub(super) fn enable(ifaces: &[String]) -> io::Result<()> {
    let mut changed = Vec::new();
    for iface in ifaces {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
        if fs::read_to_string(&path)?.trim() != "1" {
            fs::write(&path, "1")?;
            changed.push(iface.as_str());
        }
    }
    if !changed.is_empty() {
        info!(
            "enabled accept_local on {} (node port replies carry the node's address)",
            changed.join(", ")
        );
    }
    Ok(())
}
