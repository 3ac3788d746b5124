//! Checks Services and EndpointSlices and reduces them to what the data path needs.
//!
//! An object with a field that cannot be programmed is rejected as a whole with a
//! [`FieldError`] naming the field, so a half-understood object never reaches the maps.

use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::debug;

use crate::error::FieldError;
use crate::model::Protocol;

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service reduced to its frontends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDef {
    pub namespace: String,
    pub name: String,
    /// Cluster IPs to serve; empty for headless and ExternalName services.
    pub cluster_ips: Vec<IpAddr>,
    /// TCP and UDP ports (SCTP ports are left out: the data path does not handle SCTP).
    pub ports: Vec<PortDef>,
}

/// A service or endpoint port: the name that links the two, number and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDef {
    /// Port name; "" for an unnamed port.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// Address family of an EndpointSlice (`addressType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    Ipv4,
    Ipv6,
    Fqdn,
}

/// An EndpointSlice reduced to its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceDef {
    pub namespace: String,
    pub name: String,
    /// The Service this slice belongs to (`kubernetes.io/service-name` label).
    pub service_name: Option<String>,
    pub address_type: AddressType,
    /// TCP and UDP ports with a port number.
    pub ports: Vec<PortDef>,
    /// Endpoints with their first address; empty for FQDN slices.
    pub endpoints: Vec<EndpointDef>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDef {
    /// The first address (the one kube-proxy uses).
    pub addr: IpAddr,
    /// Whether it accepts new connections: `conditions.ready` true or unset.
    pub ready: bool,
}

/// Namespace and name of an object; the namespace defaults to "default", as with kubectl.
pub fn object_name(metadata: &ObjectMeta) -> Result<(String, String), FieldError> {
    let name = metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FieldError::new("metadata.name", "missing"))?;
    let namespace = metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    Ok((namespace, name))
}

impl ServiceDef {
    pub fn from_k8s(service: &Service) -> Result<ServiceDef, FieldError> {
        let (namespace, name) = object_name(&service.metadata)?;
        let spec = service.spec.clone().unwrap_or_default();
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !matches!(
            kind,
            "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
        ) {
            return Err(FieldError::new(
                "spec.type",
                format!("unknown service type {kind:?}"),
            ));
        }
        let ports = service_ports(spec.ports.as_deref().unwrap_or_default())?;
        let cluster_ips = if kind == "ExternalName" {
            Vec::new()
        } else {
            cluster_ips(&spec)?
        };
        Ok(ServiceDef {
            namespace,
            name,
            cluster_ips,
            ports,
        })
    }
}

/// `spec.clusterIPs`, falling back to `spec.clusterIP`; headless (`None`) and unassigned ("")
/// give no address.
fn cluster_ips(spec: &ServiceSpec) -> Result<Vec<IpAddr>, FieldError> {
    let listed: Vec<(String, &str)> = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_string(), ip.as_str()))
            .collect(),
    };
    if listed.first().is_some_and(|(_, ip)| *ip == "None") {
        return Ok(Vec::new());
    }
    listed
        .iter()
        .filter(|(_, ip)| !ip.is_empty())
        .map(|(path, ip)| parse_ip(ip, path))
        .collect()
}

fn service_ports(ports: &[ServicePort]) -> Result<Vec<PortDef>, FieldError> {
    let mut seen: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut defs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let number = port_number(port.port, &format!("{path}.port"))?;
        let Some(protocol) = protocol(port.protocol.as_deref(), &format!("{path}.protocol"))?
        else {
            debug!("{path}: SCTP is not load balanced; port skipped");
            continue;
        };
        if let Some(first) = seen.insert((number, protocol), i) {
            return Err(FieldError::new(
                path,
                format!("duplicate port {number}/{protocol} (also spec.ports[{first}])"),
            ));
        }
        defs.push(PortDef {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            protocol,
        });
    }
    Ok(defs)
}

impl SliceDef {
    pub fn from_k8s(slice: &EndpointSlice) -> Result<SliceDef, FieldError> {
        let (namespace, name) = object_name(&slice.metadata)?;
        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::Ipv4,
            "IPv6" => AddressType::Ipv6,
            "FQDN" => AddressType::Fqdn,
            "" => return Err(FieldError::new("addressType", "missing")),
            other => {
                return Err(FieldError::new(
                    "addressType",
                    format!("unknown address type {other:?} (expected IPv4, IPv6 or FQDN)"),
                ))
            }
        };
        let service_name = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
            .cloned();
        let ports = slice_ports(slice.ports.as_deref().unwrap_or_default())?;
        let endpoints = match address_type {
            AddressType::Fqdn => Vec::new(),
            AddressType::Ipv4 | AddressType::Ipv6 => endpoints(slice, address_type)?,
        };
        Ok(SliceDef {
            namespace,
            name,
            service_name,
            address_type,
            ports,
            endpoints,
        })
    }
}

fn slice_ports(ports: &[EndpointPort]) -> Result<Vec<PortDef>, FieldError> {
    let mut defs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        let Some(protocol) = protocol(port.protocol.as_deref(), &format!("{path}.protocol"))?
        else {
            continue;
        };
        // An unset port number means "all ports", which only headless services use.
        let Some(number) = port.port else {
            debug!("{path}: no port number; skipped");
            continue;
        };
        defs.push(PortDef {
            name: port.name.clone().unwrap_or_default(),
            port: port_number(number, &format!("{path}.port"))?,
            protocol,
        });
    }
    Ok(defs)
}

fn endpoints(slice: &EndpointSlice, family: AddressType) -> Result<Vec<EndpointDef>, FieldError> {
    let mut defs = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}].addresses");
        if endpoint.addresses.is_empty() {
            return Err(FieldError::new(path, "must contain at least one address"));
        }
        let mut addresses = Vec::with_capacity(endpoint.addresses.len());
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let field = format!("{path}[{j}]");
            let addr = parse_ip(address, &field)?;
            if addr.is_ipv4() != (family == AddressType::Ipv4) {
                return Err(FieldError::new(
                    field,
                    format!("{addr} does not match addressType {:?}", slice.address_type),
                ));
            }
            addresses.push(addr);
        }
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        defs.push(EndpointDef {
            addr: addresses[0],
            ready,
        });
    }
    Ok(defs)
}

fn port_number(port: i32, path: &str) -> Result<u16, FieldError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(path, format!("{port} is not a port (1..=65535)")))
}

/// The protocol of a port (TCP when unset); `None` for SCTP, which is valid but not balanced.
fn protocol(protocol: Option<&str>, path: &str) -> Result<Option<Protocol>, FieldError> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(Some(Protocol::Tcp)),
        "UDP" => Ok(Some(Protocol::Udp)),
        "SCTP" => Ok(None),
        other => Err(FieldError::new(
            path,
            format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)"),
        )),
    }
}

fn parse_ip(text: &str, path: &str) -> Result<IpAddr, FieldError> {
    text.parse()
        .map_err(|_| FieldError::new(path, format!("{text:?} is not an IP address")))
}
