//! Services + EndpointSlices + this node -> desired state (frontends, and health checks:
//! [`super::health_check`]), with kube-proxy's rules:
//! - headless and ExternalName services (no cluster IP) are not proxied at all;
//! - a service port takes the endpoints of the slices labelled with the service's name in
//!   its namespace (selector-less services included: their slices are made by hand);
//! - frontends by service type ([`super::frontends`]), endpoints by condition and traffic
//!   policy ([`super::endpoints`]);
//! - a cluster IP's entries (both scopes) follow `internalTrafficPolicy`; node ports, load
//!   balancer and external IPs follow `externalTrafficPolicy` for traffic from outside the
//!   node, while this node's pods reach every usable endpoint through them (kube-proxy treats
//!   pod -> external destination traffic as "subject to neither form of traffic policy");
//! - a Local policy with no local endpoint drops new connections, unless the service has no
//!   usable endpoint anywhere: then every path rejects them;
//! - `loadBalancerSourceRanges` filter a load balancer IP's traffic from outside the node,
//!   from pods and from the node's own processes, with kube-proxy's exception: when a range
//!   holds one of the node's addresses, the load balancer IP itself is allowed as a source
//!   too (a VIP routed locally loops the node's own requests back from it).
//!
//! Each family the Service has a cluster IP of is programmed from that family's EndpointSlices
//! only (FQDN slices are skipped, as kube-proxy does).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;

use tracing::debug;

use super::desired::DesiredTracker;
use super::endpoints::PortEndpoints;
use super::frontends::{frontends, FrontendKind};
use super::health_check::health_check;
use super::node::NodeDef;
use super::service::{PortDef, ServiceDef, TrafficPolicy};
use super::slice::{AddressType, SliceDef, SERVICE_NAME_LABEL};
use crate::model::{BackendSet, DesiredService, DesiredState, Frontend, ServicePortName};
use crate::objects::ObjectKey;

