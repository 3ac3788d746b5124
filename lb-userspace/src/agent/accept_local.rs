//! `net.ipv4.conf.<iface>.accept_local` on the pod-facing interfaces and, with masquerading,
//! on the external one: what the kernel reply path (`--reply-path kernel`) needs. The
//! redirect reply path, the default, sends these packets on from the programs and needs none.
//!
//! The TC program translates a backend's reply back to the frontend it was sent to. For a
//! node port that frontend is one of the node's own addresses, so the reply enters the node
//! from the pod's veth with a local source address, and the kernel drops such packets as
//! martians unless `accept_local` is set on the interface they arrive on. A masqueraded flow
//! does the same on the external interface, in both directions: the XDP program gives the
//! request the node's address as its source, and a remote backend's reply a node port's.
//!
//! The kernel ORs `net.ipv4.conf.all.accept_local` with the interface's own, so where `all`
//! is 1 nothing is written. Inside a container `/proc/sys` is read-only: the agent then
//! writes through the node's `/proc/sys/net` mounted elsewhere (`--proc-sys-net-dir`), and
//! says in one line which setting to grant when it cannot.
//!
//! The setting stays on when the agent exits: the pinned programs keep translating replies
//! while no agent runs, and a restarted agent expects it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

/// Default `--proc-sys-net-dir`: the `net.*` sysctls of the agent's own network namespace.
pub const DEFAULT_PROC_SYS_NET_DIR: &str = "/proc/sys/net";

/// Why the pod-facing interfaces need it.
pub(super) const POD_FACING: &str = "node port replies carry the node's address";
/// Why the external interface needs it when masquerading.
pub(super) const MASQUERADING: &str = "masqueraded flows carry the node's address";

/// `accept_local` could not be switched on for an interface.
#[derive(Debug, thiserror::Error)]
pub enum AcceptLocalError {
    /// The agent may not write it: the one line names the setting and how to grant it.
    #[error(
        "net.ipv4.conf.{iface}.accept_local must be 1 ({why}), but {} is not writable here \
         ({error}) with --reply-path kernel: use --reply-path redirect, which needs no sysctl, \
         mount the node's /proc/sys/net writable into the container and pass \
         --proc-sys-net-dir, or set it on the node (sysctl -w \
         net.ipv4.conf.{iface}.accept_local=1, or net.ipv4.conf.all.accept_local=1 for every \
         interface)",
        path.display()
    )]
    NotPermitted {
        iface: String,
        why: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{} (net.ipv4.conf.{iface}.accept_local): {error}", path.display())]
    Io {
        iface: String,
        path: PathBuf,
        error: io::Error,
    },
}

/// Switches `accept_local` on for every interface in `ifaces`, through the `net.*` sysctls
/// under `proc_sys_net`, logging `why` for those it changed.
pub(super) fn enable(
    proc_sys_net: &Path,
    ifaces: &[String],
    why: &'static str,
) -> Result<(), AcceptLocalError> {
    let conf = proc_sys_net.join("ipv4/conf");
    if is_on(&conf.join("all/accept_local")) {
        debug!("net.ipv4.conf.all.accept_local is 1: every interface accepts local sources");
        return Ok(());
    }
    let mut changed = Vec::new();
    for iface in ifaces {
        let path = conf.join(iface).join("accept_local");
        let io_error = |error: io::Error| AcceptLocalError::Io {
            iface: iface.clone(),
            path: path.clone(),
            error,
        };
        if fs::read_to_string(&path).map_err(io_error)?.trim() == "1" {
            continue;
        }
        fs::write(&path, "1").map_err(|error| match error.raw_os_error() {
            Some(libc::EROFS | libc::EACCES | libc::EPERM) => AcceptLocalError::NotPermitted {
                iface: iface.clone(),
                why,
                path: path.clone(),
                error,
            },
            _ => io_error(error),
        })?;
        changed.push(iface.as_str());
    }
    if !changed.is_empty() {
        info!("enabled accept_local on {} ({why})", changed.join(", "));
    }
    Ok(())
}

fn is_on(path: &Path) -> bool {
    fs::read_to_string(path).is_ok_and(|value| value.trim() == "1")
}
