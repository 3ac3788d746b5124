use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::desired_state;
use super::validate::{ServiceDef, SliceDef};
use crate::model::{Frontend, Protocol};

fn service(yaml: &str) -> Result<ServiceDef, String> {
    let service: Service = serde_yaml::from_str(yaml).unwrap();
    ServiceDef::from_k8s(&service).map_err(|e| e.to_string())
}

fn slice(yaml: &str) -> Result<SliceDef, String> {
    let slice: EndpointSlice = serde_yaml::from_str(yaml).unwrap();
    SliceDef::from_k8s(&slice).map_err(|e| e.to_string())
}

/// Frontend ("addr:port/PROTO") -> sorted backends ("addr:port").
fn translate(services: &[&str], slices: &[&str]) -> BTreeMap<String, Vec<String>> {
    let services: Vec<ServiceDef> = services.iter().map(|s| service(s).unwrap()).collect();
    let slices: Vec<SliceDef> = slices.iter().map(|s| slice(s).unwrap()).collect();
    desired_state(&services, &slices)
        .services
        .iter()
        .map(|(fe, svc)| {
            let backends = svc.external.endpoints.iter().map(|e| e.to_string()).collect();
            (fe.to_string(), backends)
        })
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

#[test]
fn service_ports_take_slice_ports_by_name_from_every_slice() {
    let state = translate(&[WEB], &[WEB_SLICE_A, WEB_SLICE_B]);
    assert_eq!(
        state,
        BTreeMap::from([
            (
                "198.19.0.10:53/UDP".to_string(),
                vec!["198.18.1.1:5353".to_string(), "198.18.1.2:5353".to_string()]
            ),
            (
                "198.19.0.10:80/TCP".to_string(),
                vec![
                    "198.18.1.1:8080".to_string(),
                    "198.18.1.2:8080".to_string(),
                    "198.18.1.4:8080".to_string()
                ]
            ),
            (
                "198.19.0.10:9090/TCP".to_string(),
                vec!["198.18.1.1:9091".to_string(), "198.18.1.2:9091".to_string()]
            ),
        ])
    );
}

#[test]
fn unnamed_ports_match_and_protocol_must_agree() {
    let svc = r#"
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  clusterIP: 198.19.0.53
  ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP, name: tcp}]
"#;
    let slice = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{port: 5353, protocol: UDP}, {name: tcp, port: 5353, protocol: UDP}]
endpoints: [{addresses: [198.18.2.1]}]
"#;
    let state = translate(&[svc], &[slice]);
    assert_eq!(state["198.19.0.53:53/UDP"], ["198.18.2.1:5353"]);
    assert!(
        state["198.19.0.53:53/TCP"].is_empty(),
        "slice port `tcp` is UDP, so the TCP service port has no endpoints"
    );
}

#[test]
fn slices_of_other_services_or_namespaces_are_not_used() {
    let other_ns = WEB_SLICE_B.replace("namespace: shop", "namespace: other");
    let other_svc = WEB_SLICE_B.replace("service-name: web", "service-name: api");
    let unlabelled = WEB_SLICE_B.replace("labels: {kubernetes.io/service-name: web}", "");
    let state = translate(&[WEB], &[&other_ns, &other_svc, &unlabelled]);
    assert!(state.values().all(Vec::is_empty), "{state:?}");
    assert_eq!(
        state.len(),
        3,
        "services without endpoints are still programmed"
    );
}

#[test]
fn every_ipv4_cluster_ip_is_a_frontend_and_ipv6_waits() {
    let dual = WEB.replace(
        "clusterIP: 198.19.0.10",
        "clusterIP: 198.19.0.10\n  clusterIPs: [198.19.0.10, \"2001:2::10\"]",
    );
    let state = translate(&[&dual], &[WEB_SLICE_A]);
    assert_eq!(
        state.keys().collect::<Vec<_>>(),
        [
            "198.19.0.10:53/UDP",
            "198.19.0.10:80/TCP",
            "198.19.0.10:9090/TCP"
        ]
    );
    let parsed = service(&dual).unwrap();
    assert_eq!(
        parsed.cluster_ips.len(),
        2,
        "IPv6 is validated and kept in the model"
    );
}

#[test]
fn cluster_ips_list_takes_precedence_over_cluster_ip() {
    let svc = WEB.replace(
        "clusterIP: 198.19.0.10",
        "clusterIP: 198.19.0.10\n  clusterIPs: [198.19.0.11]",
    );
    let state = translate(&[&svc], &[]);
    assert!(
        state.keys().all(|k| k.starts_with("198.19.0.11:")),
        "{state:?}"
    );
}

