//! End to end: the map size flags of `lb-agent run`. The kernel's maps get exactly the sizes
//! given; Services that do not fit are rejected by name with the reason logged while the others
//! carry traffic, and fit once others make room; a restart with another conntrack size
//! replaces only the conntrack map, saying that tracked flows are lost (another services size:
//! the services and per-service counter maps, refilled by the first apply).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use lb_tests::{
    agent::{Agent, AgentOptions, READY_MARKER},
    cmd, example, require_root,
    servers::{tcp_answerers, tcp_request, Server},
    topology::{backend_addr, backend_name, Topology, CLIENT},
};

/// Port of every Service here; the backends' TCP servers listen on the example's target port.
const PORT: u16 = 80;
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request to a Service that is not programmed is given before it counts as
/// unanswered.
const UNANSWERED: Duration = Duration::from_millis(300);
const REQUESTS: usize = 30;
/// The agent reads the directory every 200 ms and applies at once.
const PROPAGATION: Duration = Duration::from_secs(5);

/// Small maps: 4 services map entries (two Service ports, each in two scopes), 4 backends.
const SIZES: [(&str, &str); 5] = [
    ("--max-service-entries", "4"),
    ("--max-backends", "4"),
    ("--max-backend-slots", "16"),
    ("--conntrack-size", "1024"),
    ("--affinity-size", "64"),
];

/// The map each flag sizes and the entries it must have (the per-service counters get one
/// more than the services map: group ids start at 1).
const EXPECTED: [(&str, u64); 6] = [
    ("LB_SERVICES", 4),
    ("LB_SVC_STATS", 5),
    ("LB_BACKENDS", 4),
    ("LB_SLOTS", 16),
    ("LB_CONNTRACK", 1024),
    ("LB_AFFINITY", 64),
];

/// The ClusterIP of Service `name`.
fn vip(name: &str) -> Ipv4Addr {
    let last = match name {
        "alpha" => 20,
        "beta" => 21,
        "gamma" => 22,
        _ => 23,
    };
    Ipv4Addr::new(198, 19, 0, last)
}

/// A ClusterIP Service with one TCP port `http` (80 -> the example's target port).
fn service_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs:\n    - {ip}\n  ports:\n    \
         - name: http\n      protocol: TCP\n      port: {PORT}\n      targetPort: {target}\n",
        ip = vip(name),
        target = example::TCP_TARGET_PORT
    )
}

/// EndpointSlice `slice` of Service `service` listing the given backends.
fn slice_yaml(service: &str, slice: &str, backends: &[usize]) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\n\
         addressType: IPv4\nports:\n  - name: http\n    protocol: TCP\n    port: {}\n\
         endpoints:\n",
        example::TCP_TARGET_PORT
    );
    for &i in backends {
        let _ = write!(
            yaml,
            "  - addresses:\n      - {}\n    conditions:\n      ready: true\n",
            backend_addr(i)
        );
    }
    yaml
}

/// Writes Service `name` with one EndpointSlice of `backends` into `dir`.
fn write_service(dir: &Path, name: &str, backends: &[usize]) {
    let yaml = format!(
        "{}---\n{}",
        service_yaml(name),
        slice_yaml(name, &format!("{name}-1"), backends)
    );
    example::replace_manifest(dir, &format!("{name}.yaml"), &yaml).unwrap();
}

/// A node with a client and `backends` backend pods, each serving TCP.
fn cluster(backends: usize) -> (Topology, Vec<Server>) {
    let topology = Topology::client_and_backends(backends).unwrap();
    let servers = (0..backends)
        .map(|i| {
            let pod = topology.pod(&backend_name(i));
            let addr = SocketAddrV4::new(pod.addr, example::TCP_TARGET_PORT);
            Server::tcp(&pod.netns, addr, &pod.name).unwrap()
        })
        .collect();
    (topology, servers)
}

