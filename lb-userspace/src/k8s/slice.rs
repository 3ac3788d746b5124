//! An EndpointSlice reduced to its endpoints and ports, checked field by field.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{
    EndpointConditions, EndpointHints, EndpointPort, EndpointSlice,
};
use tracing::debug;

use super::fields::{object_name, parse_ip, port_number, protocol};
use super::service::PortDef;
use crate::objects::FieldError;

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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
    pub ports: Box<[PortDef]>,
    /// Endpoints with their first address; empty for FQDN slices. Held for every slice in
    /// the cluster, so an endpoint is kept small (48 bytes; see [`EndpointDef`]).
    pub endpoints: Box<[EndpointDef]>,
}

/// One endpoint of a slice, with its conditions read as Kubernetes documents them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDef {
    /// The first address (the one kube-proxy uses).
    pub addr: IpAddr,
    /// `conditions.ready`, true when unset: takes new connections.
    pub ready: bool,
    /// `conditions.serving`, true when unset: answers even while terminating.
    pub serving: bool,
    /// `conditions.terminating`, false when unset.
    pub terminating: bool,
    /// `nodeName`: the node the endpoint runs on; one allocation per node name and slice,
    /// shared by the slice's endpoints on that node.
    pub node_name: Option<Arc<str>>,
    /// `hints`, boxed: most endpoints have none.
    pub hints: Option<Box<Hints>>,
}

// Every endpoint in the cluster is held once: keep it at 48 bytes.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<EndpointDef>() == 48);

/// The topology hints of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// `hints.forZones[].name`: the zones whose nodes should send this endpoint traffic.
    pub zones: Box<[String]>,
    /// `hints.forNodes[].name`: the nodes that should send this endpoint traffic
    /// (`trafficDistribution: PreferSameNode`).
    pub nodes: Box<[String]>,
}

impl EndpointDef {
    /// `hints.forZones[].name`; empty without hints.
    pub fn zone_hints(&self) -> &[String] {
        self.hints.as_ref().map_or(&[], |h| &h.zones)
    }

    /// `hints.forNodes[].name`; empty without hints.
    pub fn node_hints(&self) -> &[String] {
        self.hints.as_ref().map_or(&[], |h| &h.nodes)
    }
}

impl SliceDef {
    /// Checks a slice; `max_endpoints` is the backends map's capacity, which no slice can
    /// exceed and still be programmed.
    pub fn from_k8s(slice: &EndpointSlice, max_endpoints: usize) -> Result<SliceDef, FieldError> {
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
        if slice.endpoints.len() > max_endpoints {
            return Err(FieldError::new(
                "endpoints",
                format!(
                    "{} endpoints do not fit into the backends map (capacity {max_endpoints})",
                    slice.endpoints.len()
                ),
            ));
        }
        let service_name = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
            .cloned();
        let ports = slice_ports(slice.ports.as_deref().unwrap_or_default())?;
        let endpoints = match address_type {
            AddressType::Fqdn => Box::default(),
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

fn slice_ports(ports: &[EndpointPort]) -> Result<Box<[PortDef]>, FieldError> {
    let mut defs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        let protocol = protocol(port.protocol.as_deref(), &format!("{path}.protocol"))?;
        // An unset port number means "all ports", which only headless services use.
        let Some(number) = port.port else {
            debug!("{path}: no port number; skipped");
            continue;
        };
        defs.push(PortDef {
            name: port.name.clone().unwrap_or_default(),
            port: port_number(number, &format!("{path}.port"))?,
            protocol,
            node_port: None,
        });
    }
    Ok(defs.into_boxed_slice())
}

fn endpoints(slice: &EndpointSlice, family: AddressType) -> Result<Box<[EndpointDef]>, FieldError> {
    let mut defs = Vec::with_capacity(slice.endpoints.len());
    let mut node_names = NodeNames::default();
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
        let conditions = endpoint.conditions.as_ref();
        let condition = |get: fn(&EndpointConditions) -> Option<bool>, unset: bool| {
            conditions.and_then(get).unwrap_or(unset)
        };
        defs.push(EndpointDef {
            addr: addresses[0],
            ready: condition(|c| c.ready, true),
            serving: condition(|c| c.serving, true),
            terminating: condition(|c| c.terminating, false),
            node_name: endpoint.node_name.as_deref().map(|n| node_names.get(n)),
            hints: endpoint.hints.as_ref().and_then(hints),
        });
    }
    Ok(defs.into_boxed_slice())
}

/// An endpoint's hints; `None` when it names no zone and no node.
fn hints(hints: &EndpointHints) -> Option<Box<Hints>> {
    let zones: Box<[String]> = hints
        .for_zones
        .iter()
        .flatten()
        .map(|z| z.name.clone())
        .collect();
    let nodes: Box<[String]> = hints
        .for_nodes
        .iter()
        .flatten()
        .map(|n| n.name.clone())
        .collect();
    (!zones.is_empty() || !nodes.is_empty()).then(|| Box::new(Hints { zones, nodes }))
}

/// The node names of one slice's endpoints, each allocated once: a slice's endpoints run on
/// a few nodes, often one.
#[derive(Default)]
struct NodeNames(Vec<Arc<str>>);

impl NodeNames {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|known| ***known == *name) {
            return Arc::clone(known);
        }
        let name: Arc<str> = Arc::from(name);
        self.0.push(Arc::clone(&name));
        name
    }
}