#[test]
fn headless_external_name_and_unassigned_services_have_no_frontend() {
    let headless = WEB.replace("clusterIP: 198.19.0.10", "clusterIP: None");
    let external = WEB.replace(
        "clusterIP: 198.19.0.10",
        "type: ExternalName\n  externalName: example.com\n  clusterIP: 198.19.0.10",
    );
    let unassigned = WEB.replace("clusterIP: 198.19.0.10", "clusterIP: \"\"");
    for svc in [headless, external, unassigned] {
        assert_eq!(translate(&[&svc], &[WEB_SLICE_A]), BTreeMap::new(), "{svc}");
    }
}

#[test]
fn node_port_and_load_balancer_services_get_their_cluster_ip() {
    let node_port = WEB.replace(
        "clusterIP: 198.19.0.10",
        "type: NodePort\n  clusterIP: 198.19.0.10",
    );
    assert_eq!(translate(&[&node_port], &[]).len(), 3);
}

#[test]
fn ipv6_and_fqdn_slices_and_sctp_ports_are_skipped() {
    let v6 = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["2001:2::1"]}]
"#;
    let fqdn = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-fqdn, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: FQDN
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [db.example.com]}]
"#;
    let sctp = WEB.replace("protocol: UDP", "protocol: SCTP");
    let state = translate(&[&sctp], &[v6, fqdn]);
    assert_eq!(state.len(), 2, "the SCTP port has no frontend: {state:?}");
    assert!(state.values().all(Vec::is_empty));
}

#[test]
fn a_frontend_claimed_twice_goes_to_the_first_service_by_name() {
    let a = WEB.replace("name: web,", "name: a-web,");
    let state = {
        let services = [service(WEB).unwrap(), service(&a).unwrap()];
        desired_state(&services, &[])
    };
    let http = Frontend {
        addr: "198.19.0.10".parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
    };
    assert_eq!(state.services[&http].name.to_string(), "shop/a-web:http");
}

#[test]
fn duplicate_endpoints_over_slices_count_once() {
    let copy = WEB_SLICE_B.replace("name: web-b", "name: web-c");
    let state = translate(&[WEB], &[WEB_SLICE_B, &copy]);
    assert_eq!(state["198.19.0.10:80/TCP"], ["198.18.1.4:8080"]);
}

#[test]
fn invalid_service_fields_are_named() {
    let cases = [
        (
            "port: 9090",
            "port: 70000",
            "spec.ports[1].port: 70000 is not a port (1..=65535)",
        ),
        (
            "port: 9090",
            "port: 0",
            "spec.ports[1].port: 0 is not a port (1..=65535)",
        ),
        (
            "protocol: UDP",
            "protocol: QUIC",
            r#"spec.ports[2].protocol: unknown protocol "QUIC" (expected TCP, UDP or SCTP)"#,
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIPs: [198.19.0.10, 198.19.0.300]",
            r#"spec.clusterIPs[1]: "198.19.0.300" is not an IP address"#,
        ),
        (
            "clusterIP: 198.19.0.10",
            "clusterIP: web.local",
            r#"spec.clusterIP: "web.local" is not an IP address"#,
        ),
        (
            "{name: web, namespace: shop}",
            "{namespace: shop}",
            "metadata.name: missing",
        ),
        (
            "{name: dns, port: 53, protocol: UDP}",
            "{name: dns, port: 9090}",
            "spec.ports[2]: duplicate port 9090/TCP (also spec.ports[1])",
        ),
        (
            "clusterIP: 198.19.0.10",
            "type: Magic\n  clusterIP: 198.19.0.10",
            r#"spec.type: unknown service type "Magic""#,
        ),
    ];
    for (from, to, expected) in cases {
        let yaml = WEB.replace(from, to);
        assert_eq!(service(&yaml).unwrap_err(), expected, "{yaml}");
    }
}

#[test]
fn invalid_slice_fields_are_named() {
    let cases = [
        (
            "port: 9091",
            "port: 65536",
            "ports[0].port: 65536 is not a port (1..=65535)",
        ),
        (
            "protocol: UDP",
            "protocol: udp",
            r#"ports[2].protocol: unknown protocol "udp" (expected TCP, UDP or SCTP)"#,
        ),
        (
            "[198.18.1.2]",
            "[198.18.1.2.5]",
            r#"endpoints[1].addresses[0]: "198.18.1.2.5" is not an IP address"#,
        ),
        (
            "[198.18.1.2]",
            "[\"2001:2::2\"]",
            "endpoints[1].addresses[0]: 2001:2::2 does not match addressType \"IPv4\"",
        ),
        (
            "[198.18.1.2]",
            "[]",
            "endpoints[1].addresses: must contain at least one address",
        ),
        (
            "addressType: IPv4",
            "addressType: IPv5",
            r#"addressType: unknown address type "IPv5" (expected IPv4, IPv6 or FQDN)"#,
        ),
        ("addressType: IPv4", "", "addressType: missing"),
    ];
    for (from, to, expected) in cases {
        let yaml = WEB_SLICE_A.replace(from, to);
        assert_eq!(slice(&yaml).unwrap_err(), expected, "{yaml}");
    }
}
