//! Topology hints narrowing Cluster-policy endpoints, with kube-proxy's fallbacks.

use super::*;
use crate::k8s::service::check_traffic_distribution;

/// `web` (cluster IP 198.19.0.10, node port 30080) with `extra` spec lines.
fn web(extra: &str) -> String {
    format!(
        "metadata: {{name: web, namespace: shop}}\nspec:\n  type: NodePort\n  \
         clusterIP: 198.19.0.10\n  ports: [{{name: http, port: 80, nodePort: 30080}}]\n{extra}"
    )
}

/// A slice of `web` whose endpoints 198.18.1.N carry the given hints YAML (`""`: none).
fn hinted(hints: &[&str]) -> String {
    let mut yaml = String::from(
        "metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n",
    );
    for (i, hints) in hints.iter().enumerate() {
        let node = if i == 0 { "node-a" } else { "node-b" };
        yaml += &format!(
            "- {{addresses: [198.18.1.{}], nodeName: {node}{}}}\n",
            i + 1,
            match *hints {
                "" => String::new(),
                hints => format!(", hints: {hints}"),
            }
        );
    }
    yaml
}

const ZONE_A: &str = "{forZones: [{name: zone-a}]}";
const ZONE_B: &str = "{forZones: [{name: zone-b}]}";

/// The cluster IP's endpoints.
fn cluster_ip(service: &str, slice: &str) -> String {
    translate(&[service], &[slice])["198.19.0.10:80/TCP"].clone()
}

#[test]
fn zone_hints_keep_this_zones_endpoints_on_every_frontend() {
    let slice = hinted(&[ZONE_B, ZONE_A, ZONE_A]);
    assert_eq!(
        translate(&[&web("")], &[&slice]),
        expect([
            ("198.18.0.1:30080/TCP", "198.18.1.2:8080,198.18.1.3:8080"),
            ("198.19.0.10:80/TCP", "198.18.1.2:8080,198.18.1.3:8080"),
        ]),
        "node-a is in zone-a: the zone-b endpoint is left out, even the one on node-a"
    );
    let both = "{forZones: [{name: zone-b}, {name: zone-a}]}";
    assert_eq!(
        cluster_ip(&web(""), &hinted(&[both, ZONE_B])),
        "198.18.1.1:8080",
        "an endpoint hinted for several zones serves each"
    );
}

#[test]
fn incomplete_or_foreign_hints_fall_back_to_every_endpoint() {
    let all = "198.18.1.1:8080,198.18.1.2:8080,198.18.1.3:8080";
    assert_eq!(
        cluster_ip(&web(""), &hinted(&[ZONE_A, ZONE_B, ""])),
        all,
        "one ready endpoint without hints disables them"
    );
    assert_eq!(
        cluster_ip(&web(""), &hinted(&[ZONE_B, ZONE_B, ZONE_B])),
        all,
        "no endpoint for this node's zone"
    );
    let services = [service(&web("")).unwrap()];
    let slices = [slice(&hinted(&[ZONE_A, ZONE_B, ZONE_B])).unwrap()];
    let zoneless = NodeDef {
        zone: None,
        ..node_a()
    };
    let state = desired_state(&services, &slices, &zoneless);
    assert_eq!(
        describe(state.services.values().next().unwrap()),
        all,
        "a node without a zone label uses every endpoint"
    );
}

#[test]
fn only_ready_endpoints_decide_and_terminating_ones_ignore_hints() {
    let slice = hinted(&[ZONE_B, ZONE_A, ""]).replace(
        "198.18.1.3], nodeName: node-b",
        "198.18.1.3], nodeName: node-b, conditions: {ready: false}",
    );
    assert_eq!(
        cluster_ip(&web(""), &slice),
        "198.18.1.2:8080",
        "the unready endpoint's missing hints do not count"
    );
    let draining = "conditions: {ready: false, serving: true, terminating: true}";
    let slice = hinted(&[ZONE_B, ZONE_B])
        .replace("nodeName: node-a", &format!("nodeName: node-a, {draining}"))
        .replace("nodeName: node-b", &format!("nodeName: node-b, {draining}"));
    assert_eq!(
        cluster_ip(&web(""), &slice),
        "198.18.1.1:8080,198.18.1.2:8080",
        "no ready endpoint: the serving terminating ones, whatever their zone"
    );
}

#[test]
fn node_hints_come_first_then_zone_hints() {
    let same_node = "{forNodes: [{name: node-a}], forZones: [{name: zone-a}]}";
    let other_node = "{forNodes: [{name: node-b}], forZones: [{name: zone-a}]}";
    assert_eq!(
        cluster_ip(&web(""), &hinted(&[same_node, other_node])),
        "198.18.1.1:8080",
        "PreferSameNode: the endpoint hinted for node-a"
    );
    assert_eq!(
        cluster_ip(&web(""), &hinted(&[other_node, other_node])),
        "198.18.1.1:8080,198.18.1.2:8080",
        "no endpoint for this node: the zone hints apply (both are for zone-a)"
    );
    assert_eq!(
        cluster_ip(&web(""), &hinted(&[same_node, ZONE_B])),
        "198.18.1.1:8080",
        "an endpoint without node hints: the zone hints apply"
    );
}

#[test]
fn local_policies_ignore_hints() {
    let slice = hinted(&[ZONE_B, ZONE_A]);
    assert_eq!(
        translate(&[&web("  externalTrafficPolicy: Local\n")], &[&slice]),
        expect([
            (
                "198.18.0.1:30080/TCP",
                "ext 198.18.1.1:8080 (drop) | int 198.18.1.2:8080"
            ),
            ("198.19.0.10:80/TCP", "198.18.1.2:8080"),
        ]),
        "outside traffic keeps to node-a's endpoint although it is hinted for zone-b"
    );
    assert_eq!(
        cluster_ip(&web("  internalTrafficPolicy: Local\n"), &slice),
        "198.18.1.1:8080 (drop)"
    );
}

#[test]
fn the_zone_is_the_nodes_zone_label() {
    let labelled = |labels: &str| {
        node(&format!(
            "metadata: {{name: node-a, labels: {labels}}}\nstatus: {{addresses: []}}\n"
        ))
        .unwrap()
        .zone
    };
    assert_eq!(
        labelled("{topology.kubernetes.io/zone: zone-a}"),
        Some("zone-a".into())
    );
    assert_eq!(labelled("{topology.kubernetes.io/zone: ''}"), None);
    assert_eq!(
        labelled("{failure-domain.beta.kubernetes.io/zone: zone-a}"),
        None
    );
}

#[test]
fn traffic_distribution_is_checked_but_never_rejects_a_service() {
    for value in ["PreferClose", "PreferSameZone", "PreferSameNode"] {
        assert!(
            check_traffic_distribution("shop", "web", Some(value)),
            "{value}"
        );
    }
    assert!(check_traffic_distribution("shop", "web", None));
    assert!(!check_traffic_distribution(
        "shop",
        "web",
        Some("PreferFar")
    ));
    assert!(!check_traffic_distribution("shop", "web", Some("")));
    let unknown = web("  trafficDistribution: PreferFar\n");
    assert_eq!(
        cluster_ip(&unknown, &hinted(&[ZONE_B, ZONE_A])),
        "198.18.1.2:8080",
        "an unknown value is logged; the hints apply as for any other"
    );
}
