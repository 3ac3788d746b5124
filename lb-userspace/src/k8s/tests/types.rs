//! Frontends of every service type, traffic policies and session affinity.

use super::*;
use crate::model::Algorithm;

/// A service of `type_` with `extra` spec lines (indented by two spaces).
fn svc(type_: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  type: {type_}
  clusterIP: 198.19.0.10
  ports: [{{name: http, port: 80, nodePort: 30080}}]
{extra}"#
    )
}

/// Endpoint 198.18.1.1 runs on this node (node-a), 198.18.1.2 on node-b.
const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.1.1], nodeName: node-a}
- {addresses: [198.18.1.2], nodeName: node-b}
"#;

const ALL: &str = "198.18.1.1:8080,198.18.1.2:8080";
const LOCAL: &str = "198.18.1.1:8080";

#[test]
fn cluster_ip_serves_its_cluster_ips_only() {
    assert_eq!(
        translate(&[&svc("ClusterIP", "")], &[SLICE]),
        expect([("198.19.0.10:80/TCP", ALL)])
    );
}

#[test]
fn node_port_adds_this_nodes_ipv4_addresses_with_the_node_port() {
    assert_eq!(
        translate(&[&svc("NodePort", "")], &[SLICE]),
        expect([("198.18.0.1:30080/TCP", ALL), ("198.19.0.10:80/TCP", ALL),])
    );
}

#[test]
fn load_balancer_adds_node_ports_and_its_ingress_ips() {
    let status = r#"status:
  loadBalancer:
    ingress:
    - {ip: 198.18.9.1}
    - {ip: 198.18.9.2, ipMode: VIP}
    - {ip: 198.18.9.3, ipMode: Proxy}
    - {hostname: lb.example.com}
"#;
    let lb = format!("{}{status}", svc("LoadBalancer", ""));
    assert_eq!(
        translate(&[&lb], &[SLICE]),
        expect([
            ("198.18.0.1:30080/TCP", ALL),
            ("198.18.9.1:80/TCP", ALL),
            ("198.18.9.2:80/TCP", ALL),
            ("198.19.0.10:80/TCP", ALL),
        ])
    );
    let no_node_ports = lb.replace(", nodePort: 30080", "");
    assert_eq!(
        translate(&[&no_node_ports], &[SLICE]).len(),
        3,
        "allocateLoadBalancerNodePorts: false leaves the ports without nodePort"
    );
}

#[test]
fn external_ips_are_served_by_any_type() {
    let extra = "  externalIPs: [198.18.8.1, \"2001:2::8\"]\n";
    assert_eq!(
        translate(&[&svc("ClusterIP", extra)], &[SLICE]),
        expect([("198.18.8.1:80/TCP", ALL), ("198.19.0.10:80/TCP", ALL)])
    );
}

#[test]
fn headless_external_name_and_unassigned_services_are_not_proxied() {
    let extra = "  externalIPs: [198.18.8.1]\n";
    let headless = svc("NodePort", extra).replace("198.19.0.10", "None");
    let external_name =
        svc("ExternalName", extra).replace("clusterIP: 198.19.0.10", "externalName: example.com");
    let unassigned = svc("NodePort", extra).replace("198.19.0.10", "\"\"");
    for yaml in [headless, external_name, unassigned] {
        assert_eq!(translate(&[&yaml], &[SLICE]), expect([]), "{yaml}");
    }
}

#[test]
fn every_cluster_ip_is_a_frontend_of_its_familys_endpoints() {
    let dual = svc(
        "ClusterIP",
        "  clusterIPs: [198.19.0.10, \"2001:2::10\", 198.19.0.11]\n",
    );
    assert_eq!(
        translate(&[&dual], &[SLICE]),
        expect([
            ("198.19.0.10:80/TCP", ALL),
            ("198.19.0.11:80/TCP", ALL),
            ("[2001:2::10]:80/TCP", "")
        ]),
        "no IPv6 slice: the IPv6 frontend rejects"
    );
    let list_wins = svc("ClusterIP", "  clusterIPs: [198.19.0.12]\n");
    assert_eq!(
        translate(&[&list_wins], &[SLICE]),
        expect([("198.19.0.12:80/TCP", ALL)]),
        "spec.clusterIPs takes precedence over spec.clusterIP"
    );
}

