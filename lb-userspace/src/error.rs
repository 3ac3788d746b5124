//! What the errors of every layer share: the `EPERM` check, its hint and [`Chain`] for
//! displaying a whole source chain. Each layer owns its error types, as aya's modules do
//! (e.g. [`crate::datapath::DatapathError`], [`crate::reconciler::ReconcileError`],
//! [`crate::objects::SkippedObject`]), so this module imports none of them. The binary adds
//! context with `anyhow` at its edges.

use std::error::Error;
use std::fmt;
use std::io;

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
