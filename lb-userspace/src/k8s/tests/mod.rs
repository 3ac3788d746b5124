//! Translation and validation tests; objects are YAML, as users write them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_common::Capacity;

use super::{desired_state, NodeDef, ServiceDef, SliceDef};
use crate::model::{BackendSet, DesiredService};

mod dual_stack;
mod health_check;
mod topology;
mod translate;
mod types;
mod validate;

fn service(yaml: &str) -> Result<ServiceDef, String> {
    let service: Service = serde_yaml::from_str(yaml).unwrap();
    ServiceDef::from_k8s(&service).map_err(|e| e.to_string())
}

fn slice(yaml: &str) -> Result<SliceDef, String> {
    let slice: EndpointSlice = serde_yaml::from_str(yaml).unwrap();
    SliceDef::from_k8s(&slice, Capacity::Backends.default_entries() as usize)
        .map_err(|e| e.to_string())
}

fn node(yaml: &str) -> Result<NodeDef, String> {
    let node: Node = serde_yaml::from_str(yaml).unwrap();
    NodeDef::from_k8s(&node).map_err(|e| e.to_string())
}

/// This node in the tests: `node-a` in `zone-a` at 198.18.0.1, where health check node ports
/// listen ([`dual_stack`] gives it an IPv6 address too).
fn node_a() -> NodeDef {
    NodeDef {
        name: "node-a".into(),
        addresses: vec!["198.18.0.1".parse().unwrap()],
        zone: Some("zone-a".into()),
        health_check_addrs: [std::net::IpAddr::from([198, 18, 0, 1])].into(),
    }
}

/// One scope's backends, comma-separated, with " (drop)" for DROP_IF_NO_BACKEND.
fn side(backends: &BackendSet) -> String {
    let list: Vec<String> = backends.endpoints.iter().map(|e| e.to_string()).collect();
    let drop = if backends.drop_if_empty {
        " (drop)"
    } else {
        ""
    };
    format!("{}{drop}", list.join(","))
}

/// A frontend's scopes: one list when both scopes are equal, else `ext X | int Y`; then
/// ` affinity Ns` with session affinity, ` from R,...` with source ranges, ` +node` when one
/// holds the node.
fn describe(service: &DesiredService) -> String {
    let mut text = if service.external == service.internal {
        side(&service.external)
    } else {
        format!(
            "ext {} | int {}",
            side(&service.external),
            side(&service.internal)
        )
    };
    if let Some(timeout) = service.affinity_timeout_s {
        text += &format!(" affinity {timeout}s");
    }
    if !service.source_ranges.is_empty() {
        let ranges: Vec<String> = service
            .source_ranges
            .iter()
            .map(|r| r.to_string())
            .collect();
        text += &format!(" from {}", ranges.join(","));
    }
    if service.source_ranges_hold_node {
        text += " +node";
    }
    text
}

/// Frontend ("addr:port/PROTO") -> its scopes ([`describe`]), on `node_a()`.
fn translate(services: &[&str], slices: &[&str]) -> BTreeMap<String, String> {
    translate_on(&node_a(), services, slices)
}

/// [`translate`] on `node`.
fn translate_on(node: &NodeDef, services: &[&str], slices: &[&str]) -> BTreeMap<String, String> {
    let services: Vec<ServiceDef> = services.iter().map(|s| service(s).unwrap()).collect();
    let slices: Vec<SliceDef> = slices.iter().map(|s| slice(s).unwrap()).collect();
    desired_state(&services, &slices, node)
        .services
        .iter()
        .map(|(fe, svc)| (fe.to_string(), describe(svc)))
        .collect()
}

/// `(frontend, scopes)` pairs as an owned map, for comparisons.
fn expect<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: metrics, port: 9090, protocol: TCP}
  - {name: dns, port: 53, protocol: UDP}
"#;

const WEB_SLICE_A: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: metrics, port: 9091}
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [198.18.1.1]
- addresses: [198.18.1.2]
  conditions: {ready: true}
- addresses: [198.18.1.3]
  conditions: {ready: false, serving: true}
"#;

const WEB_SLICE_B: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-b
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080}
endpoints:
- addresses: [198.18.1.4, 198.18.1.40]
"#;
