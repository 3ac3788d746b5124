//! Matching slices to service ports and choosing endpoints by their conditions.

use super::*;
use crate::model::{Frontend, Protocol};

#[test]
fn service_ports_take_slice_ports_by_name_from_every_slice() {
    let state = translate(&[WEB], &[WEB_SLICE_A, WEB_SLICE_B]);
    assert_eq!(
        state,
        expect([
            ("198.19.0.10:53/UDP", "198.18.1.1:5353,198.18.1.2:5353"),
            (
                "198.19.0.10:80/TCP",
                "198.18.1.1:8080,198.18.1.2:8080,198.18.1.4:8080"
            ),
            ("198.19.0.10:9090/TCP", "198.18.1.1:9091,198.18.1.2:9091"),
        ])
    );
}

#[test]
fn a_named_target_port_resolves_per_endpoint() {
    // targetPort: http-alt names a container port that differs between two pod templates
    // (mid-rollout): the slice controller puts each group in a slice with its own number.
    let svc = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, targetPort: http-alt}]
"#;
    let old_pods = WEB_SLICE_B.replace("[198.18.1.4, 198.18.1.40]", "[198.18.1.4]");
    let new_pods = WEB_SLICE_B
        .replace("name: web-b", "name: web-c")
        .replace("port: 8080", "port: 9080")
        .replace("[198.18.1.4, 198.18.1.40]", "[198.18.1.5]");
    assert_eq!(
        translate(&[svc], &[&old_pods, &new_pods]),
        expect([("198.19.0.10:80/TCP", "198.18.1.4:8080,198.18.1.5:9080")])
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
    assert_eq!(state["198.19.0.53:53/UDP"], "198.18.2.1:5353");
    assert_eq!(
        state["198.19.0.53:53/TCP"], "",
        "slice port `tcp` is UDP, so the TCP service port has no endpoints"
    );
}

#[test]
fn a_selector_less_service_is_served_from_hand_made_slices() {
    let external_db = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 198.19.0.20
  ports: [{port: 5432}]
"#;
    let hand_made = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-manual
  namespace: shop
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{port: 5432}]
endpoints: [{addresses: [198.18.3.1]}]
"#;
    assert_eq!(
        translate(&[external_db], &[hand_made]),
        expect([("198.19.0.20:5432/TCP", "198.18.3.1:5432")])
    );
}

#[test]
fn slices_of_other_services_or_namespaces_are_not_used() {
    let other_ns = WEB_SLICE_B.replace("namespace: shop", "namespace: other");
    let other_svc = WEB_SLICE_B.replace("service-name: web", "service-name: api");
    let unlabelled = WEB_SLICE_B.replace("labels: {kubernetes.io/service-name: web}", "");
    let state = translate(&[WEB], &[&other_ns, &other_svc, &unlabelled]);
    assert!(state.values().all(String::is_empty), "{state:?}");
    assert_eq!(
        state.len(),
        3,
        "services without endpoints are still programmed (to reject)"
    );
}

#[test]
fn duplicate_endpoints_over_slices_count_once() {
    let copy = WEB_SLICE_B.replace("name: web-b", "name: web-c");
    let state = translate(&[WEB], &[WEB_SLICE_B, &copy]);
    assert_eq!(state["198.19.0.10:80/TCP"], "198.18.1.4:8080");
}

const CONDITIONS_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80}]
"#;

/// A slice of `web` with one endpoint per `(host, conditions)`.
fn conditions_slice(endpoints: &[(u8, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-x\n  \
         namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\n\
         ports: [{name: http, port: 8080}]\nendpoints:\n",
    );
    for (host, conditions) in endpoints {
        yaml += &format!("- {{addresses: [198.18.1.{host}], conditions: {{{conditions}}}}}\n");
    }
    yaml
}

#[test]
fn only_ready_endpoints_take_new_connections() {
    let slice = conditions_slice(&[
        (1, ""),
        (2, "ready: true"),
        (3, "ready: false"),
        (4, "ready: false, serving: true, terminating: true"),
    ]);
    assert_eq!(
        translate(&[CONDITIONS_SERVICE], &[&slice])["198.19.0.10:80/TCP"],
        "198.18.1.1:8080,198.18.1.2:8080",
        "unset ready counts as ready; terminating ones wait while any endpoint is ready"
    );
}

#[test]
fn without_ready_endpoints_serving_terminating_ones_take_over() {
    let slice = conditions_slice(&[
        (1, "ready: false, serving: true, terminating: true"),
        (2, "ready: false, terminating: true"),
        (3, "ready: false, serving: false, terminating: true"),
        (4, "ready: false, serving: true"),
    ]);
    assert_eq!(
        translate(&[CONDITIONS_SERVICE], &[&slice])["198.19.0.10:80/TCP"],
        "198.18.1.1:8080,198.18.1.2:8080",
        "serving unset counts as serving; not terminating or not serving never qualify"
    );
    let none = conditions_slice(&[(3, "ready: false, serving: false, terminating: true")]);
    assert_eq!(
        translate(&[CONDITIONS_SERVICE], &[&none])["198.19.0.10:80/TCP"],
        "",
        "no usable endpoint: programmed empty, so new connections are rejected"
    );
}

#[test]
fn a_frontend_claimed_twice_goes_to_the_first_service_by_name() {
    let a = WEB.replace("name: web,", "name: a-web,");
    let services = [service(WEB).unwrap(), service(&a).unwrap()];
    let state = desired_state(&services, &[], &node_a());
    let http = Frontend {
        addr: "198.19.0.10".parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
    };
    assert_eq!(state.services[&http].name.to_string(), "shop/a-web:http");
}

#[test]
fn sctp_ports_are_served_and_fqdn_slices_skipped() {
    let fqdn = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-fqdn, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: FQDN
ports: [{name: dns, port: 8080}]
endpoints: [{addresses: [db.example.com]}]
"#;
    let sctp_slice = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-sctp, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: dns, port: 3868, protocol: SCTP}]
endpoints: [{addresses: ["198.18.1.1"]}]
"#;
    let sctp = WEB.replace("protocol: UDP", "protocol: SCTP");
    let state = translate(&[&sctp], &[fqdn, sctp_slice]);
    assert_eq!(state.len(), 3, "{state:?}");
    assert_eq!(state["198.19.0.10:53/SCTP"], "198.18.1.1:3868");
}
