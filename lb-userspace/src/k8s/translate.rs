//! Services + EndpointSlices -> desired state, with kube-proxy's matching rules:
//! - every cluster IP x every service port is a frontend (any service type has cluster IPs;
//!   NodePort and LoadBalancer addresses come later);
//! - a service port takes the endpoints of slices labelled with the service's name in the same
//!   namespace, through the slice port with the same name ("" for unnamed) and protocol;
//! - only ready endpoints (`conditions.ready` true or unset) receive new connections.
//!
//! Only IPv4 is programmed for now: IPv6 cluster IPs and IPv6/FQDN slices are skipped.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use tracing::{debug, warn};

use super::validate::{AddressType, PortDef, ServiceDef, SliceDef};
use crate::model::{DesiredService, DesiredState, Endpoint, Frontend, ServicePortName};

/// The desired state for these services and slices.
pub fn desired_state(services: &[ServiceDef], slices: &[SliceDef]) -> DesiredState {
    let mut slices_by_service: HashMap<(&str, &str), Vec<&SliceDef>> = HashMap::new();
    for slice in slices {
        match (&slice.service_name, slice.address_type) {
            (None, _) => debug!(
                "EndpointSlice {}/{} has no {} label; ignored",
                slice.namespace,
                slice.name,
                super::validate::SERVICE_NAME_LABEL
            ),
            (Some(service), AddressType::Ipv4) => slices_by_service
                .entry((slice.namespace.as_str(), service.as_str()))
                .or_default()
                .push(slice),
            (Some(_), other) => debug!(
                "EndpointSlice {}/{}: addressType {other:?} is not programmed yet; skipped",
                slice.namespace, slice.name
            ),
        }
    }

    let mut sorted: Vec<&ServiceDef> = services.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut state = DesiredState::default();
    for service in sorted {
        let slices = slices_by_service
            .get(&(service.namespace.as_str(), service.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        for addr in &service.cluster_ips {
            if addr.is_ipv6() {
                debug!(
                    "Service {}/{}: IPv6 cluster IP {addr} is not programmed yet; skipped",
                    service.namespace, service.name
                );
                continue;
            }
            for port in &service.ports {
                add_frontend(&mut state, service, *addr, port, slices);
            }
        }
    }
    state
}

fn add_frontend(
    state: &mut DesiredState,
    service: &ServiceDef,
    addr: IpAddr,
    port: &PortDef,
    slices: &[&SliceDef],
) {
    let frontend = Frontend {
        addr,
        port: port.port,
        protocol: port.protocol,
    };
    let name = ServicePortName {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        port_name: port.name.clone(),
    };
    if let Some(owner) = state.services.get(&frontend) {
        warn!(
            "{frontend} is claimed by both {} and {name}; keeping {}",
            owner.name, owner.name
        );
        return;
    }
    let endpoints = ready_endpoints(port, slices);
    state
        .services
        .insert(frontend, DesiredService::uniform(name, endpoints));
}

/// Ready endpoints of the slice port matching `port` by name and protocol.
fn ready_endpoints(port: &PortDef, slices: &[&SliceDef]) -> BTreeSet<Endpoint> {
    let mut endpoints = BTreeSet::new();
    for slice in slices {
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        endpoints.extend(
            slice
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| Endpoint {
                    addr: e.addr,
                    port: slice_port.port,
                }),
        );
    }
    endpoints
}
