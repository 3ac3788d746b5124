//! Where the desired state comes from: a manifests directory ([`files`]) or the Kubernetes
//! API server ([`api`]).
//!
//! Each source runs as a task that turns its objects into a complete [`DesiredState`] and
//! publishes it, with the frontends that changed, whenever something changes. The agent takes
//! only the latest state, with every change since it last took one merged ([`DesiredStates`]),
//! so intermediate states are skipped and the reconciler looks only at what changed. A source
//! publishes nothing until it has seen every object once, so a half-listed cluster is never
//! programmed.

pub mod api;
pub mod files;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::model::{Changed, DesiredState};

/// A complete desired state and the frontends that changed since the source's previous one.
#[derive(Clone, Debug)]
pub struct Update {
    pub state: Arc<DesiredState>,
    pub changed: Changed,
}

impl Update {
    /// Takes the state of `later`, keeping the changes of both.
    pub fn merge(&mut self, later: Update) {
        self.changed.merge(later.changed);
        self.state = later.state;
    }
}

#[derive(Default)]
struct Shared {
    /// The latest update not taken yet, with the changes of the ones it replaced.
    pending: Mutex<Option<Update>>,
    notify: Notify,
    /// The source has stopped.
    closed: AtomicBool,
}

/// The agent's end: the latest update of a source.
pub struct DesiredStates(Arc<Shared>);

/// The source's end.
struct Publisher(Arc<Shared>);

fn channel() -> (Publisher, DesiredStates) {
    let shared = Arc::new(Shared::default());
    (Publisher(Arc::clone(&shared)), DesiredStates(shared))
}

impl Publisher {
    /// Makes `update` the latest one, keeping the changes of one not taken yet.
    fn publish(&self, update: Update) {
        let mut pending = self
            .0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match pending.as_mut() {
            Some(waiting) => waiting.merge(update),
            None => *pending = Some(update),
        }
        drop(pending);
        self.0.notify.notify_one();
    }

    /// Whether the agent's end is gone.
    fn is_closed(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.notify.notify_one();
    }
}

impl DesiredStates {
    /// The next update; `None` once the source has stopped.
    pub async fn next(&mut self) -> Option<Update> {
        loop {
            let taken = self
                .0
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if taken.is_some() {
                return taken;
            }
            if self.0.closed.load(Ordering::Acquire) {
                return None;
            }
            self.0.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::{Frontend, Protocol};

    fn changed(ports: &[u16]) -> Changed {
        let frontend = |port| Frontend {
            addr: "198.19.0.10".parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        };
        Changed::Frontends(ports.iter().copied().map(frontend).collect::<BTreeSet<_>>())
    }

    #[tokio::test]
    async fn updates_not_taken_yet_merge_into_the_latest() {
        let (publisher, mut states) = channel();
        publisher.publish(Update {
            state: Arc::new(DesiredState::default()),
            changed: changed(&[80]),
        });
        let latest = Arc::new(DesiredState::default());
        publisher.publish(Update {
            state: Arc::clone(&latest),
            changed: changed(&[81]),
        });
        let update = states.next().await.unwrap();
        assert!(Arc::ptr_eq(&update.state, &latest));
        assert_eq!(update.changed, changed(&[80, 81]));

        publisher.publish(Update {
            state: latest,
            changed: Changed::Everything,
        });
        assert_eq!(states.next().await.unwrap().changed, Changed::Everything);
        drop(publisher);
        assert!(states.next().await.is_none(), "the source stopped");
    }
}
