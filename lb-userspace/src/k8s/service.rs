//! A Service reduced to what the data path needs, checked field by field.
//!
//! A field that cannot be programmed rejects the whole object with a [`FieldError`] naming
//! the field, so a half-understood Service never reaches the maps.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec, ServiceStatus};
use tracing::warn;

use super::fields::{check_target_port, object_name, parse_ip, parse_ips, port_number, protocol};
use crate::model::{Algorithm, Protocol};
use crate::objects::FieldError;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours, as Kubernetes).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The longest affinity timeout Kubernetes accepts (one day).
const MAX_AFFINITY_TIMEOUT_S: i32 = 86_400;
/// The annotation that chooses a Service's backend selection (`random` or `maglev`) over the
/// node's `--lb-algorithm`.
pub const LB_ALGORITHM_ANNOTATION: &str = "lb-agent/lb-algorithm";

/// A Service reduced to its frontends and policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDef {
    pub namespace: String,
    pub name: String,
    pub service_type: ServiceType,
    /// Cluster IPs; empty for headless and ExternalName services, which are not proxied.
    pub cluster_ips: Vec<IpAddr>,
    /// TCP, UDP and SCTP ports.
    pub ports: Vec<PortDef>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`, except ingresses with `ipMode: Proxy` (the load
    /// balancer proxies to the node ports itself, so kube-proxy leaves their IPs alone).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` that parse as CIDRs (kube-proxy's reading: each value
    /// trimmed; an invalid one is logged and skipped). Only load-balancer IPs are filtered.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `spec.externalTrafficPolicy`: which endpoints traffic from outside the node reaches
    /// through node ports, load balancer and external IPs.
    pub external_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`: which endpoints cluster IP traffic reaches.
    pub internal_policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` without affinity.
    pub affinity_timeout_s: Option<u32>,
    /// The [`LB_ALGORITHM_ANNOTATION`]; `None` without it.
    pub algorithm: Option<Algorithm>,
    /// `spec.healthCheckNodePort` (0 counts as unset); served only for a LoadBalancer with
    /// `externalTrafficPolicy: Local` ([`super::health_check`]).
    pub health_check_node_port: Option<u16>,
}

/// `spec.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    /// Whether the service has node ports (NodePort and LoadBalancer).
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

/// `spec.externalTrafficPolicy` or `spec.internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Every usable endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node; without one, traffic is dropped.
    Local,
}

/// A service or endpoint port: the name that links the two, number and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDef {
    /// Port name; "" for an unnamed port.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// `nodePort` of a service port; always `None` for endpoint ports.
    pub node_port: Option<u16>,
}

