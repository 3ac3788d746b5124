//! `/healthz` and `/readyz` on the health port (10256), as kube-proxy serves them.
//!
//! kube-proxy's rule: the proxy is healthy while no update waits to be programmed, or while
//! the oldest waiting one is younger than the health timeout (twice the sync period). Start-up
//! counts as a waiting update, so a starting agent is healthy for one timeout and unhealthy
//! if its first sync takes longer. `/readyz` answers 200 once the first complete desired state
//! is programmed. Both bodies are kube-proxy's JSON:
//! `{"lastUpdated": "<RFC 3339 or empty>", "currentTime": "<RFC 3339>"}`.

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

    /// The status at `now` (`wall_clock` is the same moment for the JSON body).
    pub fn status(&self, now: Instant, wall_clock: SystemTime) -> HealthStatus {
        let times = *self.lock();
        let healthy = times
            .oldest_pending
            .is_none_or(|since| now.saturating_duration_since(since) < self.timeout);
        HealthStatus {
            healthy,
            ready: times.last_updated.is_some(),
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
    /// kube-proxy's JSON body.
    pub fn json(&self) -> String {
        let rfc3339 = |t: SystemTime| {
            Timestamp::try_from(t)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        format!(
            "{{\"lastUpdated\": \"{}\", \"currentTime\": \"{}\"}}\n",
            self.last_updated.map(rfc3339).unwrap_or_default(),
            rfc3339(self.current_time)
        )
    }
}

/// Serves `/healthz` and `/readyz` on `listener` until the returned task is aborted.
pub fn serve(listener: TcpListener, health: SyncHealth) -> JoinHandle<()> {
    http::serve(listener, move |request| respond(health.clone(), request))
}

/// Answers `GET /healthz` and `GET /readyz`; 404 for other paths, 405 for other methods.
async fn respond(health: SyncHealth, request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return http::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    let status = health.status(Instant::now(), SystemTime::now());
    let ok = match request.uri().path() {
        "/healthz" | "/livez" => status.healthy,
        "/readyz" => status.ready,
        _ => return http::text(StatusCode::NOT_FOUND, "try /healthz or /readyz\n".into()),
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    http::json(code, status.json())
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
    }
}
