//! Both families: each family's frontends balance to that family's EndpointSlices only, as
//! kube-proxy programs each family from its own slices; a family without slices rejects
//! (no backends) while the other serves.

use super::*;

/// A dual-stack NodePort Service: cluster IPs 198.19.0.10 and 2001:2:0:53::10.
const DUAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  clusterIP: 198.19.0.10
  clusterIPs: [198.19.0.10, "2001:2:0:53::10"]
  externalIPs: ["2001:2:0:8::1"]
  ports: [{name: http, port: 80, nodePort: 30080}]
"#;

const V4_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.1.1], nodeName: node-a}]
"#;

const V6_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["2001:2:0:1::1"], nodeName: node-a}]
"#;

/// `node-a` with an IPv6 address too.
fn dual_stack_node() -> NodeDef {
    NodeDef {
        addresses: vec!["198.18.0.1".parse().unwrap(), "2001:2::1".parse().unwrap()],
        ..node_a()
    }
}

const V4: &str = "198.18.1.1:8080";
const V6: &str = "[2001:2:0:1::1]:8080";

#[test]
fn each_family_balances_to_its_own_slices() {
    assert_eq!(
        translate_on(&dual_stack_node(), &[DUAL], &[V4_SLICE, V6_SLICE]),
        expect([
            ("198.18.0.1:30080/TCP", V4),
            ("198.19.0.10:80/TCP", V4),
            ("[2001:2::1]:30080/TCP", V6),
            ("[2001:2:0:53::10]:80/TCP", V6),
            ("[2001:2:0:8::1]:80/TCP", V6),
        ])
    );
}

#[test]
fn a_family_without_slices_rejects_alone() {
    assert_eq!(
        translate_on(&dual_stack_node(), &[DUAL], &[V4_SLICE]),
        expect([
            ("198.18.0.1:30080/TCP", V4),
            ("198.19.0.10:80/TCP", V4),
            ("[2001:2::1]:30080/TCP", ""),
            ("[2001:2:0:53::10]:80/TCP", ""),
            ("[2001:2:0:8::1]:80/TCP", ""),
        ])
    );
    assert_eq!(
        translate_on(&dual_stack_node(), &[DUAL], &[V6_SLICE])["198.19.0.10:80/TCP"],
        ""
    );
}

#[test]
fn an_ipv6_only_service_is_served_on_ipv6_only() {
    let v6_only = DUAL
        .replace("ipFamilies: [IPv4, IPv6]", "ipFamilies: [IPv6]")
        .replace("RequireDualStack", "SingleStack")
        .replace("clusterIP: 198.19.0.10", "clusterIP: \"2001:2:0:53::10\"")
        .replace(
            "[198.19.0.10, \"2001:2:0:53::10\"]",
            "[\"2001:2:0:53::10\"]",
        );
    assert_eq!(
        translate_on(&dual_stack_node(), &[&v6_only], &[V4_SLICE, V6_SLICE]),
        expect([
            ("[2001:2::1]:30080/TCP", V6),
            ("[2001:2:0:53::10]:80/TCP", V6),
            ("[2001:2:0:8::1]:80/TCP", V6),
        ]),
        "no node port on the node's IPv4 address"
    );
}
