//! End to end: `healthCheckNodePort`. In Kubernetes mode the agent answers on a LoadBalancer
//! Service's health check node port as kube-proxy does, asked over HTTP from the outside
//! namespace at the node's address, as a cloud load balancer asks: 503 without a ready
//! endpoint on this node, 200 with their count while there are, the port closed once the
//! Service is deleted or its `externalTrafficPolicy` is Cluster; a port another process holds
//! is reported while everything else keeps working, and served once it is free. As
//! kube-proxy's, the port listens only on the node's addresses that `--nodeport-addresses`
//! keeps. File mode serves them the same way.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
};

use k8s_openapi::api::core::v1::{NodeAddress, Service};
use lb_tests::{
    apiserver::{
        objects::{node, service, spec_mut, terminating_endpoint},
        Options,
    },
    cluster::kube::{
        wait_until, web_ports, web_slice, AgentWait, KubeCluster, APPLY_TIMEOUT, NAMESPACE,
        NODE_NAME, OTHER_NODE,
    },
    cluster::Cluster,
    example,
    netns::NetNs,
    require_root,
    scrape::{self, Metrics, METRICS_ADDR},
    topology::{EXTERNAL_IFACE, NODE_IP},
};

/// Health check node ports of the test's Services (any free port of the node namespace).
const HEALTH_PORT: u16 = 32100;
const TAKEN_PORT: u16 = 32101;

/// A LoadBalancer Service `name` at 198.19.0.`octet` with `externalTrafficPolicy: Local`
/// and `health_port`.
fn lb_service(name: &str, octet: u8, health_port: u16) -> Service {
    let mut service = service(NAMESPACE, name, [198, 19, 0, octet].into(), web_ports());
    let spec = spec_mut(&mut service);
    spec.type_ = Some("LoadBalancer".into());
    spec.external_traffic_policy = Some("Local".into());
    spec.health_check_node_port = Some(health_port.into());
    service
}

/// Where a health check node port is asked from: a namespace and the node's address there.
#[derive(Clone, Copy)]
struct Asker<'a> {
    netns: &'a NetNs,
    node: IpAddr,
}

impl Asker<'_> {
    /// From the outside namespace at the node's address, as a cloud load balancer asks.
    fn outside(cluster: &KubeCluster) -> Asker<'_> {
        Asker {
            netns: &cluster.outside().netns,
            node: NODE_IP.into(),
        }
    }

    /// `GET /` on the node's `port`.
    fn ask(self, port: u16) -> io::Result<scrape::Response> {
        let addr = SocketAddr::new(self.node, port).to_string();
        self.netns
            .run(|| scrape::get(&addr, "/"))
            .expect("entering the namespace")
    }

    /// Waits until `port` answers `status` with Service `name`'s body for `local` endpoints,
    /// with kube-proxy's headers.
    fn wait_for_answer(self, port: u16, name: &str, status: u16, local: usize) {
        let what = format!("port {port} answers {status} with {local} local endpoints of {name}");
        let response = wait_until(&what, APPLY_TIMEOUT, || {
            let response = self.ask(port).map_err(|e| e.to_string())?;
            match (response.status, &response.body) {
                (s, b) if s == status && *b == body(name, local) => Ok(response),
                _ => Err(format!("{response:?}")),
            }
        });
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    }

    /// Waits until nothing listens on `port` (connections are refused).
    fn wait_until_closed(self, port: u16) {
        wait_until(
            &format!("port {port} is closed"),
            APPLY_TIMEOUT,
            || match self.ask(port) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
}

/// kube-proxy's body for Service `name` with `local` endpoints.
fn body(name: &str, local: usize) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": \"{NAMESPACE}\",\n\t\t\"name\": \"{name}\"\n\t}},\
         \n\t\"localEndpoints\": {local},\n\t\"serviceProxyHealthy\": true\n}}"
    )
}

