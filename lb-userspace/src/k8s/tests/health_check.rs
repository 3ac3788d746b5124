//! `healthCheckNodePort`: which Services have one, and the local endpoints it reports.

use super::*;
use crate::model::HealthCheck;

/// A LoadBalancer `web` with `externalTrafficPolicy: Local` and health check node port
/// 32000, changed by replacing `from` with `to`.
fn lb_service(from: &str, to: &str) -> ServiceDef {
    let yaml = r#"
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  clusterIP: 198.19.0.10
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
"#;
    service(&yaml.replace(from, to)).unwrap()
}

/// The health check of `service` with `slices` on `node_a()`, as the desired state holds it.
fn check(service: &ServiceDef, slices: &[&str]) -> Option<HealthCheck> {
    let slices: Vec<SliceDef> = slices.iter().map(|s| slice(s).unwrap()).collect();
    let state = desired_state([service], &slices, &node_a());
    assert!(state.health_checks.len() <= 1);
    state.health_checks.values().next().cloned()
}

/// A slice of `web` with `ports` and `endpoints` (YAML flow sequences).
fn web_slice(name: &str, address_type: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: {address_type}\nports: {ports}\nendpoints: {endpoints}\n"
    )
}

const PORTS: &str = "[{name: http, port: 8080}, {name: dns, port: 8053, protocol: UDP}]";

#[test]
fn only_a_load_balancer_with_local_external_policy_has_one() {
    let empty = Some(HealthCheck {
        port: 32000,
        local_endpoints: 0,
        addrs: [[198, 18, 0, 1].into()].into(),
    });
    assert_eq!(check(&lb_service("", ""), &[]), empty);
    let cases = [
        (
            "externalTrafficPolicy: Local",
            "externalTrafficPolicy: Cluster",
        ),
        ("type: LoadBalancer", "type: NodePort"),
        // Without a port (the API server always allocates one): logged, nothing served.
        ("healthCheckNodePort: 32000", "healthCheckNodePort: 0"),
        ("healthCheckNodePort: 32000", ""),
        // Not proxied at all: no health check either.
        ("clusterIP: 198.19.0.10", "clusterIP: None"),
        ("clusterIP: 198.19.0.10", "clusterIP: \"2001:2::10\""),
    ];
    for (from, to) in cases {
        assert_eq!(check(&lb_service(from, to), &[]), None, "{from} -> {to}");
    }
}

#[test]
fn local_endpoints_are_this_nodes_ready_addresses() {
    let service = lb_service("", "");
    let count = |slices: &[&str]| check(&service, slices).unwrap().local_endpoints;
    let endpoints = "
- {addresses: [198.18.1.1], nodeName: node-a}
- {addresses: [198.18.1.2], nodeName: node-a, conditions: {ready: true}}
- {addresses: [198.18.1.3], nodeName: node-b}
- {addresses: [198.18.1.4]}
- {addresses: [198.18.1.5], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [198.18.1.6], nodeName: node-a, conditions: {ready: false}}";
    let endpoints = format!("\n{}", endpoints.trim_start_matches('\n'));
    assert_eq!(count(&[&web_slice("a", "IPv4", PORTS, &endpoints)]), 2);

    // Only serving-terminating endpoints here: they still get traffic, but the node fails
    // the check so load balancers move away (kube-proxy's rule).
    let draining = "[{addresses: [198.18.1.5], nodeName: node-a, conditions: \
                    {ready: false, serving: true, terminating: true}}]";
    assert_eq!(count(&[&web_slice("a", "IPv4", PORTS, draining)]), 0);

    // An address is counted once, whatever its ports and slices.
    let one = "[{addresses: [198.18.1.1], nodeName: node-a}]";
    let http_only = "[{name: http, port: 8080}]";
    let slices = [
        web_slice("a", "IPv4", PORTS, one),
        web_slice("b", "IPv4", http_only, one),
    ];
    assert_eq!(count(&[&slices[0], &slices[1]]), 1);

    // IPv6 slices are not served, and a slice without ports has no endpoints to serve.
    let v6 = "[{addresses: [\"2001:2::1\"], nodeName: node-a}]";
    assert_eq!(count(&[&web_slice("c", "IPv6", PORTS, v6)]), 0);
    assert_eq!(count(&[&web_slice("d", "IPv4", "[]", one)]), 0);
}
