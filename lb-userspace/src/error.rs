//! Error types of the library. The binary adds context with `anyhow` at its edges.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::PathBuf;

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