#[test]
fn the_health_check_node_port_follows_the_local_endpoints_and_the_service() {
    require_root!();
    let cluster = KubeCluster::start(2).unwrap();
    let (api, asker) = (cluster.api(), Asker::outside(&cluster));

    let mut lb = lb_service("lb", 70, HEALTH_PORT);
    api.create(&lb).unwrap();
    asker.wait_for_answer(HEALTH_PORT, "lb", 503, 0);

    // Endpoints on another node do not count; each ready one here does.
    let remote = cluster.endpoint(1, OTHER_NODE);
    api.create(&web_slice(
        "lb",
        vec![cluster.endpoint(0, NODE_NAME), remote.clone()],
    ))
    .unwrap();
    asker.wait_for_answer(HEALTH_PORT, "lb", 200, 1);
    api.apply(&cluster.web_slice("lb", &[0, 1])).unwrap();
    asker.wait_for_answer(HEALTH_PORT, "lb", 200, 2);

    // A terminating pod still serves but fails the check, so load balancers move away.
    let draining = terminating_endpoint(cluster.backend(0).addr, NODE_NAME, true);
    api.apply(&web_slice("lb", vec![draining, remote])).unwrap();
    asker.wait_for_answer(HEALTH_PORT, "lb", 503, 0);
    api.apply(&cluster.web_slice("lb", &[1])).unwrap();
    asker.wait_for_answer(HEALTH_PORT, "lb", 200, 1);

    // externalTrafficPolicy Cluster has no health check; Local again has.
    spec_mut(&mut lb).external_traffic_policy = Some("Cluster".into());
    api.apply(&lb).unwrap();
    asker.wait_until_closed(HEALTH_PORT);
    spec_mut(&mut lb).external_traffic_policy = Some("Local".into());
    api.apply(&lb).unwrap();
    asker.wait_for_answer(HEALTH_PORT, "lb", 200, 1);

    api.delete::<Service>(NAMESPACE, "lb").unwrap();
    asker.wait_until_closed(HEALTH_PORT);
}

/// The health check node ports served and those that could not be opened, as `/metrics`
/// counts them.
fn port_gauges(cluster: &KubeCluster) -> (Option<f64>, Option<f64>) {
    let node = cluster.topology().node();
    let text = node.run(|| scrape::get(METRICS_ADDR, "/metrics")).unwrap();
    let metrics = Metrics(text.unwrap().body);
    (
        metrics.value("lbagent_health_check_node_ports", &[]),
        metrics.value("lbagent_health_check_node_ports_unbound", &[]),
    )
}

#[test]
fn a_port_another_process_holds_is_reported_and_served_once_free() {
    require_root!();
    let mut cluster = KubeCluster::start(1).unwrap();
    let holder = cluster
        .topology()
        .node()
        .run(|| TcpListener::bind(("0.0.0.0", TAKEN_PORT)))
        .unwrap()
        .unwrap();
    let api = cluster.api();
    api.create(&lb_service("taken", 71, TAKEN_PORT)).unwrap();
    api.create(&lb_service("free", 72, HEALTH_PORT)).unwrap();
    api.create(&cluster.web_slice("free", &[0])).unwrap();

    // The other Service's port is served, the taken one reported and counted.
    Asker::outside(&cluster).wait_for_answer(HEALTH_PORT, "free", 200, 1);
    assert_eq!(port_gauges(&cluster), (Some(1.0), Some(1.0)));
    let reported = format!(
        "cannot listen on {NODE_IP}:{TAKEN_PORT} for the health check of Service \
         {NAMESPACE}/taken"
    );
    let agent = cluster.agent_mut();
    assert_eq!(agent.log_count(&reported), 1, "{}", agent.log());
    assert!(agent.exit_status().unwrap().is_none(), "the agent stopped");

    // Once the port is free, the next sync opens it.
    drop(holder);
    cluster
        .api()
        .create(&cluster.web_slice("taken", &[0]))
        .unwrap();
    Asker::outside(&cluster).wait_for_answer(TAKEN_PORT, "taken", 200, 1);
    assert_eq!(port_gauges(&cluster), (Some(2.0), Some(0.0)));
}

/// The node's second address, on the outside's LAN as [`NODE_IP`], inside 198.18.1.4/30.
const SECOND_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 5);

