//! `net.ipv4.conf.<iface>.accept_local` on the pod-facing interfaces.
//!
//! The TC program translates a backend's reply back to the frontend it was sent to. For a
//! node port that frontend is one of the node's own addresses, so the reply enters the node
//! from the pod's veth with a local source address, and the kernel drops such packets as
//! martians unless `accept_local` is set on the interface they arrive on.

use std::fs;
use std::io;
use std::path::PathBuf;

use tracing::{info, warn};

/// The interfaces whose `accept_local` was switched on, with their previous values;
/// restored on drop.
pub(super) struct AcceptLocal {
    changed: Vec<(PathBuf, String)>,
}

impl AcceptLocal {
    /// Switches `accept_local` on for every interface in `ifaces`.
    pub(super) fn enable(ifaces: &[String]) -> io::Result<AcceptLocal> {
        let mut guard = AcceptLocal {
            changed: Vec::new(),
        };
        for iface in ifaces {
            let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"));
            let previous = fs::read_to_string(&path)?.trim().to_string();
            if previous != "1" {
                fs::write(&path, "1")?;
                guard.changed.push((path, previous));
            }
        }
        if !guard.changed.is_empty() {
            info!(
                "enabled accept_local on {} (node port replies carry the node's address)",
                ifaces.join(", ")
            );
        }
        Ok(guard)
    }
}

impl Drop for AcceptLocal {
    fn drop(&mut self) {
        for (path, previous) in &self.changed {
            if let Err(e) = fs::write(path, previous) {
                warn!("restoring {} to {previous} failed: {e}", path.display());
            }
        }
    }
}
