//! End to end in Kubernetes mode: topology hints, with real traffic from a pod on the node.
//!
//! The node is labelled with its zone through the API server, as a cloud's node controller
//! does; endpoints of other nodes are reachable all the same in this single-node topology, so
//! only the agent's choice decides which get traffic.

use std::{collections::BTreeMap, net::SocketAddrV4};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, ForNode, ForZone};
use lb_tests::{
    apiserver::objects::{node, service, spec_mut},
    cluster::{
        kube::{
            wait_for_backends, web_ports, web_slice, KubeCluster, NAMESPACE, NODE_NAME, OTHER_NODE,
        },
        Protocol,
    },
    require_root,
    topology::NODE_IP,
};

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Labels this node (in the API server) with `zone`.
fn label_zone(cluster: &KubeCluster, zone: &str) {
    let mut labelled = node(NODE_NAME, NODE_IP);
    labelled
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(ZONE_LABEL.into(), zone.into());
    cluster.api().apply(&labelled).unwrap();
}

/// Backend `index`'s endpoint (on another node) with hints for `zones` and `nodes`.
fn hinted(cluster: &KubeCluster, index: usize, zones: &[&str], nodes: &[&str]) -> Endpoint {
    let mut endpoint = cluster.endpoint(index, OTHER_NODE);
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    endpoint.hints = Some(EndpointHints {
        for_zones: Some(
            names(zones)
                .into_iter()
                .map(|name| ForZone { name })
                .collect(),
        ),
        for_nodes: Some(
            names(nodes)
                .into_iter()
                .map(|name| ForNode { name })
                .collect(),
        ),
    });
    endpoint
}

#[test]
fn a_zone_hinted_service_keeps_clients_in_the_nodes_zone_and_falls_back_without_full_hints() {
    require_root!();
    let cluster = KubeCluster::start(3).unwrap();
    let api = cluster.api();
    let client = &cluster.client().netns;
    let cluster_ip = SocketAddrV4::new([198, 19, 0, 70].into(), 80);
    let dns = SocketAddrV4::new(*cluster_ip.ip(), 53);
    label_zone(&cluster, "zone-a");

    let mut zoned = service(NAMESPACE, "zoned", *cluster_ip.ip(), web_ports());
    spec_mut(&mut zoned).traffic_distribution = Some("PreferSameZone".into());
    api.create(&zoned).unwrap();
    let by_zone = |hints: [&[&str]; 3]| {
        let endpoints = (0..3).map(|i| hinted(&cluster, i, hints[i], &[])).collect();
        web_slice("zoned", endpoints)
    };
    api.create(&by_zone([&["zone-a"], &["zone-b"], &["zone-a"]]))
        .unwrap();
    wait_for_backends("zone-a", client, Protocol::Tcp, cluster_ip, &[0, 2]);
    wait_for_backends("zone-a UDP", client, Protocol::Udp, dns, &[0, 2]);

    // The node moves to zone-b: its clients follow the hints for zone-b.
    label_zone(&cluster, "zone-b");
    wait_for_backends("zone-b", client, Protocol::Tcp, cluster_ip, &[1]);

    // One endpoint without hints (a controller mid-update): every endpoint.
    api.apply(&by_zone([&["zone-a"], &["zone-b"], &[]]))
        .unwrap();
    wait_for_backends(
        "incomplete hints",
        client,
        Protocol::Tcp,
        cluster_ip,
        &[0, 1, 2],
    );
    // Full hints, none for this node's zone: every endpoint too.
    api.apply(&by_zone([&["zone-a"], &["zone-a"], &["zone-c"]]))
        .unwrap();
    wait_for_backends(
        "no hint for zone-b",
        client,
        Protocol::Tcp,
        cluster_ip,
        &[0, 1, 2],
    );

    // PreferSameNode: the endpoint hinted for this node, over its zone's.
    let same_node = vec![
        hinted(&cluster, 0, &["zone-b"], &[OTHER_NODE]),
        hinted(&cluster, 1, &["zone-b"], &[NODE_NAME]),
        hinted(&cluster, 2, &["zone-b"], &[OTHER_NODE]),
    ];
    api.apply(&web_slice("zoned", same_node)).unwrap();
    wait_for_backends("forNodes", client, Protocol::Tcp, cluster_ip, &[1]);
}
