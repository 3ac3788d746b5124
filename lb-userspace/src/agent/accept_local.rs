//! `net.ipv4.conf.<iface>.accept_local` on the pod-facing interfaces and, with masquerading,
//! on the external one.
//!
//! The TC program translates a backend's reply back to the frontend it was sent to. For a
//! node port that frontend is one of the node's own addresses, so the reply enters the node
//! from the pod's veth with a local source address, and the kernel drops such packets as
//! martians unless `accept_local` is set on the interface they arrive on. A masqueraded flow
//! does the same on the external interface, in both directions: the XDP program gives the
//! request the node's address as its source, and a remote backend's reply a node port's.
//!
//! The setting stays on when the agent exits: the pinned programs keep translating replies
//! while no agent runs, and a restarted agent expects it.

use std::fs;
use std::io;

use tracing::info;

/// Why the pod-facing interfaces need it.
pub(super) const POD_FACING: &str = "node port replies carry the node's address";
/// Why the external interface needs it when masquerading.
pub(super) const MASQUERADING: &str = "masqueraded flows carry the node's address";

/// Switches `accept_local` on for every interface in `ifaces`, logging `why` for those it
/// changed.
pub(super) fn enable(ifaces: &[String], why: &str) -> io::Result<()> {
    let mut changed = Vec::new();
    for iface in ifaces {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
        if fs::read_to_string(&path)?.trim() != "1" {
            fs::write(&path, "1")?;
            changed.push(iface.as_str());
        }
    }
    if !changed.is_empty() {
        info!("enabled accept_local on {} ({why})", changed.join(", "));
    }
    Ok(())
}
