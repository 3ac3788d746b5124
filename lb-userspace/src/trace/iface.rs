//! `lb-agent trace --iface`: the interface a traced packet arrives on, and the hook the agent
//! attached there.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::datapath::link_pin::InvalidIfaceName;
use crate::datapath::TraceHook;

/// Where a traced packet arrives: the hook, and the interface if one was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub hook: TraceHook,
    pub iface: Option<Iface>,
}

/// An interface of the caller's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
}

/// An interface a packet cannot be traced on.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("no interface {0} in this network namespace (trace runs in the node's)")]
    NotFound(String),
    #[error(transparent)]
    InvalidName(#[from] InvalidIfaceName),
    #[error(
        "the agent pinned no link of {iface} in {} (no {iface}-xdp or {iface}-tc): \
         name the hook with --hook",
        links_dir.display()
    )]
    NotAttached { iface: String, links_dir: PathBuf },
    #[error("--hook {asked} disagrees with the {attached} program the agent attached to {iface}")]
    Disagrees {
        iface: String,
        asked: &'static str,
        attached: &'static str,
    },
}

/// The hook's name on the command line and in reports.
pub fn hook_name(hook: TraceHook) -> &'static str {
    match hook {
        TraceHook::Tc => "tc",
        TraceHook::Xdp => "xdp",
    }
}

/// Resolves `iface` in the caller's network namespace and the hook its packets meet: the one
/// the agent's links in `links_dir` say, which `asked` (`--hook`) must agree with; `asked`
/// alone where the agent pinned no link.
pub fn resolve(
    links_dir: &Path,
    iface: &str,
    asked: Option<TraceHook>,
) -> Result<Arrival, IfaceError> {
    let index = ifindex(iface).ok_or_else(|| IfaceError::NotFound(iface.to_string()))?;
    let hook = match (TraceHook::attached(links_dir, iface)?, asked) {
        (Some(attached), Some(asked)) if attached != asked => {
            return Err(IfaceError::Disagrees {
                iface: iface.to_string(),
                asked: hook_name(asked),
                attached: hook_name(attached),
            })
        }
        (Some(hook), _) | (None, Some(hook)) => hook,
        (None, None) => {
            return Err(IfaceError::NotAttached {
                iface: iface.to_string(),
                links_dir: links_dir.to_path_buf(),
            })
        }
    };
    Ok(Arrival {
        hook,
        iface: Some(Iface {
            name: iface.to_string(),
            index,
        }),
    })
}

fn ifindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interface_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(dir.path(), "tracepcap-none", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no interface tracepcap-none in this network namespace (trace runs in the node's)"
        );
    }

    #[test]
    fn the_pinned_link_picks_the_hook_and_hook_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        // Every namespace has a loopback device; its pins here are plain files.
        let err = resolve(dir.path(), "lo", None).unwrap_err();
        assert!(
            err.to_string().contains("name the hook with --hook"),
            "{err}"
        );
        let lo = resolve(dir.path(), "lo", Some(TraceHook::Xdp)).unwrap();
        assert_eq!(lo.hook, TraceHook::Xdp);
        assert_eq!(lo.iface.map(|i| (i.name, i.index)), Some(("lo".into(), 1)));

        std::fs::write(dir.path().join("lo-tc"), "").unwrap();
        assert_eq!(resolve(dir.path(), "lo", None).unwrap().hook, TraceHook::Tc);
        // The external interface: XDP, and the hand-off program's TC link beside it.
        std::fs::write(dir.path().join("lo-xdp"), "").unwrap();
        assert_eq!(
            resolve(dir.path(), "lo", None).unwrap().hook,
            TraceHook::Xdp
        );
        let err = resolve(dir.path(), "lo", Some(TraceHook::Tc)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--hook tc disagrees with the xdp program the agent attached to lo"
        );
    }
}
