//! `/healthz`, `/livez` and `/readyz` on the health port (10256), as kube-proxy serves them.
//!
//! kube-proxy's rule: the proxy is healthy while no update waits to be programmed, or while
//! the oldest waiting one is younger than the health timeout (twice the sync period). Start-up
//! counts as a waiting update, so a starting agent is healthy for one timeout and unhealthy
//! if its first sync takes longer. `/livez` answers that alone; `/healthz` also fails while
//! the node is not eligible for load-balancer traffic (being deleted, or tainted
//! `ToBeDeletedByClusterAutoscaler`), so cloud load balancers drain it while the liveness
//! probe leaves the agent running. `/readyz` answers 200 once the first complete desired
//! state is programmed. The bodies are kube-proxy's JSON:
//! `{"lastUpdated": "<RFC 3339 or empty>", "currentTime": "<RFC 3339>"}`, and `/healthz`'s
//! adds `"nodeEligible": true|false`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::http::{self, Body};

/// Sync progress, written by the programming loop and read by the health server.
#[derive(Clone, Debug)]
pub struct SyncHealth {
    times: Arc<Mutex<SyncTimes>>,
    /// The node may get load-balancer traffic; true until the Node says otherwise (and
    /// always without one, in file mode).
    node_eligible: Arc<AtomicBool>,
    timeout: Duration,
}

#[derive(Clone, Copy, Debug)]
struct SyncTimes {
    /// When a desired state was last completely programmed.
    last_updated: Option<SystemTime>,
    /// When the oldest update not yet programmed arrived.
    oldest_pending: Option<Instant>,
}

/// What `/healthz` and `/readyz` report at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    /// No update is overdue (kube-proxy's `/healthz` rule).
    pub healthy: bool,
    /// The first complete desired state has been programmed.
    pub ready: bool,
    /// The node is neither being deleted nor tainted for deletion.
    pub node_eligible: bool,
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
}

impl SyncHealth {
    /// Health of an agent starting at `started`: an update is pending from then on.
    pub fn new(timeout: Duration, started: Instant) -> Self {
        Self {
            times: Arc::new(Mutex::new(SyncTimes {
                last_updated: None,
                oldest_pending: Some(started),
            })),
            node_eligible: Arc::new(AtomicBool::new(true)),
            timeout,
        }
    }

    /// A new desired state arrived at `now` and waits to be programmed.
    pub fn queued(&self, now: Instant) {
        self.lock().oldest_pending.get_or_insert(now);
    }

    /// Everything that was pending is programmed (at `now`).
    pub fn updated(&self, now: SystemTime) {
        let mut times = self.lock();
        times.last_updated = Some(now);
        times.oldest_pending = None;
    }

    /// Whether the node may get load-balancer traffic, from its Node object
    /// ([`crate::k8s::node::node_eligible`]); returns whether that changed.
    pub fn set_node_eligible(&self, eligible: bool) -> bool {
        self.node_eligible.swap(eligible, Ordering::Relaxed) != eligible
    }

