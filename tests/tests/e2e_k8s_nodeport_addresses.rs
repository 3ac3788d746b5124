//! End to end in Kubernetes mode: `--nodeport-addresses` serves node ports only on the
//! Node's addresses inside its CIDRs, with real traffic from outside the node.

use std::{io, net::SocketAddrV4};

use k8s_openapi::api::core::v1::NodeAddress;
use lb_tests::{
    apiserver::objects::{node, service, spec_mut},
    cluster::{
        kube::{
            wait_for_backends, wait_until, web_ports, AgentWait, KubeCluster, APPLY_TIMEOUT,
            NAMESPACE, NODE_NAME, REQUEST_TIMEOUT,
        },
        Protocol,
    },
    require_root,
    topology::{EXTERNAL_IFACE, NODE_IP},
};

/// The node's second address, on the outside's LAN as [`NODE_IP`], inside 198.18.1.4/30.
const SECOND_IP: [u8; 4] = [198, 18, 1, 5];
const NODE_PORT: u16 = 30090;

/// Waits until a TCP connect from outside to `target` is refused: nothing translated it, so
/// the node's own stack answered (no listener there).
fn wait_for_refusal(cluster: &KubeCluster, target: SocketAddrV4) {
    wait_until(&format!("{target} refused"), APPLY_TIMEOUT, || {
        let reply = cluster
            .outside()
            .netns
            .run(|| Protocol::Tcp.request(target, REQUEST_TIMEOUT))
            .map_err(|e| e.to_string())?;
        match reply {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("connect to {target}: {other:?}")),
        }
    });
}

#[test]
fn node_ports_answer_only_on_node_addresses_inside_the_cidrs() {
    require_root!();
    let mut cluster = KubeCluster::start_with(1, AgentWait::Ready, |api, agent| {
        let mut two_addresses = node(NODE_NAME, NODE_IP);
        let status = two_addresses
            .status
            .as_mut()
            .expect("the node has a status");
        status
            .addresses
            .get_or_insert_with(Vec::new)
            .push(NodeAddress {
                type_: "ExternalIP".into(),
                address: SECOND_IP.map(|b| b.to_string()).join("."),
            });
        api.apply(&two_addresses)
            .expect("the API server takes the Node");
        agent.extra_args.extend([
            "--nodeport-addresses".into(),
            "2001:2::/48,198.18.1.4/30".into(),
        ]);
        Ok(())
    })
    .unwrap();
    let second = SocketAddrV4::new(SECOND_IP.into(), NODE_PORT);
    cluster
        .topology()
        .node()
        .ip(&[
            "addr",
            "add",
            &format!("{}/24", second.ip()),
            "dev",
            EXTERNAL_IFACE,
        ])
        .unwrap();
    let mut web = service(NAMESPACE, "web", [198, 19, 0, 80].into(), web_ports());
    let spec = spec_mut(&mut web);
    spec.type_ = Some("NodePort".into());
    spec.ports.as_mut().expect("web ports")[0].node_port = Some(NODE_PORT.into());
    cluster.api().create(&web).unwrap();
    cluster
        .api()
        .create(&cluster.web_slice("web", &[0]))
        .unwrap();

    let outside = &cluster.outside().netns;
    let first = SocketAddrV4::new(NODE_IP, NODE_PORT);
    wait_for_backends("inside the CIDR", outside, Protocol::Tcp, second, &[0]);
    wait_for_refusal(&cluster, first);
    let frontends = cluster.inspect().unwrap().0;
    assert!(
        !frontends.contains(&format!("{first}/TCP")),
        "{first} is programmed:\n{frontends}"
    );

    // The default, primary: every address of the Node.
    cluster
        .restart_agent_with(|agent| agent.extra_args.clear())
        .unwrap();
    let outside = &cluster.outside().netns;
    wait_for_backends("primary, first", outside, Protocol::Tcp, first, &[0]);
    wait_for_backends("primary, second", outside, Protocol::Tcp, second, &[0]);
}
