//! Errors of the eBPF data path: loading, attaching, pinning and reading it.

use std::error::Error;
use std::path::PathBuf;

use aya::maps::MapError;
use aya::pin::PinError;
use aya::programs::ProgramError;

use crate::error::{is_permission_denied, PRIVILEGE_HINT};

/// Loading, attaching, pinning or reading the eBPF data path failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{action} {PRIVILEGE_HINT}")]
    PermissionDenied {
        action: String,
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    #[error(transparent)]
    Capacity(#[from] lb_common::capacity::CapacityRangeError),
    #[error("loading the embedded eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program `{0}` of the expected type")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("loading program `{program}` into the kernel failed")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching `{program}` to interface {iface} failed")]
    Attach {
        program: &'static str,
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("cannot open cgroup {path} for socket-level translation")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is not a cgroup v2 directory, and holds none at unified/ (a hybrid host's \
         /sys/fs/cgroup): socket-level translation attaches to cgroup v2 only"
    )]
    NotCgroup2(PathBuf),
    #[error("attaching `{program}` to cgroup {cgroup} failed")]
    AttachCgroup {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    #[error("map `{map}` does not have the layout lb-common expects")]
    MapLayout {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("pinning map `{map}` at {path} failed")]
    Pin {
        map: &'static str,
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error(transparent)]
    IfaceName(#[from] super::link_pin::InvalidIfaceName),
    #[error(transparent)]
    MapWrite(#[from] crate::reconciler::MapWriteError),
    #[error("pinning the program link at {path} failed")]
    PinLink {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("no pinned maps at {0}: is `lb-agent run` running with the same --bpffs-dir?")]
    NotPinned(PathBuf),
    #[error("opening pinned map {path} failed")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("reading map `{map}` failed")]
    Read {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("clearing map `{map}` failed")]
    Clear {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("deleting from map `{map}` failed")]
    Delete {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

impl DatapathError {
    /// Turns `EPERM` anywhere in `source`'s chain into [`DatapathError::PermissionDenied`];
    /// any other error is wrapped by `otherwise`.
    pub(crate) fn or_permission_denied<E>(
        action: impl Into<String>,
        source: E,
        otherwise: impl FnOnce(E) -> DatapathError,
    ) -> DatapathError
    where
        E: Error + Send + Sync + 'static,
    {
        if is_permission_denied(&source) {
            DatapathError::PermissionDenied {
                action: action.into(),
                source: Box::new(source),
            }
        } else {
            otherwise(source)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn eperm_deep_in_the_chain_is_found() {
        let create = MapError::CreateError {
            name: "LB_SERVICES".into(),
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        };
        let err = aya::EbpfError::MapError(create);
        assert!(is_permission_denied(&err));
        let mapped = DatapathError::or_permission_denied("loading", err, DatapathError::Load);
        assert_eq!(
            mapped.to_string(),
            "loading needs root or CAP_BPF+CAP_NET_ADMIN"
        );

        let other = aya::EbpfError::MapError(MapError::CreateError {
            name: "LB_SERVICES".into(),
            io_error: io::Error::from_raw_os_error(libc::EINVAL),
        });
        assert!(!is_permission_denied(&other));
        let mapped = DatapathError::or_permission_denied("loading", other, DatapathError::Load);
        assert!(matches!(mapped, DatapathError::Load(_)));
    }
}
