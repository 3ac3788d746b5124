//! Program attachments pinned on bpffs, so they outlive the agent and a restarted agent can
//! swap its new program into them without a moment with no program attached.

use std::error::Error;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::ProgramError;
use tracing::{debug, info, warn};

use super::link_pin::{Hook, InvalidIfaceName, LinkPin};
use super::DatapathError;
use crate::error::Chain;

/// Where the link of `hook` on `iface` is pinned: `<dir>/<iface>-<hook>`, each `.` of
/// `iface` written as `:` ([`LinkPin`]).
pub(super) fn pin_path(dir: &Path, iface: &str, hook: Hook) -> Result<PathBuf, InvalidIfaceName> {
    Ok(dir.join(LinkPin::new(iface, hook).file_name()?))
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

/// Swaps the new program into the link an earlier agent pinned at `pin`: converts it with
/// `L::try_from` and hands it to `replace` (the program's `attach_to_link`, which updates the
/// link in place); whether it did. A pin that cannot be reused is discarded, and the caller
/// attaches anew.
pub(super) fn reuse<L, T>(pin: &Path, replace: impl FnOnce(L) -> Result<T, ProgramError>) -> bool
where
    L: TryFrom<FdLink>,
    L::Error: Error + 'static,
{
    let Some(link) = open(pin) else {
        return false;
    };
    let replaced = match L::try_from(link) {
        Ok(link) => replace(link).map_err(|e| Chain(&e).to_string()),
        Err(e) => Err(Chain(&e).to_string()),
    };
    match replaced {
        Ok(_) => true,
        Err(why) => {
            discard(pin, &why);
            false
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

/// Removes a pin whose link is of no more use (its interface vanished).
pub(super) fn remove(pin: &Path) {
    match fs::remove_file(pin) {
        Ok(()) => debug!("removed pin {}", pin.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!("removing pin {} failed: {e}", pin.display()),
    }
}

/// Removes the pins in `dir` of links whose interface no longer exists (deleted while no
/// agent ran); the kernel had already detached those links.
pub(super) fn remove_vanished(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let Some(pin) = LinkPin::parse(&file_name) else {
            continue;
        };
        if !iface_exists(&pin.iface) {
            info!(
                "interface {} is gone: removing its pinned link {file_name}",
                pin.iface
            );
            remove(&entry.path());
        }
    }
}

fn iface_exists(name: &str) -> bool {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c_name` is a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}
