//! Prometheus metrics on the metrics port (10249, as kube-proxy's), under `/metrics`.
//!
//! Names follow kube-proxy's and Cilium's conventions with the `lbagent_` prefix: counters end
//! in `_total`, durations are in seconds. What the programming loop does is recorded as it
//! happens ([`SyncMetrics`]); the maps' counters are read on each scrape, on a blocking thread so
//! the programming loop never waits for a scrape. The conntrack fill level is the count the
//! garbage collector's last walk kept ([`ConntrackGcMetrics`]): a scrape reads no conntrack
//! entry.

mod conntrack_gc;
mod datapath;
pub(crate) mod http;
mod sync;

use std::path::Path;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::datapath::DatapathError;
pub use conntrack_gc::ConntrackGcMetrics;
use datapath::DatapathCollector;
use http::Body;
pub use http::{listen, ListenError};
pub use sync::{CountedServices, SyncMetrics};

/// Content type of the text the registry encodes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The agent's metrics, before the maps are added at [`Metrics::serve`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync: SyncMetrics,
    conntrack_gc: ConntrackGcMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let sync = SyncMetrics::register(&mut registry);
        let conntrack_gc = ConntrackGcMetrics::register(&mut registry);
        Self {
            registry,
            sync,
            conntrack_gc,
        }
    }
}

impl Metrics {
    /// The recorder for the programming loop and the sources.
    pub fn sync(&self) -> SyncMetrics {
        self.sync.clone()
    }

    /// The recorder for the conntrack garbage collector.
    pub fn conntrack_gc(&self) -> ConntrackGcMetrics {
        self.conntrack_gc.clone()
    }

    /// Adds the maps pinned in `pins` and serves `/metrics` on `listener` until the returned
    /// task is aborted.
    pub fn serve(
        mut self,
        listener: TcpListener,
        pins: &Path,
        conntrack_capacity: u32,
    ) -> Result<JoinHandle<()>, DatapathError> {
        let collector = DatapathCollector::open(
            pins,
            conntrack_capacity,
            self.sync.counted_services(),
            self.conntrack_gc.last_walk(),
        )?;
        self.registry.register_collector(Box::new(collector));
        let registry = Arc::new(self.registry);
        Ok(http::serve(listener, move |request| {
            respond(registry.clone(), request)
        }))
    }
}

async fn respond(registry: Arc<Registry>, request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return http::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    if request.uri().path() != "/metrics" {
        return http::text(StatusCode::NOT_FOUND, "try /metrics\n".into());
    }
    let encoded = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        encode(&mut text, &registry).map(|()| text)
    })
    .await;
    match encoded {
        Ok(Ok(text)) => http::response(StatusCode::OK, OPENMETRICS, text),
        Ok(Err(_)) | Err(_) => http::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n".into(),
        ),
    }
}
