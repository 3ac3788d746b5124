//! Which address the agent reaches its API server at, chosen once at start.
//!
//! In-cluster with an explicit address (`--k8s-api-server`), the `kubernetes` Service's
//! ClusterIP (`KUBERNETES_SERVICE_HOST`/`_PORT`) is tried first when this node already
//! translates it for the agent's own sockets: socket-level translation is on and the maps the
//! agent adopted hold the ClusterIP with a backend (an earlier agent on this node programmed
//! it). A short TCP connect decides. Otherwise (the node's first start, socket-level
//! translation off, a ClusterIP without backends or not answering) the explicit address is
//! used. Either way the choice is logged; TLS verifies the chosen address against the API
//! server's certificate, which names the ClusterIP on real clusters.

use std::net::SocketAddrV4;
use std::time::Duration;

use kube::Config;
use lb_common::service::scope;
use lb_common::{ipv4_mapped, ServiceKey, IPPROTO_TCP};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::datapath::DatapathMaps;
use crate::error::Chain;
use crate::source::api::ApiServerUrl;

/// How long the ClusterIP gets to accept the probe's connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Points `config` at the `kubernetes` Service's address `service` when `maps` translate it
/// for the agent's sockets (`sockets`: socket-level translation is on) and it accepts a TCP
/// connection within [`PROBE_TIMEOUT`]; leaves the explicit address otherwise. Logs which.
pub(super) async fn choose(
    config: &mut Config,
    service: Option<SocketAddrV4>,
    maps: &DatapathMaps,
    sockets: bool,
) {
    let Some(service) = service else {
        info!("kubernetes API server: {}", config.cluster_url);
        return;
    };
    let key = ServiceKey::new(
        ipv4_mapped(service.ip().octets()),
        service.port(),
        IPPROTO_TCP,
        scope::INTERNAL,
    );
    let backends = match maps.service(&key) {
        Ok(value) => value.map(|v| v.backend_count),
        Err(e) => {
            warn!(
                "looking up the kubernetes Service {service} in the maps failed: {}",
                Chain(&e)
            );
            None
        }
    };
    let why_not = match translated(sockets, backends) {
        Err(why_not) => why_not.to_string(),
        Ok(()) => match probe(service).await {
            Ok(()) => {
                let url = ApiServerUrl::from_host_port(&service.ip().to_string(), service.port())
                    .expect("an IPv4 address and a port make a URL");
                config.cluster_url = url.uri().clone();
                info!(
                    "kubernetes API server: {} (the kubernetes Service, which this node's maps \
                     translate; the explicit address is not used)",
                    config.cluster_url
                );
                return;
            }
            Err(e) => format!("it did not answer ({e})"),
        },
    };
    info!(
        "kubernetes API server: {} (the explicit address; not the kubernetes Service {service}: \
         {why_not})",
        config.cluster_url
    );
}

/// Whether the agent's connections to the `kubernetes` Service are translated, from whether
/// socket-level translation is on and how many backends its internal-scope entry has; why not.
fn translated(sockets: bool, backends: Option<u32>) -> Result<(), &'static str> {
    match (sockets, backends) {
        (false, _) => Err("socket-level translation is off"),
        (true, None) => Err("this node's maps do not hold it yet"),
        (true, Some(0)) => Err("it has no endpoints in this node's maps"),
        (true, Some(_)) => Ok(()),
    }
}

/// Connects to `addr` and closes the connection again.
async fn probe(addr: SocketAddrV4) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {PROBE_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;

    #[test]
    fn the_service_is_a_candidate_only_with_socket_translation_and_a_backend() {
        assert!(translated(true, Some(2)).is_ok());
        assert!(translated(true, Some(0))
            .unwrap_err()
            .contains("no endpoints"));
        assert!(translated(true, None)
            .unwrap_err()
            .contains("do not hold it"));
        assert!(translated(false, Some(2)).unwrap_err().contains("off"));
    }

    #[tokio::test]
    async fn the_probe_connects_or_says_why_not() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!("bound to IPv4")
        };
        assert_eq!(probe(addr).await, Ok(()));
        drop(listener);
        let refused = probe(addr).await.unwrap_err();
        assert!(refused.contains("refused"), "{refused}");
    }
}
