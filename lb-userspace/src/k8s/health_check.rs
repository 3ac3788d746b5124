//! A Service's health check node port, with kube-proxy's rules: only a LoadBalancer with
//! `externalTrafficPolicy: Local` and a `healthCheckNodePort` has one (the API server
//! allocates it), and only if the Service is proxied at all (an IPv4 cluster IP here). It
//! reports the ready endpoints on this node, counted by address over the Service's
//! EndpointSlices (kube-proxy's `LocalReadyEndpoints`): serving but terminating endpoints do
//! not count, so a node whose last local pod is draining fails the check.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::warn;

use super::node::NodeDef;
use super::service::{ServiceDef, ServiceType, TrafficPolicy};
use super::slice::{AddressType, SliceDef};
use crate::model::HealthCheck;

/// The health check of `service` on `node`, given the slices that belong to it.
pub fn health_check(
    service: &ServiceDef,
    slices: &[&SliceDef],
    node: &NodeDef,
) -> Option<HealthCheck> {
    let needs_one = service.service_type == ServiceType::LoadBalancer
        && service.external_policy == TrafficPolicy::Local
        && service.cluster_ips.iter().any(|ip| ip.is_ipv4());
    if !needs_one {
        return None;
    }
    let Some(port) = service.health_check_node_port else {
        warn!(
            "Service {}/{}: a LoadBalancer with externalTrafficPolicy Local but no \
             healthCheckNodePort; no health check is served",
            service.namespace, service.name
        );
        return None;
    };
    let local_ready: BTreeSet<_> = slices
        .iter()
        .filter(|slice| slice.address_type == AddressType::Ipv4 && !slice.ports.is_empty())
        .flat_map(|slice| &slice.endpoints)
        .filter(|e| e.ready && e.node_name.as_deref() == Some(node.name.as_str()))
        .map(|e| e.addr)
        .collect();
    Some(HealthCheck {
        port,
        local_endpoints: local_ready.len(),
        addrs: Arc::clone(&node.health_check_addrs),
    })
}
