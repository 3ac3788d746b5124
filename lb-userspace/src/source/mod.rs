//! Where the desired state comes from: a manifests directory ([`files`]) or the Kubernetes
//! API server ([`api`]).
//!
//! Each source runs as a task that turns its objects into a complete [`DesiredState`] and
//! publishes it on a watch channel whenever it changes; the agent programs only the latest
//! one (intermediate states are skipped, the reconciler diffs against what it wrote). A
//! source publishes nothing until it has seen every object once, so a half-listed cluster is
//! never programmed.

pub mod api;
pub mod files;

use std::sync::Arc;

use tokio::sync::watch;

use crate::model::DesiredState;

/// The latest complete desired state of a source; `None` until its first one.
pub type DesiredStates = watch::Receiver<Option<Arc<DesiredState>>>;

/// The sending side of [`DesiredStates`].
type Publisher = watch::Sender<Option<Arc<DesiredState>>>;

fn channel() -> (Publisher, DesiredStates) {
    watch::channel(None)
}