impl ServiceDef {
    pub fn from_k8s(service: &Service) -> Result<ServiceDef, FieldError> {
        let (namespace, name) = object_name(&service.metadata)?;
        let spec = service.spec.clone().unwrap_or_default();
        let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceType::ClusterIp,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "ExternalName" => ServiceType::ExternalName,
            other => {
                return Err(FieldError::new(
                    "spec.type",
                    format!("unknown service type {other:?}"),
                ))
            }
        };
        let ports = service_ports(spec.ports.as_deref().unwrap_or_default())?;
        let cluster_ips = match service_type {
            ServiceType::ExternalName => Vec::new(),
            _ => cluster_ips(&spec)?,
        };
        check_traffic_distribution(&namespace, &name, spec.traffic_distribution.as_deref());
        let status = service.status.as_ref();
        let load_balancer_source_ranges = source_ranges(
            &namespace,
            &name,
            spec.load_balancer_source_ranges
                .as_deref()
                .unwrap_or_default(),
        );
        Ok(ServiceDef {
            namespace,
            name,
            service_type,
            cluster_ips,
            ports,
            external_ips: parse_ips(spec.external_ips.as_deref(), "spec.externalIPs")?,
            load_balancer_ips: load_balancer_ips(status)?,
            load_balancer_source_ranges,
            external_policy: traffic_policy(
                spec.external_traffic_policy.as_deref(),
                "spec.externalTrafficPolicy",
            )?,
            internal_policy: traffic_policy(
                spec.internal_traffic_policy.as_deref(),
                "spec.internalTrafficPolicy",
            )?,
            affinity_timeout_s: affinity_timeout(&spec)?,
            algorithm: algorithm(service)?,
            health_check_node_port: spec
                .health_check_node_port
                .filter(|port| *port != 0)
                .map(|port| port_number(port, "spec.healthCheckNodePort"))
                .transpose()?,
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

/// The ports, each number and protocol once.
fn service_ports(ports: &[ServicePort]) -> Result<Vec<PortDef>, FieldError> {
    let mut seen: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut defs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let number = port_number(port.port, &format!("{path}.port"))?;
        let protocol = protocol(port.protocol.as_deref(), &format!("{path}.protocol"))?;
        if let Some(first) = seen.insert((number, protocol), i) {
            return Err(FieldError::new(
                path,
                format!("duplicate port {number}/{protocol} (also spec.ports[{first}])"),
            ));
        }
        check_target_port(port.target_port.as_ref(), &format!("{path}.targetPort"))?;
        let node_port = port
            .node_port
            .map(|n| port_number(n, &format!("{path}.nodePort")))
            .transpose()?;
        defs.push(PortDef {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            protocol,
            node_port,
        });
    }
    Ok(defs)
}

fn load_balancer_ips(status: Option<&ServiceStatus>) -> Result<Vec<IpAddr>, FieldError> {
    let ingress = status
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let mut ips = Vec::new();
    for (i, ingress) in ingress.iter().enumerate() {
        let path = format!("status.loadBalancer.ingress[{i}]");
        if let Some(mode) = ingress.ip_mode.as_deref() {
            match mode {
                "VIP" => {}
                "Proxy" => continue,
                other => {
                    return Err(FieldError::new(
                        format!("{path}.ipMode"),
                        format!("unknown ipMode {other:?} (expected VIP or Proxy)"),
                    ))
                }
            }
        }
        // An ingress with only a hostname has no address to serve.
        if let Some(ip) = ingress.ip.as_deref().filter(|ip| !ip.is_empty()) {
            ips.push(parse_ip(ip, &format!("{path}.ip"))?);
        }
    }
    Ok(ips)
}

/// `spec.loadBalancerSourceRanges` as kube-proxy reads them: trimmed, and an entry that is
/// not a CIDR is logged (naming the Service and the entry) and skipped, not an error.
pub(super) fn source_ranges(namespace: &str, name: &str, ranges: &[String]) -> Vec<IpNet> {
    ranges
        .iter()
        .enumerate()
        .filter_map(|(i, range)| match range.trim().parse::<IpNet>() {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                warn!(
                    "Service {namespace}/{name}: spec.loadBalancerSourceRanges[{i}] {range:?} \
                     is not a CIDR; skipped"
                );
                None
            }
        })
        .collect()
}

fn traffic_policy(policy: Option<&str>, path: &str) -> Result<TrafficPolicy, FieldError> {
    match policy.unwrap_or("Cluster") {
        // "Global" is the pre-1.22 spelling of Cluster.
        "Cluster" | "Global" => Ok(TrafficPolicy::Cluster),
        "Local" => Ok(TrafficPolicy::Local),
        other => Err(FieldError::new(
            path,
            format!("unknown traffic policy {other:?} (expected Cluster or Local)"),
        )),
    }
}

/// `spec.trafficDistribution` asks the EndpointSlice controller for topology hints; the
/// agent, as kube-proxy, follows the hints, not the field (see [`super::endpoints`]). An
/// unknown value (one newer than this agent) only prefers endpoints, so it is logged and the
/// Service is served from its hints as usual, not rejected.
pub(super) fn check_traffic_distribution(namespace: &str, name: &str, value: Option<&str>) -> bool {
    let known = matches!(
        value,
        None | Some("PreferClose" | "PreferSameZone" | "PreferSameNode")
    );
    if !known {
        warn!(
            "Service {namespace}/{name}: unknown spec.trafficDistribution {:?} (expected \
             PreferClose, PreferSameZone or PreferSameNode); its endpoints' hints apply as usual",
            value.unwrap_or_default()
        );
    }
    known
}

fn algorithm(service: &Service) -> Result<Option<Algorithm>, FieldError> {
    let Some(value) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
    else {
        return Ok(None);
    };
    clap::ValueEnum::from_str(value, false)
        .map(Some)
        .map_err(|_| {
            FieldError::new(
                format!("metadata.annotations[{LB_ALGORITHM_ANNOTATION}]"),
                format!("unknown algorithm {value:?} (expected random or maglev)"),
            )
        })
}

fn affinity_timeout(spec: &ServiceSpec) -> Result<Option<u32>, FieldError> {
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => Ok(None),
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_S)),
                Some(t @ 1..=MAX_AFFINITY_TIMEOUT_S) => Ok(Some(t as u32)),
                Some(t) => Err(FieldError::new(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is out of range (1..={MAX_AFFINITY_TIMEOUT_S})"),
                )),
            }
        }
        other => Err(FieldError::new(
            "spec.sessionAffinity",
            format!("unknown session affinity {other:?} (expected None or ClientIP)"),
        )),
    }
}