/// The desired state for these services and slices on `node`.
pub fn desired_state<'a>(
    services: impl IntoIterator<Item = &'a ServiceDef>,
    slices: impl IntoIterator<Item = &'a SliceDef>,
    node: &NodeDef,
) -> DesiredState {
    let mut slices_by_service: HashMap<ObjectKey, Vec<&SliceDef>> = HashMap::new();
    for slice in slices {
        if let Some(service) = owner(slice) {
            slices_by_service.entry(service).or_default().push(slice);
        }
    }
    let mut tracker = DesiredTracker::default();
    for service in services {
        let key = ObjectKey::new(&service.namespace, &service.name);
        let slices = slices_by_service.get(&key).map_or(&[][..], Vec::as_slice);
        let check = health_check(service, slices, node);
        tracker.update(key, service_frontends(service, slices, node), check);
    }
    tracker.into_state()
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label, in its
/// namespace), if any.
pub fn owner(slice: &SliceDef) -> Option<ObjectKey> {
    match &slice.service_name {
        Some(service) => Some(ObjectKey::new(&slice.namespace, service)),
        None => {
            debug!(
                "EndpointSlice {}/{} has no {SERVICE_NAME_LABEL} label; ignored",
                slice.namespace, slice.name,
            );
            None
        }
    }
}

/// One service's frontends on `node`, balancing to the endpoints of `slices` (the slices
/// that belong to it).
pub fn service_frontends(
    service: &ServiceDef,
    slices: &[&SliceDef],
    node: &NodeDef,
) -> Vec<(Frontend, DesiredService)> {
    if service.cluster_ips.is_empty() {
        debug!(
            "Service {}/{}: no cluster IP (headless, ExternalName or unassigned); not proxied",
            service.namespace, service.name
        );
        return Vec::new();
    }
    for slice in slices {
        if slice.address_type == AddressType::Fqdn {
            debug!(
                "EndpointSlice {}/{}: addressType FQDN is not proxied (as kube-proxy); skipped",
                slice.namespace, slice.name
            );
        }
    }
    let mut frontends_of_service = Vec::new();
    for port in &service.ports {
        let frontends = frontends(service, port, node);
        // kube-proxy's rule: each family's frontends balance to that family's slices only,
        // so a family whose slices are missing rejects on that family alone.
        // As kube-proxy's per-family proxiers, a family the Service has no cluster IP of is
        // not served at all (its external IPs and node ports included).
        for family in [AddressType::Ipv4, AddressType::Ipv6] {
            let ipv4 = family == AddressType::Ipv4;
            if !service.cluster_ips.iter().any(|ip| ip.is_ipv4() == ipv4) {
                continue;
            }
            let mut of_family = frontends
                .iter()
                .filter(|(frontend, _)| frontend.addr.is_ipv4() == ipv4)
                .peekable();
            if of_family.peek().is_none() {
                continue;
            }
            let slices: Vec<&SliceDef> = slices
                .iter()
                .copied()
                .filter(|slice| slice.address_type == family)
                .collect();
            let endpoints = PortEndpoints::select(port, &slices, node);
            let backends = PortBackends::new(service, &endpoints);
            for &(frontend, kind) in of_family {
                let mut desired = desired_service(service, port, kind, &backends);
                if kind == FrontendKind::LoadBalancerIp {
                    (desired.source_ranges, desired.source_ranges_hold_node) =
                        source_ranges(service, frontend, node);
                }
                frontends_of_service.push((frontend, desired));
            }
        }
    }
    frontends_of_service
}

/// The backend sets of one service port, built once and shared by its frontends.
struct PortBackends {
    cluster: Arc<BackendSet>,
    /// Only when a traffic policy of the service is Local.
    local: Option<Arc<BackendSet>>,
}

impl PortBackends {
    fn new(service: &ServiceDef, endpoints: &PortEndpoints) -> Self {
        let cluster = Arc::new(BackendSet {
            endpoints: endpoints.cluster.clone(),
            drop_if_empty: false,
        });
        let policies = [service.internal_policy, service.external_policy];
        let local = policies.contains(&TrafficPolicy::Local).then(|| {
            Arc::new(BackendSet {
                endpoints: endpoints.local.clone(),
                drop_if_empty: endpoints.any_usable(),
            })
        });
        Self { cluster, local }
    }

    fn by_policy(&self, policy: TrafficPolicy) -> Arc<BackendSet> {
        match (policy, &self.local) {
            (TrafficPolicy::Local, Some(local)) => Arc::clone(local),
            _ => Arc::clone(&self.cluster),
        }
    }
}

fn desired_service(
    service: &ServiceDef,
    port: &PortDef,
    kind: FrontendKind,
    backends: &PortBackends,
) -> DesiredService {
    let (external, internal) = match kind {
        FrontendKind::ClusterIp => {
            let backends = backends.by_policy(service.internal_policy);
            (Arc::clone(&backends), backends)
        }
        FrontendKind::External | FrontendKind::LoadBalancerIp => (
            backends.by_policy(service.external_policy),
            backends.by_policy(TrafficPolicy::Cluster),
        ),
    };
    DesiredService {
        name: ServicePortName {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port_name: port.name.clone(),
        },
        external,
        internal,
        affinity_timeout_s: service.affinity_timeout_s,
        algorithm: service.algorithm,
        cluster_ip: kind == FrontendKind::ClusterIp,
        source_ranges: BTreeSet::new(),
        source_ranges_hold_node: false,
    }
}

/// The sources a load balancer IP frontend admits: the Service's ranges of the frontend's
/// family, plus the frontend's own address when a range holds one of the node's addresses
/// (kube-proxy's `allowFromNode`), and whether one does. Empty: every source.
fn source_ranges(
    service: &ServiceDef,
    frontend: Frontend,
    node: &NodeDef,
) -> (BTreeSet<IpNet>, bool) {
    let mut ranges: BTreeSet<IpNet> = service
        .load_balancer_source_ranges
        .iter()
        .filter(|range| range.addr().is_ipv4() == frontend.addr.is_ipv4())
        .copied()
        .collect();
    let from_node = ranges
        .iter()
        .any(|range| node.addresses.iter().any(|addr| range.contains(addr)));
    if from_node {
        ranges.insert(IpNet::from(frontend.addr));
    }
    (ranges, from_node)
}
