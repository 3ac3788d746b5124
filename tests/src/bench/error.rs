//! Why a benchmark could not run (never a slow number: numbers are only reported).

use std::{io, time::Duration};

use aya::{maps::MapError, programs::ProgramError};
use lb_userspace::datapath::DatapathError;
use lb_userspace::reconciler::ReconcileError;

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Harness(#[from] crate::Error),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("the API server refused a change: {0}")]
    Api(#[from] crate::apiserver::ApiError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{context}: {source}")]
    Map {
        context: String,
        #[source]
        source: MapError,
    },
    #[error("{context}: {source}")]
    Program {
        context: String,
        #[source]
        source: ProgramError,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    /// The harness did not do what it should (e.g. no request reached the service).
    #[error("benchmark check failed: {0}")]
    Check(String),
    #[error("cannot draw {path}: {message}")]
    Plot { path: String, message: String },
}

/// Result of benchmark steps.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Returns a closure wrapping an `io::Error` with what was being done.
pub(crate) fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

/// Returns a closure wrapping a `MapError` with what was being done.
pub(crate) fn map_context(context: impl Into<String>) -> impl FnOnce(MapError) -> BenchError {
    let context = context.into();
    move |source| BenchError::Map { context, source }
}
