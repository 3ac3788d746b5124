//! `healthCheckNodePort`s: for each LoadBalancer Service with `externalTrafficPolicy: Local`,
//! an HTTP server on its health check node port that tells a cloud load balancer whether
//! this node should get the Service's traffic, as kube-proxy's service health server does
//! (`pkg/proxy/healthcheck/service_health.go`).
//!
//! Every path and method gets 200 while the Service has ready endpoints on this node and the
//! agent is healthy (kube-proxy's sync rule, [`crate::health`]; the Node's eligibility does
//! not count here, as in kube-proxy), 503 otherwise, with kube-proxy's JSON body and headers.
//! Ports follow the desired state as programmed: they open and close, and their counts change,
//! after a desired state is completely written to the maps. They listen where kube-proxy's
//! do: on each address that serves node ports (`--nodeport-addresses`), or on every address
//! of a family (`0.0.0.0`, `::` IPv6-only beside it) when the setting matches them all; a
//! port reopens when those change. A port
//! that cannot be opened on one of its addresses (another process holds it) is closed on the
//! others, logged, counted and tried again at every later sync and resync; the agent keeps
//! running.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hyper::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::health::SyncHealth;
use crate::metrics::http::{self, Body};
use crate::metrics::SyncMetrics;
use crate::model::HealthCheck;
use crate::objects::ObjectKey;

/// The health check node ports the agent serves.
pub(super) struct HealthCheckPorts {
    health: SyncHealth,
    metrics: SyncMetrics,
    /// The health checks last synced: an update holding the same `Arc` changed none.
    synced: Arc<BTreeMap<ObjectKey, HealthCheck>>,
    ports: BTreeMap<ObjectKey, Port>,
}

/// One Service's port.
struct Port {
    port: u16,
    /// Where it listens.
    addrs: Arc<[IpAddr]>,
    /// Read by the server at each request.
    local_endpoints: Arc<AtomicUsize>,
    /// One per address; `None` while the port could not be opened.
    servers: Option<Vec<JoinHandle<()>>>,
    /// Whether a failure to open it was logged at warn (later ones go to debug).
    reported: bool,
}

impl HealthCheckPorts {
    pub(super) fn new(health: SyncHealth, metrics: SyncMetrics) -> Self {
        Self {
            health,
            metrics,
            synced: Arc::default(),
            ports: BTreeMap::new(),
        }
    }

    /// Serves exactly `wanted` (the health checks of a desired state just programmed): closes
    /// the ports of Services gone or moved first, so a port another Service takes over is
    /// free, then opens new ones; tries ports that could not be opened again.
    pub(super) async fn sync(&mut self, wanted: &Arc<BTreeMap<ObjectKey, HealthCheck>>) {
        if !Arc::ptr_eq(&self.synced, wanted) {
            let gone: Vec<ObjectKey> = self
                .ports
                .iter()
                .filter(|(service, port)| {
                    let check = wanted.get(service);
                    check.is_none_or(|c| c.port != port.port || c.addrs != port.addrs)
                })
                .map(|(service, _)| service.clone())
                .collect();
            for service in gone {
                if let Some(port) = self.ports.remove(&service) {
                    port.close(&service).await;
                }
            }
            for (service, check) in wanted.iter() {
                let port = self.ports.entry(service.clone()).or_insert_with(|| Port {
                    port: check.port,
                    addrs: Arc::clone(&check.addrs),
                    local_endpoints: Arc::default(),
                    servers: None,
                    reported: false,
                });
                port.local_endpoints
                    .store(check.local_endpoints, Ordering::Relaxed);
            }
            self.synced = Arc::clone(wanted);
        }
        self.open_unbound().await;
    }

    /// Tries again to open the ports that could not be opened.
    pub(super) async fn open_unbound(&mut self) {
        for (service, port) in &mut self.ports {
            if port.servers.is_none() {
                port.open(service, &self.health).await;
            }
        }
        let serving = self.ports.values().filter(|p| p.servers.is_some()).count();
        self.metrics
            .health_check_ports(serving, self.ports.len() - serving);
    }
}