fn start_agent(topology: &Topology, manifests: &Path, sizes: &[(&str, &str)]) -> Agent {
    let mut options = AgentOptions::new(topology.id(), manifests, topology.host_ifaces());
    for (flag, value) in sizes {
        options
            .extra_args
            .extend([flag.to_string(), value.to_string()]);
    }
    Agent::start(topology.node(), options).unwrap()
}

/// `bpftool map show pinned` of the agent's map `name`: its id and max_entries.
fn map_info(agent: &Agent, name: &str) -> (u64, u64) {
    let pin = agent.options().bpffs_dir.join("maps").join(name);
    let json = cmd::run(
        "bpftool",
        &["map", "show", "pinned", &pin.to_string_lossy(), "-j"],
    )
    .unwrap();
    let info: serde_yaml::Value = serde_yaml::from_str(&json).unwrap();
    let field = |key: &str| {
        info.get(key)
            .and_then(serde_yaml::Value::as_u64)
            .unwrap_or_else(|| panic!("no {key} in bpftool's output for {name}: {json}"))
    };
    (field("id"), field("max_entries"))
}

/// The backends answering `REQUESTS` new connections to Service `name`; each must be answered.
fn answering(topology: &Topology, name: &str) -> BTreeSet<String> {
    let target = SocketAddrV4::new(vip(name), PORT);
    tcp_answerers(&topology.pod(CLIENT).netns, target, REQUESTS, TIMEOUT)
}

/// Whether one connection to Service `name` is answered within [`UNANSWERED`].
fn answered(topology: &Topology, name: &str) -> bool {
    let target = SocketAddrV4::new(vip(name), PORT);
    let client = &topology.pod(CLIENT).netns;
    client
        .run(|| tcp_request(target, UNANSWERED))
        .unwrap()
        .is_ok()
}

fn names(indexes: &[usize]) -> BTreeSet<String> {
    indexes.iter().map(|&i| backend_name(i)).collect()
}

#[test]
fn small_maps_get_the_flags_sizes_and_services_that_do_not_fit_are_rejected_by_name() {
    require_root!();
    let (topology, _servers) = cluster(5);
    let dir = tempfile::tempdir().unwrap();
    // Planned in ClusterIP order: alpha takes 2 backend ids and 2 services map entries; beta
    // needs 3 more backend ids (2 are free); gamma reuses alpha's backend 0 and takes the last
    // 2 entries; delta finds no entry free. delta's second slice lists more endpoints than the
    // backends map holds and is refused on its own.
    write_service(dir.path(), "alpha", &[0, 1]);
    write_service(dir.path(), "beta", &[2, 3, 4]);
    write_service(dir.path(), "gamma", &[0]);
    write_service(dir.path(), "delta", &[2]);
    let oversized = slice_yaml("delta", "delta-2", &[0, 1, 2, 3, 4]);
    example::replace_manifest(dir.path(), "delta-2.yaml", &oversized).unwrap();
    let mut agent = start_agent(&topology, dir.path(), &SIZES);

    for (map, entries) in EXPECTED {
        assert_eq!(map_info(&agent, map).1, entries, "max_entries of {map}");
    }
    let log = agent.log();
    for reason in [
        "endpoints: 5 endpoints do not fit into the backends map (capacity 4)",
        "service default/beta:http (198.19.0.21:80/TCP) not programmed: it needs 3 more backend \
         ids but only 2 of 4 are free",
        "service default/delta:http (198.19.0.23:80/TCP) not programmed: it needs 2 more \
         services map entries but only 0 of 4 are free",
    ] {
        assert!(log.contains(reason), "{reason:?} not logged:\n{log}");
    }
    assert!(
        log.contains("ready: programmed 2 services, 2 backends"),
        "{log}"
    );

    assert_eq!(answering(&topology, "alpha"), names(&[0, 1]));
    assert_eq!(answering(&topology, "gamma"), names(&[0]));
    assert!(!answered(&topology, "beta"), "beta is not programmed");
    assert!(!answered(&topology, "delta"), "delta is not programmed");

    // Without alpha and delta, beta fits, in the same apply that frees alpha's backend 1:
    // backends 0 (gamma's), 2, 3, 4 and the entries of gamma and beta.
    for file in ["alpha.yaml", "delta.yaml", "delta-2.yaml"] {
        std::fs::remove_file(dir.path().join(file)).unwrap();
    }
    agent
        .wait_for_log("ready: programmed 2 services, 4 backends", 1, PROPAGATION)
        .unwrap();
    assert_eq!(answering(&topology, "beta"), names(&[2, 3, 4]));
    assert_eq!(answering(&topology, "gamma"), names(&[0]));
    assert!(!answered(&topology, "alpha"), "alpha was removed");
}

