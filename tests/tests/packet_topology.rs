//! Topology-aware routing through the real TC and XDP programs (BPF_PROG_TEST_RUN): a Service
//! and its EndpointSlice, as the API server serves them, translated for a node in zone-a and
//! programmed by the agent's reconciler; new flows from many client ports then reach only the
//! endpoints the hints give this node, and every endpoint once the hints no longer qualify
//! (kube-proxy's fallback rules).

mod fixture;

use std::collections::BTreeSet;
use std::net::SocketAddrV4;

use fixture::{backend, client, vip, Fixture, Hook, Verdict, HOOKS};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_common::{capacity::Capacity, net::tcp_flags};
use lb_frames::Frame;
use lb_tests::require_root;
use lb_userspace::k8s::{desired_state, NodeDef, ServiceDef, SliceDef};

/// The node's address, where the Service's node port is served.
const NODE_ADDR: [u8; 4] = [198, 18, 0, 1];
const NODE_PORT: u16 = 30080;
/// New flows per check, one client source port each.
const FLOWS: u16 = 100;

const ZONE_A: &str = "{forZones: [{name: zone-a}]}";
const ZONE_B: &str = "{forZones: [{name: zone-b}]}";

/// `shop/web`: the fixture's VIP as its cluster IP, port 80 to 8080, node port 30080.
fn web() -> ServiceDef {
    let yaml = format!(
        "metadata: {{name: web, namespace: shop}}\nspec:\n  type: NodePort\n  \
         clusterIP: {}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {NODE_PORT}}}]\n",
        vip(80).ip()
    );
    let service: Service = serde_yaml::from_str(&yaml).unwrap();
    ServiceDef::from_k8s(&service).expect("a valid Service")
}

/// A slice of `web` whose endpoint i is backend(i + 1), on node-b, with `hints[i]` (`""`:
/// none).
fn slice(hints: &[&str]) -> SliceDef {
    let mut yaml = String::from(
        "metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n",
    );
    for (i, hints) in hints.iter().enumerate() {
        let hints = match *hints {
            "" => String::new(),
            hints => format!(", hints: {hints}"),
        };
        let addr = backend(i as u8 + 1);
        yaml += &format!(
            "- {{addresses: [{}], nodeName: node-b{hints}}}\n",
            addr.ip()
        );
    }
    let slice: EndpointSlice = serde_yaml::from_str(&yaml).unwrap();
    SliceDef::from_k8s(&slice, Capacity::Backends.default_entries() as usize)
        .expect("a valid EndpointSlice")
}

/// node-a in zone-a.
fn node_a() -> NodeDef {
    NodeDef {
        name: "node-a".into(),
        addresses: vec![NODE_ADDR.into()],
        zone: Some("zone-a".into()),
        ..NodeDef::default()
    }
}

/// Programs `web` with the slice whose endpoints carry `hints`, as the agent on node-a does.
fn program(fx: &mut Fixture, hints: &[&str]) {
    fx.apply(&desired_state(&[web()], &[slice(hints)], &node_a()));
}

/// The backends new flows reach: to the cluster IP through TC (pods), to the node port
/// through XDP (outside clients). Check `n` uses its own client ports, so that no flow of an
/// earlier check (which keeps its backend) answers for it.
fn reached(fx: &mut Fixture, n: u16) -> BTreeSet<SocketAddrV4> {
    let frontend = match fx.hook {
        Hook::Xdp => SocketAddrV4::new(NODE_ADDR.into(), NODE_PORT),
        _ => vip(80),
    };
    let first = 41_000 + n * FLOWS;
    (first..first + FLOWS)
        .map(|port| {
            let syn = Frame::tcp(client(port), frontend, tcp_flags::SYN).to_bytes();
            let (verdict, out) = fx.run(&syn);
            assert_eq!(verdict, Verdict::Pass, "{:?}", fx.hook);
            let out = lb_frames::parse(&out).expect("a translated frame");
            let (_, dport) = out.ports.expect("ports");
            SocketAddrV4::new(out.dst, dport)
        })
        .collect()
}

fn backends(ns: &[u8]) -> BTreeSet<SocketAddrV4> {
    ns.iter().map(|n| backend(*n)).collect()
}

#[test]
fn zone_hints_keep_new_flows_in_this_zone_until_they_stop_qualifying() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        program(&mut fx, &[ZONE_A, ZONE_A, ZONE_B, ZONE_B]);
        assert_eq!(
            reached(&mut fx, 0),
            backends(&[1, 2]),
            "{hook:?}: zone-a only"
        );

        program(&mut fx, &[ZONE_A, ZONE_A, ZONE_B, ""]);
        assert_eq!(
            reached(&mut fx, 1),
            backends(&[1, 2, 3, 4]),
            "{hook:?}: an endpoint without hints brings back every endpoint"
        );

        program(&mut fx, &[ZONE_B, ZONE_B, ZONE_B, ZONE_B]);
        assert_eq!(
            reached(&mut fx, 2),
            backends(&[1, 2, 3, 4]),
            "{hook:?}: no endpoint for zone-a: every endpoint"
        );

        program(&mut fx, &[ZONE_B, ZONE_A, ZONE_B, ZONE_B]);
        assert_eq!(
            reached(&mut fx, 3),
            backends(&[2]),
            "{hook:?}: back to zone-a"
        );
    }
}

#[test]
fn node_hints_win_over_zone_hints() {
    require_root!();
    let for_node =
        |node: &str| format!("{{forZones: [{{name: zone-a}}], forNodes: [{{name: {node}}}]}}");
    let (here, there) = (for_node("node-a"), for_node("node-b"));
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        program(&mut fx, &[&there, &here, &there, &here]);
        assert_eq!(
            reached(&mut fx, 4),
            backends(&[2, 4]),
            "{hook:?}: the endpoints hinted for node-a, though all are hinted for its zone"
        );
    }
}
