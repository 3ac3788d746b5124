//! The frontends of a service port, by service type:
//! - every type with a cluster IP: each cluster IP x port;
//! - NodePort and LoadBalancer: each node address x nodePort;
//! - LoadBalancer: each `status.loadBalancer.ingress[].ip` x port;
//! - any type: each `spec.externalIPs` entry x port.
//!
//! Both families: a dual-stack Service has frontends of each (`translate` gives each family's
//! frontends that family's endpoints).

use std::net::IpAddr;

use super::node::NodeDef;
use super::service::{PortDef, ServiceDef};
use crate::model::Frontend;

/// Which traffic policy governs a frontend's traffic from outside the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendKind {
    /// A cluster IP: `internalTrafficPolicy` applies to all its traffic.
    ClusterIp,
    /// A node port or external IP: `externalTrafficPolicy` applies to traffic from outside
    /// the node; this node's pods reach every usable endpoint.
    External,
    /// A load balancer IP: as [`FrontendKind::External`], and `loadBalancerSourceRanges`
    /// filters its traffic from outside the node.
    LoadBalancerIp,
}

/// Every frontend of `port`, with its kind.
pub fn frontends(
    service: &ServiceDef,
    port: &PortDef,
    node: &NodeDef,
) -> Vec<(Frontend, FrontendKind)> {
    let on = |addr: IpAddr, port_number: u16| Frontend {
        addr,
        port: port_number,
        protocol: port.protocol,
    };
    let mut frontends: Vec<(Frontend, FrontendKind)> = service
        .cluster_ips
        .iter()
        .map(|ip| (on(*ip, port.port), FrontendKind::ClusterIp))
        .collect();
    if let Some(node_port) = port
        .node_port
        .filter(|_| service.service_type.has_node_ports())
    {
        frontends.extend(
            node.addresses
                .iter()
                .map(|ip| (on(*ip, node_port), FrontendKind::External)),
        );
    }
    if service.service_type == super::service::ServiceType::LoadBalancer {
        frontends.extend(
            service
                .load_balancer_ips
                .iter()
                .map(|ip| (on(*ip, port.port), FrontendKind::LoadBalancerIp)),
        );
    }
    frontends.extend(
        service
            .external_ips
            .iter()
            .map(|ip| (on(*ip, port.port), FrontendKind::External)),
    );
    frontends
}