    /// The status at `now` (`wall_clock` is the same moment for the JSON body).
    pub fn status(&self, now: Instant, wall_clock: SystemTime) -> HealthStatus {
        let times = *self.lock();
        let healthy = times
            .oldest_pending
            .is_none_or(|since| now.saturating_duration_since(since) < self.timeout);
        HealthStatus {
            healthy,
            ready: times.last_updated.is_some(),
            node_eligible: self.node_eligible.load(Ordering::Relaxed),
            last_updated: times.last_updated,
            current_time: wall_clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SyncTimes> {
        // The data is two plain timestamps: a panicking writer cannot leave it inconsistent.
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl HealthStatus {
    /// `/healthz`: the sync is not overdue and the node is eligible.
    pub fn healthz(&self) -> bool {
        self.healthy && self.node_eligible
    }

    /// kube-proxy's JSON body of `/livez` (and this agent's `/readyz`).
    pub fn json(&self) -> String {
        format!("{{{}}}\n", self.times_json())
    }

    /// kube-proxy's JSON body of `/healthz`: the times and whether the node is eligible.
    pub fn healthz_json(&self) -> String {
        format!(
            "{{{}, \"nodeEligible\": {}}}\n",
            self.times_json(),
            self.node_eligible
        )
    }

    fn times_json(&self) -> String {
        let rfc3339 = |t: SystemTime| {
            Timestamp::try_from(t)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        format!(
            "\"lastUpdated\": \"{}\", \"currentTime\": \"{}\"",
            self.last_updated.map(rfc3339).unwrap_or_default(),
            rfc3339(self.current_time)
        )
    }
}

/// Serves `/healthz`, `/livez` and `/readyz` on `listener` until the returned task is aborted.
pub fn serve(listener: TcpListener, health: SyncHealth) -> JoinHandle<()> {
    http::serve(listener, move |request| respond(health.clone(), request))
}

/// Answers `GET /healthz`, `/livez` and `/readyz`; 404 for other paths, 405 for other
/// methods.
async fn respond(health: SyncHealth, request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return http::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    let status = health.status(Instant::now(), SystemTime::now());
    let (ok, body) = match request.uri().path() {
        "/healthz" => (status.healthz(), status.healthz_json()),
        "/livez" => (status.healthy, status.json()),
        "/readyz" => (status.ready, status.json()),
        _ => {
            return http::text(
                StatusCode::NOT_FOUND,
                "try /healthz, /livez or /readyz\n".into(),
            )
        }
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    http::json(code, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    #[test]
    fn starting_is_healthy_for_one_timeout_and_never_ready() {
        let start = Instant::now();
        let health = SyncHealth::new(TIMEOUT, start);
        let early = health.status(start + TIMEOUT / 2, SystemTime::UNIX_EPOCH);
        assert!(early.healthy && !early.ready);
        let late = health.status(start + TIMEOUT, SystemTime::UNIX_EPOCH);
        assert!(!late.healthy && !late.ready);
    }

    #[test]
    fn a_programmed_state_is_ready_and_healthy_until_an_update_is_overdue() {
        let start = Instant::now();
        let health = SyncHealth::new(TIMEOUT, start);
        health.updated(SystemTime::UNIX_EPOCH);
        let synced = health.status(start + TIMEOUT * 10, SystemTime::UNIX_EPOCH);
        assert!(synced.healthy && synced.ready);

        let queued_at = start + TIMEOUT * 10;
        health.queued(queued_at);
        // A later update does not reset the age of the oldest one.
        health.queued(queued_at + TIMEOUT / 2);
        assert!(
            health
                .status(queued_at + TIMEOUT / 2, SystemTime::UNIX_EPOCH)
                .healthy
        );
        let overdue = health.status(queued_at + TIMEOUT, SystemTime::UNIX_EPOCH);
        assert!(!overdue.healthy && overdue.ready);

        health.updated(SystemTime::UNIX_EPOCH);
        assert!(
            health
                .status(queued_at + TIMEOUT * 2, SystemTime::UNIX_EPOCH)
                .healthy
        );
    }

    #[test]
    fn the_body_has_kube_proxys_fields() {
        let status = HealthStatus {
            healthy: true,
            ready: true,
            node_eligible: true,
            last_updated: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1)),
            current_time: SystemTime::UNIX_EPOCH + Duration::from_secs(2),
        };
        assert_eq!(
            status.json(),
            "{\"lastUpdated\": \"1970-01-01T00:00:01Z\", \"currentTime\": \
             \"1970-01-01T00:00:02Z\"}\n"
        );
        let never = HealthStatus {
            last_updated: None,
            ..status
        };
        assert!(never.json().starts_with("{\"lastUpdated\": \"\","));
        let draining = HealthStatus {
            node_eligible: false,
            ..status
        };
        assert_eq!(
            draining.healthz_json(),
            "{\"lastUpdated\": \"1970-01-01T00:00:01Z\", \"currentTime\": \
             \"1970-01-01T00:00:02Z\", \"nodeEligible\": false}\n"
        );
    }

    #[test]
    fn healthz_fails_while_the_node_is_not_eligible_and_livez_does_not() {
        let start = Instant::now();
        let health = SyncHealth::new(TIMEOUT, start);
        health.updated(SystemTime::UNIX_EPOCH);
        let status = |health: &SyncHealth| health.status(start, SystemTime::UNIX_EPOCH);
        assert!(status(&health).healthz());

        assert!(health.set_node_eligible(false));
        assert!(!health.set_node_eligible(false), "no change");
        let draining = status(&health);
        assert!(!draining.healthz() && draining.healthy && draining.ready);

        assert!(health.set_node_eligible(true));
        assert!(status(&health).healthz());
    }
}
