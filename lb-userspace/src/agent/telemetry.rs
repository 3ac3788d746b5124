//! The agent's metrics and health ports, started once the maps are pinned.

use std::path::Path;
use std::time::Instant;

use tokio::task::JoinHandle;
use tracing::info;

use super::{AgentError, RunConfig};
use crate::health::{self, SyncHealth};
use crate::metrics::{self, ConntrackGcMetrics, Metrics, SyncMetrics};

/// The running metrics and health servers and the recorders feeding them; the servers stop
/// when this is dropped.
pub(super) struct Telemetry {
    sync: SyncMetrics,
    conntrack_gc: ConntrackGcMetrics,
    health: SyncHealth,
    servers: [JoinHandle<()>; 2],
}

impl Telemetry {
    /// Serves `/metrics` (reading the maps pinned in `pins`) on `--metrics-addr` and
    /// `/healthz` and `/readyz` on `--healthz-addr`.
    pub(super) async fn start(config: &RunConfig, pins: &Path) -> Result<Self, AgentError> {
        let started = Instant::now();
        let metrics_listener =
            metrics::listen(config.metrics_addr, "metrics", "--metrics-addr").await?;
        let health_listener =
            metrics::listen(config.healthz_addr, "health checks", "--healthz-addr").await?;
        let registry = Metrics::default();
        let sync = registry.sync();
        let conntrack_gc = registry.conntrack_gc();
        // kube-proxy's health timeout: two sync periods.
        let health = SyncHealth::new(config.resync_interval * 2, started);
        let servers = [
            registry.serve(metrics_listener, pins, config.capacities.conntrack)?,
            health::serve(health_listener, health.clone()),
        ];
        info!(
            "serving /metrics on {} and /healthz, /readyz on {}",
            config.metrics_addr, config.healthz_addr
        );
        Ok(Self {
            sync,
            conntrack_gc,
            health,
            servers,
        })
    }

    /// The recorder for programming runs and sources.
    pub(super) fn sync(&self) -> SyncMetrics {
        self.sync.clone()
    }

    /// The recorder for the conntrack garbage collector.
    pub(super) fn conntrack_gc(&self) -> ConntrackGcMetrics {
        self.conntrack_gc.clone()
    }

    /// The sync state `/healthz` and `/readyz` report.
    pub(super) fn health(&self) -> SyncHealth {
        self.health.clone()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}