#[test]
fn a_restart_with_another_conntrack_size_replaces_only_the_conntrack_map() {
    require_root!();
    let (topology, _servers) = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    write_service(dir.path(), "alpha", &[0, 1]);
    let mut agent = start_agent(&topology, dir.path(), &SIZES);
    assert_eq!(answering(&topology, "alpha"), names(&[0, 1]));
    let before: Vec<(u64, u64)> = EXPECTED.iter().map(|(m, _)| map_info(&agent, m)).collect();
    agent.stop_keeping_pins().unwrap();

    let mut bigger = SIZES;
    bigger[3] = ("--conntrack-size", "2048");
    let agent = start_agent(&topology, dir.path(), &bigger);
    let log = agent.log();
    let conntrack_pin = agent.options().bpffs_dir.join("maps/LB_CONNTRACK");
    let replaced = format!(
        "pinned map LB_CONNTRACK at {} is sized for 1024 entries but 2048 are configured: \
         replacing it with a new map of the configured size; established connections lose \
         their conntrack entries",
        conntrack_pin.display()
    );
    assert!(log.contains(&replaced), "{replaced:?} not logged:\n{log}");
    assert_eq!(
        log.matches("pinned map ").count(),
        1,
        "only the conntrack map is replaced:\n{log}"
    );
    for ((map, _), (id, entries)) in EXPECTED.iter().zip(before) {
        let (new_id, new_entries) = map_info(&agent, map);
        if *map == "LB_CONNTRACK" {
            assert_ne!(new_id, id, "a new conntrack map");
            assert_eq!(new_entries, 2048);
        } else {
            assert_eq!((new_id, new_entries), (id, entries), "{map} is reused");
        }
    }
    assert!(log.contains("adopted 1 services, 2 backends"), "{log}");
    assert_eq!(answering(&topology, "alpha"), names(&[0, 1]));
    assert_eq!(agent.log_count(READY_MARKER), 1, "{log}");
}

#[test]
fn a_restart_with_another_services_size_refills_the_new_services_map() {
    require_root!();
    let (topology, _servers) = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    write_service(dir.path(), "alpha", &[0, 1]);
    let mut agent = start_agent(&topology, dir.path(), &SIZES);
    let backends_before = map_info(&agent, "LB_BACKENDS");
    agent.stop_keeping_pins().unwrap();

    let mut bigger = SIZES;
    bigger[0] = ("--max-service-entries", "6");
    let agent = start_agent(&topology, dir.path(), &bigger);
    let log = agent.log();
    for (map, entries) in [("LB_SERVICES", 6), ("LB_SVC_STATS", 7)] {
        assert!(
            log.contains(&format!("pinned map {map} at")),
            "{map} replaced:\n{log}"
        );
        assert_eq!(map_info(&agent, map).1, entries, "max_entries of {map}");
    }
    assert_eq!(
        map_info(&agent, "LB_BACKENDS"),
        backends_before,
        "backends reused"
    );
    assert!(
        log.contains("ready: programmed 1 services, 2 backends"),
        "{log}"
    );
    assert_eq!(answering(&topology, "alpha"), names(&[0, 1]));
}