#[test]
fn external_traffic_policy_local_keeps_outside_traffic_on_this_node() {
    let extra = "  externalTrafficPolicy: Local\n  externalIPs: [198.18.8.1]\n";
    let local = format!(
        "{}status:\n  loadBalancer:\n    ingress: [{{ip: 198.18.9.1}}]\n",
        svc("LoadBalancer", extra)
    );
    let external = format!("ext {LOCAL} (drop) | int {ALL}");
    assert_eq!(
        translate(&[&local], &[SLICE]),
        expect([
            ("198.18.0.1:30080/TCP", external.as_str()),
            ("198.18.8.1:80/TCP", external.as_str()),
            ("198.18.9.1:80/TCP", external.as_str()),
            ("198.19.0.10:80/TCP", ALL),
        ]),
        "this node's pods reach every endpoint, the cluster IP is not affected"
    );

    let remote_only = SLICE.replace("nodeName: node-a", "nodeName: node-c");
    assert_eq!(
        translate(&[&local], &[&remote_only])["198.18.0.1:30080/TCP"],
        format!("ext  (drop) | int {ALL}"),
        "no local endpoint: outside traffic is dropped"
    );
    let none_ready = SLICE.replace(
        "nodeName: node-",
        "conditions: {ready: false}, nodeName: node-",
    );
    assert_eq!(
        translate(&[&local], &[&none_ready])["198.18.0.1:30080/TCP"],
        "",
        "no usable endpoint anywhere: rejected on every path, Local or not"
    );
}

#[test]
fn internal_traffic_policy_local_keeps_cluster_ip_traffic_on_this_node() {
    let extra = "  internalTrafficPolicy: Local\n";
    assert_eq!(
        translate(&[&svc("NodePort", extra)], &[SLICE]),
        expect([
            ("198.18.0.1:30080/TCP", ALL),
            ("198.19.0.10:80/TCP", &format!("{LOCAL} (drop)")),
        ]),
        "both scopes of the cluster IP; pods reaching a node port are subject to neither policy"
    );
    let remote_only = SLICE.replace("nodeName: node-a", "nodeName: node-c");
    assert_eq!(
        translate(&[&svc("ClusterIP", extra)], &[&remote_only]),
        expect([("198.19.0.10:80/TCP", " (drop)")])
    );
}

#[test]
fn local_policies_fall_back_to_local_serving_terminating_endpoints() {
    let extra = "  internalTrafficPolicy: Local\n";
    let slice = SLICE.replace(
        "{addresses: [198.18.1.1], nodeName: node-a}",
        "{addresses: [198.18.1.1], nodeName: node-a, conditions: {ready: false, serving: true, \
         terminating: true}}",
    );
    assert_eq!(
        translate(&[&svc("ClusterIP", extra)], &[&slice]),
        expect([("198.19.0.10:80/TCP", &format!("{LOCAL} (drop)"))]),
        "the local terminating endpoint serves although another node has a ready one"
    );
}

#[test]
fn client_ip_affinity_applies_to_every_frontend() {
    let default = svc("NodePort", "  sessionAffinity: ClientIP\n");
    assert_eq!(
        translate(&[&default], &[SLICE]),
        expect([
            ("198.18.0.1:30080/TCP", &format!("{ALL} affinity 10800s")),
            ("198.19.0.10:80/TCP", &format!("{ALL} affinity 10800s")),
        ])
    );
    let short = svc(
        "ClusterIP",
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
    );
    assert_eq!(
        translate(&[&short], &[SLICE]),
        expect([("198.19.0.10:80/TCP", &format!("{ALL} affinity 60s"))])
    );
    let none = svc("ClusterIP", "  sessionAffinity: None\n");
    assert_eq!(translate(&[&none], &[SLICE])["198.19.0.10:80/TCP"], ALL);
}

#[test]
fn node_addresses_are_its_internal_and_external_ips() {
    let node = node(
        r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: Hostname, address: node-a}
  - {type: InternalIP, address: 198.18.0.1}
  - {type: ExternalIP, address: 198.18.0.2}
  - {type: InternalIP, address: 198.18.0.1}
"#,
    )
    .unwrap();
    assert_eq!(node.name, "node-a");
    assert_eq!(
        node.addresses,
        [
            "198.18.0.1".parse::<std::net::IpAddr>().unwrap(),
            "198.18.0.2".parse().unwrap()
        ]
    );
}

