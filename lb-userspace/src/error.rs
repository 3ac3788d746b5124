//! Error types of the library. The binary adds context with `anyhow` at its edges.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Hint shown whenever the kernel refuses an operation with `EPERM`.
pub const PRIVILEGE_HINT: &str = "needs root or CAP_BPF+CAP_NET_ADMIN";

/// Whether an `EPERM` appears anywhere in the error's source chain.
pub fn is_permission_denied(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// A field of a Kubernetes object that cannot be programmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// Path of the field, e.g. `spec.ports[1].port`.
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// An object that cannot be programmed: which one, where it came from and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}{kind} {namespace}/{name}: {error}",
    file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default()
)]
pub struct ObjectError {
    /// The manifest file it was read from; `None` for objects from the API server.
    pub file: Option<PathBuf>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub error: FieldError,
}

/// An object version that was skipped; its last valid version, if any, stays in effect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{error} (object skipped{})",
    if *kept_previous { "; its last valid version stays in effect" } else { "" }
)]
pub struct SkippedObject {
    pub error: ObjectError,
    pub kept_previous: bool,
}

/// A problem in the manifests; what was in effect before stays in effect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    InvalidObject(SkippedObject),
    #[error("{}: {message} (keeping the file's last good objects)", path.display())]
    InvalidFile { path: PathBuf, message: String },
    #[error(
        "{}: {kind} {namespace}/{name} is already defined in {}; ignored",
        path.display(),
        first.display()
    )]
    Duplicate {
        path: PathBuf,
        kind: String,
        namespace: String,
        name: String,
        first: PathBuf,
    },
}

/// The Kubernetes API source could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiSourceError {
    #[error("loading the kubeconfig from {from} failed")]
    Kubeconfig {
        from: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no kubeconfig (--kubeconfig or KUBECONFIG) and no in-cluster service account to talk \
         to the Kubernetes API; use --manifests DIR for file mode"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("creating the Kubernetes client failed")]
    Client(#[source] kube::Error),
}

/// Reading the manifests directory failed.
#[derive(Debug, thiserror::Error)]
#[error("reading manifests directory {} failed", dir.display())]
pub struct ManifestDirError {
    pub dir: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Preparing the BPF filesystem for pins failed.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("mounting bpffs at {} failed ({PRIVILEGE_HINT})", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("an lb-agent is running with --bpffs-dir {}; stop it first", path.display())]
    InUse { path: PathBuf },
    #[error("{} is not on a BPF filesystem (bpffs); choose a --bpffs-dir under a bpffs mount", path.display())]
    NotBpffs { path: PathBuf },
    #[error("{action} {} {PRIVILEGE_HINT}", path.display())]
    PermissionDenied {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{action} {} failed", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BpffsError {
    /// An I/O error while `action` (e.g. "creating") `path`, with the privilege hint when the
    /// kernel refused it.
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::PermissionDenied => Self::PermissionDenied {
                action,
                path,
                source,
            },
            _ => Self::Io {
                action,
                path,
                source,
            },
        }
    }
}

/// Displays an error followed by each of its sources: `outer: inner: root cause`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("pinning map `LB_SLOTS` failed")]
    struct Outer(#[source] io::Error);

    #[test]
    fn chain_shows_every_cause() {
        let err = Outer(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            Chain(&err).to_string(),
            "pinning map `LB_SLOTS` failed: Operation not permitted (os error 1)"
        );
        assert!(is_permission_denied(&err));
    }
}