/// A listener on `addr`; the IPv6 wildcard only for IPv6 (`IPV6_V6ONLY`), as `0.0.0.0` takes
/// IPv4.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl Drop for HealthCheckPorts {
    fn drop(&mut self) {
        for server in self
            .ports
            .values()
            .filter_map(|p| p.servers.as_ref())
            .flatten()
        {
            server.abort();
        }
    }
}

impl Port {
    /// Listens on each of its addresses and serves `service`'s health check; on none if one
    /// of them cannot be opened.
    async fn open(&mut self, service: &ObjectKey, health: &SyncHealth) {
        let mut listeners = Vec::with_capacity(self.addrs.len());
        for ip in self.addrs.iter() {
            let addr = SocketAddr::from((*ip, self.port));
            match listen(addr) {
                Ok(listener) => listeners.push(listener),
                Err(e) => {
                    let message = format!(
                        "cannot listen on {addr} for the health check of Service {}/{} \
                         (healthCheckNodePort): {e}; retrying at every sync",
                        service.namespace, service.name
                    );
                    match std::mem::replace(&mut self.reported, true) {
                        false => warn!("{message}"),
                        true => debug!("{message}"),
                    }
                    return;
                }
            }
        }
        let service_name = Arc::new(service.clone());
        let servers = listeners.into_iter().map(|listener| {
            let (service_name, local, health) = (
                Arc::clone(&service_name),
                Arc::clone(&self.local_endpoints),
                health.clone(),
            );
            http::serve(listener, move |_request| {
                let count = local.load(Ordering::Relaxed);
                let healthy = health.status(Instant::now(), SystemTime::now()).healthy;
                let response = respond(&service_name, count, healthy);
                async move { response }
            })
        });
        self.servers = Some(servers.collect());
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .map(|ip| SocketAddr::from((*ip, self.port)).to_string())
            .collect();
        let addrs = match addrs.is_empty() {
            true => "no address (--nodeport-addresses matches none of the node's)".to_string(),
            false => addrs.join(", "),
        };
        info!(
            "serving the health check of Service {}/{} on {addrs}",
            service.namespace, service.name
        );
    }

    /// Stops serving; the port is free once this returns.
    async fn close(self, service: &ObjectKey) {
        let Some(servers) = self.servers else {
            return;
        };
        for server in servers {
            server.abort();
            // The task, and with it the listener, is dropped before its handle completes.
            let _ = server.await;
        }
        info!(
            "closed the health check port {} of Service {}/{}",
            self.port, service.namespace, service.name
        );
    }
}

/// kube-proxy's answer: 200 with ready local endpoints and a healthy proxy, else 503; its
/// JSON body, byte for byte.
fn respond(service: &ObjectKey, local_endpoints: usize, healthy: bool) -> hyper::Response<Body> {
    let status = match local_endpoints > 0 && healthy {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\
         \"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        service.namespace, service.name
    );
    http::json(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ipv6_wildcard_listens_beside_the_ipv4_one_on_the_same_port() {
        let v4 = listen(SocketAddr::from(([0, 0, 0, 0], 0))).unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
        // Without IPV6_V6ONLY the IPv6 wildcard would take IPv4 too and fail here.
        if let Err(e) = &v6 {
            assert_ne!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
            eprintln!("skipped: no IPv6 here ({e})");
        }
    }

    #[tokio::test]
    async fn answers_are_kube_proxys() {
        let service = ObjectKey::new("shop", "web");
        let ok = respond(&service, 2, true);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["content-type"], "application/json");
        assert_eq!(ok.headers()["x-content-type-options"], "nosniff");
        let body = http_body_util::BodyExt::collect(ok.into_body()).await;
        let body = body.unwrap().to_bytes();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\
             \"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        for (local, healthy) in [(0, true), (2, false), (0, false)] {
            let status = respond(&service, local, healthy).status();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{local} {healthy}");
        }
    }
}
