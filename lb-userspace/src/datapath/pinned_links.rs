//! Program attachments pinned on bpffs, so they outlive the agent and a restarted agent can
//! swap its new program into them without a moment with no program attached.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use tracing::{debug, warn};

use crate::error::{Chain, DatapathError};

/// Which hook a pinned link attaches to.
#[derive(Clone, Copy, Debug)]
pub(super) enum Hook {
    Tc,
    Xdp,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Tc => "tc",
            Hook::Xdp => "xdp",
        })
    }
}

/// Where the link of `hook` on `iface` is pinned: `<dir>/<iface>-<hook>`.
pub(super) fn pin_path(dir: &Path, iface: &str, hook: Hook) -> PathBuf {
    dir.join(format!("{iface}-{hook}"))
}

/// The link pinned at `pin` by an earlier agent, if there is one. An unreadable pin is
/// removed (with a warning) so a fresh attachment can take its place.
pub(super) fn open(pin: &Path) -> Option<FdLink> {
    match PinnedLink::from_pin(pin) {
        // Converting keeps the pin: the link stays attached whatever happens to this process.
        Ok(link) => Some(FdLink::from(link)),
        Err(_) if !exists(pin) => None,
        Err(e) => {
            discard(pin, &Chain(&e));
            None
        }
    }
}

/// Removes a pinned link that cannot be reused, saying why. Once no process holds the link
/// open, the kernel detaches it.
pub(super) fn discard(pin: &Path, why: &dyn fmt::Display) {
    warn!(
        "pinned link {} cannot be reused ({why}); attaching anew",
        pin.display()
    );
    if let Err(e) = fs::remove_file(pin) {
        debug!("removing {}: {e}", pin.display());
    }
}

/// Pins a fresh attachment at `pin`, replacing whatever was pinned there.
pub(super) fn pin(link: FdLink, pin: &Path) -> Result<(), DatapathError> {
    if let Err(e) = fs::remove_file(pin) {
        if e.kind() != io::ErrorKind::NotFound {
            debug!("removing {}: {e}", pin.display());
        }
    }
    link.pin(pin)
        .map(drop)
        .map_err(|source| DatapathError::PinLink {
            path: pin.to_path_buf(),
            source,
        })
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}