#[test]
fn endpoints_are_local_when_their_node_name_is_this_node() {
    let slice = SLICE.replace(
        "- {addresses: [198.18.1.2], nodeName: node-b}",
        "- {addresses: [198.18.1.2], nodeName: node-b}\n- {addresses: [198.18.1.3]}",
    );
    let services = [service(&svc("NodePort", "")).unwrap()];
    let slices = [super::slice(&slice).unwrap()];
    let state = desired_state(&services, &slices, &node_a());
    for (frontend, desired) in &state.services {
        for scope in [&desired.external, &desired.internal] {
            let local: Vec<(String, bool)> = scope
                .endpoints
                .iter()
                .map(|e| (e.to_string(), e.local))
                .collect();
            assert_eq!(
                local,
                [
                    ("198.18.1.1:8080".to_string(), true),
                    ("198.18.1.2:8080".to_string(), false),
                    ("198.18.1.3:8080".to_string(), false),
                ],
                "{frontend}: node-a's endpoint is local; node-b's and one without nodeName are not"
            );
        }
    }
    assert_eq!(state.services.len(), 2);
}

#[test]
fn the_lb_algorithm_annotation_reaches_every_frontend() {
    let algorithms = |annotations: &str| {
        let yaml = svc("NodePort", "").replace(
            "{name: web, namespace: shop}",
            &format!("{{name: web, namespace: shop{annotations}}}"),
        );
        let services = [service(&yaml).unwrap()];
        let slices = [slice(SLICE).unwrap()];
        desired_state(&services, &slices, &node_a())
            .services
            .values()
            .map(|s| s.algorithm)
            .collect::<Vec<_>>()
    };
    let maglev = ", annotations: {lb-agent/lb-algorithm: maglev}";
    assert_eq!(algorithms(maglev), [Some(Algorithm::Maglev); 2]);
    let random = ", annotations: {lb-agent/lb-algorithm: random}";
    assert_eq!(algorithms(random), [Some(Algorithm::Random); 2]);
    assert_eq!(
        algorithms(""),
        [None; 2],
        "the node's --lb-algorithm decides"
    );
}

/// A LoadBalancer at 198.18.9.1 with external IP 198.18.8.1 and these source ranges.
fn with_ranges(ranges: &str) -> String {
    format!(
        "{}status:\n  loadBalancer:\n    ingress: [{{ip: 198.18.9.1}}]\n",
        svc(
            "LoadBalancer",
            &format!("  externalIPs: [198.18.8.1]\n  loadBalancerSourceRanges: {ranges}\n")
        )
    )
}

#[test]
fn source_ranges_filter_only_load_balancer_ips() {
    let from = format!("{ALL} from 203.0.113.0/24");
    assert_eq!(
        translate(
            &[&with_ranges("[\" 203.0.113.7/24 \", \"2001:2::/48\"]")],
            &[SLICE]
        ),
        expect([
            ("198.18.0.1:30080/TCP", ALL),
            ("198.18.8.1:80/TCP", ALL),
            ("198.18.9.1:80/TCP", from.as_str()),
            ("198.19.0.10:80/TCP", ALL),
        ]),
        "trimmed, host bits cleared, IPv6 ranges left to IPv6 frontends; node ports, \
         external and cluster IPs open"
    );
}

#[test]
fn a_range_holding_the_node_admits_the_load_balancer_ip_itself() {
    // 198.18.0.1 is node-a's address (kube-proxy's allowFromNode).
    let translated = translate(&[&with_ranges("[198.18.0.0/24]")], &[SLICE]);
    assert_eq!(
        translated["198.18.9.1:80/TCP"],
        format!("{ALL} from 198.18.0.0/24,198.18.9.1/32 +node")
    );
}

#[test]
fn invalid_source_ranges_are_skipped_and_the_rest_kept() {
    let def = service(&with_ranges("[nonsense, 198.18.0.0/33, 192.0.2.0/24]")).unwrap();
    assert_eq!(
        def.load_balancer_source_ranges,
        ["192.0.2.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    let only_invalid = translate(&[&with_ranges("[nonsense]")], &[SLICE]);
    assert_eq!(
        only_invalid["198.18.9.1:80/TCP"], ALL,
        "no valid range: open to every source, as kube-proxy"
    );
}
