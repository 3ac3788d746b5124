//! Builders for the objects tests put into the server: Services, their ports, EndpointSlices
//! with endpoints in every condition, Nodes and ServiceCIDRs. Tests adjust the returned k8s-openapi
//! structs directly for anything else (service type, traffic policies, affinity, ...).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::{
    api::{
        core::v1::{Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
        networking::v1::{ServiceCIDR, ServiceCIDRSpec},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::cluster::Protocol;

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label marking the EndpointSlices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Label handing a Service to another proxy (kube-proxy and replacements skip it).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        ..ObjectMeta::default()
    }
}

/// A port of a Service: `port` forwarded to the numeric `target_port`.
pub fn service_port(name: &str, protocol: Protocol, port: u16, target_port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        protocol: Some(protocol.to_string()),
        port: port.into(),
        target_port: Some(IntOrString::Int(target_port.into())),
        ..ServicePort::default()
    }
}

/// A `type: ClusterIP` Service at `cluster_ip` with a selector `app: <name>`.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: meta(namespace, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(cluster_ip.to_string()),
            cluster_ips: Some(vec![cluster_ip.to_string()]),
            ports: Some(ports),
            selector: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
            session_affinity: Some("None".into()),
            internal_traffic_policy: Some("Cluster".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The spec of `service` (builders always set one).
pub fn spec_mut(service: &mut Service) -> &mut ServiceSpec {
    service.spec.get_or_insert_with(ServiceSpec::default)
}

/// A port of an EndpointSlice.
pub fn endpoint_port(name: &str, protocol: Protocol, port: u16) -> EndpointPort {
    EndpointPort {
        name: Some(name.to_string()),
        protocol: Some(protocol.to_string()),
        port: Some(port.into()),
        app_protocol: None,
    }
}

/// A ready endpoint at `addr` (either family) on node `node_name`.
pub fn endpoint(addr: impl Into<IpAddr>, node_name: &str) -> Endpoint {
    Endpoint {
        addresses: vec![addr.into().to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        node_name: Some(node_name.to_string()),
        ..Endpoint::default()
    }
}

/// An endpoint of a terminating pod: not ready; `serving` says whether it still accepts
/// connections (the fallback when a Service has no ready endpoint).
pub fn terminating_endpoint(addr: Ipv4Addr, node_name: &str, serving: bool) -> Endpoint {
    Endpoint {
        conditions: Some(EndpointConditions {
            ready: Some(false),
            serving: Some(serving),
            terminating: Some(true),
        }),
        ..endpoint(addr, node_name)
    }
}

/// An IPv4 EndpointSlice `name` of Service `service`.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let mut metadata = meta(namespace, name);
    metadata.labels = Some(BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), service.to_string()),
        (
            "endpointslice.kubernetes.io/managed-by".to_string(),
            "lb-tests".to_string(),
        ),
    ]));
    EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(ports),
    }
}

/// A Node whose InternalIP is `internal_ip`.
pub fn node(name: &str, internal_ip: Ipv4Addr) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                name.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: internal_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.to_string(),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

/// A ServiceCIDR holding `cidrs`.
pub fn service_cidr(name: &str, cidrs: &[&str]) -> ServiceCIDR {
    ServiceCIDR {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(cidrs.iter().map(ToString::to_string).collect()),
        }),
        status: None,
    }
}