#[test]
fn the_port_listens_only_on_the_node_addresses_nodeport_addresses_keeps() {
    require_root!();
    let mut cluster = KubeCluster::start_configured(
        1,
        Options::default(),
        AgentWait::Ready,
        |topo, api, agent| {
            topo.node().ip(&[
                "addr",
                "add",
                &format!("{SECOND_IP}/24"),
                "dev",
                EXTERNAL_IFACE,
            ])?;
            let mut two_addresses = node(NODE_NAME, NODE_IP);
            let status = two_addresses.status.as_mut().expect("a status");
            status
                .addresses
                .get_or_insert_with(Vec::new)
                .push(NodeAddress {
                    type_: "ExternalIP".into(),
                    address: SECOND_IP.to_string(),
                });
            api.apply(&two_addresses)
                .expect("the API server takes the Node");
            agent.extra_args.extend([
                "--nodeport-addresses".into(),
                "2001:2::/48,198.18.1.4/30".into(),
            ]);
            Ok(())
        },
    )
    .unwrap();
    cluster
        .api()
        .create(&lb_service("lb", 74, HEALTH_PORT))
        .unwrap();
    cluster
        .api()
        .create(&cluster.web_slice("lb", &[0]))
        .unwrap();
    let outside = &cluster.outside().netns;
    let (first, second) = (
        Asker {
            netns: outside,
            node: NODE_IP.into(),
        },
        Asker {
            netns: outside,
            node: SECOND_IP.into(),
        },
    );
    second.wait_for_answer(HEALTH_PORT, "lb", 200, 1);
    first.wait_until_closed(HEALTH_PORT);
    let listening = format!(
        "serving the health check of Service {NAMESPACE}/lb on {SECOND_IP}:{HEALTH_PORT}\n"
    );
    assert_eq!(
        cluster.agent().log_count(&listening),
        1,
        "{}",
        cluster.agent().log()
    );

    // The default, primary: on every address of the Node.
    cluster
        .restart_agent_with(|agent| agent.extra_args.clear())
        .unwrap();
    let outside = &cluster.outside().netns;
    for node in [NODE_IP, SECOND_IP] {
        let asker = Asker {
            netns: outside,
            node: node.into(),
        };
        asker.wait_for_answer(HEALTH_PORT, "lb", 200, 1);
    }
}

/// The LoadBalancer of the file-mode test, `--node-name` [`NODE_NAME`].
const FILE_SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: files, namespace: e2e}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  clusterIP: 198.19.0.73
  ports: [{name: http, port: 80, nodePort: 30080}]
";

/// Its slice with one endpoint on node `node`.
fn file_slice(node: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: files-1, \
         namespace: e2e, labels: {{kubernetes.io/service-name: files}}}}\naddressType: IPv4\n\
         ports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [198.18.0.11], \
         nodeName: {node}}}]\n"
    )
}

#[test]
fn file_mode_serves_the_health_check_node_ports_of_its_manifests() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let (service, slice) = (
        dir.path().join("files.yaml"),
        dir.path().join("files-1.yaml"),
    );
    fs::write(&service, FILE_SERVICE).unwrap();
    fs::write(&slice, file_slice(NODE_NAME)).unwrap();
    // The node's only address is IPv6 (loopback, to ask from the node itself).
    let cluster = Cluster::start_configured(dir.path(), |options| {
        options.extra_args = ["--node-name", NODE_NAME, "--node-address", "::1"]
            .map(String::from)
            .into();
    })
    .unwrap();
    // `primary` knows no IPv4 address of the node, so the port listens on every IPv4 address
    // (kube-proxy's fallback), and on the node's IPv6 address.
    let askers = [
        IpAddr::from(Ipv4Addr::LOCALHOST),
        Ipv6Addr::LOCALHOST.into(),
    ]
    .map(|node| Asker {
        netns: cluster.topology().node(),
        node,
    });
    for asker in askers {
        asker.wait_for_answer(HEALTH_PORT, "files", 200, 1);
    }
    fs::write(&slice, file_slice(OTHER_NODE)).unwrap();
    for asker in askers {
        asker.wait_for_answer(HEALTH_PORT, "files", 503, 0);
    }
    fs::remove_file(&service).unwrap();
    for asker in askers {
        asker.wait_until_closed(HEALTH_PORT);
    }
}
