//! File source: the manifests directory, read every poll interval.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{error, info};

use super::{channel, DesiredStates, Update};
use crate::error::Chain;
use crate::manifests::ManifestDir;
use crate::metrics::SyncMetrics;
use crate::model::{Changed, DesiredState};

/// Polls `dir` in a task and publishes each changed state. Read errors are logged (once until
/// they change) and keep the last state. The number of invalid objects goes to `metrics`.
/// `service_cidrs` (`--service-cidrs`) go into every state.
pub fn spawn(
    mut dir: ManifestDir,
    poll_interval: Duration,
    service_cidrs: BTreeSet<IpNet>,
    metrics: SyncMetrics,
) -> (JoinHandle<()>, DesiredStates) {
    let (publisher, states) = channel();
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(poll_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut dir_error = None;
        while !publisher.is_closed() {
            ticker.tick().await;
            match dir.poll() {
                Ok(Some(sync)) => {
                    dir_error = None;
                    for e in &sync.errors {
                        error!("{e}");
                    }
                    info!(
                        "manifests changed: {} services, {} endpoint slices, {} invalid objects \
                         skipped",
                        sync.services, sync.endpoint_slices, sync.invalid_objects
                    );
                    metrics.invalid_objects(sync.invalid_objects);
                    // The directory is translated whole: the reconciler compares every frontend.
                    let state = DesiredState {
                        service_cidrs: service_cidrs.clone(),
                        ..sync.state
                    };
                    publisher.publish(Update {
                        state: Arc::new(state),
                        changed: Changed::Everything,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    let message = Chain(&e).to_string();
                    if dir_error.as_ref() != Some(&message) {
                        error!("{message}; keeping what is programmed");
                        dir_error = Some(message);
                    }
                }
            }
        }
    });
    (task, states)
}
