//! The harness's error type.

use std::{io, path::PathBuf, time::Duration};

/// Why a harness operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error(
        "lb-agent binary not found (looked at {}); build it with `cargo build -p lb-userspace` \
         (`cargo xtask test` does)",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    AgentNotBuilt(Vec<PathBuf>),
    #[error("cannot make the API server's certificates: {0}")]
    Certificates(String),
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("lb-agent exited ({status}) while waiting for {what}; its log:\n{log}")]
    AgentExited {
        status: String,
        what: String,
        log: String,
    },
}

/// Result of harness operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Returns a closure wrapping an `io::Error` with what was being done.
pub(crate) fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
