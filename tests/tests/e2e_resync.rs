//! End to end: the periodic resync. Entries deleted or changed behind the agent's back with
//! the real `bpftool` (a service entry, a backend slot, a backend, a backend's port) come back
//! with their exact bytes, an entry the agent never wrote is deleted, each repair is logged,
//! and the Service answers again afterwards.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{service::scope, IPPROTO_TCP};
use lb_tests::{
    agent::{Agent, AgentOptions},
    bpftool::{self, service_key, slot_key, u32_at},
    example, require_root,
    servers::tcp_answerers,
    topology::{backend_name, Topology, CLIENT},
};

const TIMEOUT: Duration = Duration::from_secs(2);
const REQUESTS: usize = 30;
/// The agent's `--resync-interval` here.
const RESYNC_INTERVAL: &str = "500ms";
/// How long a repair may take: a few resync intervals.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(5);

/// `REQUESTS` new TCP connections from the client pod to the Service: who answered. Every
/// request must succeed.
fn ask(topology: &Topology) -> BTreeSet<String> {
    let client = &topology.pod(CLIENT).netns;
    tcp_answerers(client, example::tcp_vip(), REQUESTS, TIMEOUT)
}

/// The pinned map `name` of `agent`.
fn pin(agent: &Agent, name: &str) -> PathBuf {
    agent.options().bpffs_dir.join("maps").join(name)
}

/// The value under `key` in the map pinned at `map`; panics if there is none.
fn value(map: &Path, key: &[u8]) -> Vec<u8> {
    bpftool::lookup(map, key)
        .unwrap()
        .unwrap_or_else(|| panic!("no entry {key:02x?} in {}", map.display()))
}

#[test]
fn entries_deleted_or_changed_with_bpftool_come_back() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let topology = Topology::client_and_backends(example::BACKENDS).unwrap();
    let _servers = example::tcp_backends(&topology).unwrap();
    let mut options = AgentOptions::new(topology.id(), dir.path(), topology.host_ifaces());
    options.extra_args = vec!["--resync-interval".into(), RESYNC_INTERVAL.into()];
    let mut agent = Agent::start(topology.node(), options).unwrap();
    let all: BTreeSet<String> = (0..example::BACKENDS).map(backend_name).collect();
    assert_eq!(ask(&topology), all);

    // What the agent wrote for the TCP frontend as pods see it (TC looks up INTERNAL).
    let (services, slots, backends) = (
        pin(&agent, "LB_SERVICES"),
        pin(&agent, "LB_SLOTS"),
        pin(&agent, "LB_BACKENDS"),
    );
    let frontend = service_key(
        example::VIP,
        example::TCP_PORT,
        IPPROTO_TCP,
        scope::INTERNAL,
    );
    let service = value(&services, &frontend);
    let id = u32_at(&service, 0);
    assert_eq!(
        u32_at(&service, 4),
        example::BACKENDS as u32,
        "backend_count"
    );
    let slot_keys: Vec<Vec<u8>> = (1..=3).map(|slot| slot_key(id, slot)).collect();
    let slot_values: Vec<Vec<u8>> = slot_keys.iter().map(|k| value(&slots, k)).collect();
    let deleted_backend = slot_values[0].clone();
    let changed_backend = slot_values[2].clone();
    let deleted_backend_value = value(&backends, &deleted_backend);
    let changed_backend_value = value(&backends, &changed_backend);

    // Behind the agent's back: delete the service entry, slot 2, the backend of slot 1; give
    // the backend of slot 3 a wrong port (bytes 16..18, network order); add a frontend the
    // agent never wrote.
    bpftool::delete(&services, &frontend).unwrap();
    bpftool::delete(&slots, &slot_keys[1]).unwrap();
    bpftool::delete(&backends, &deleted_backend).unwrap();
    let mut wrong_port = changed_backend_value.clone();
    wrong_port[16..18].copy_from_slice(&9999u16.to_be_bytes());
    bpftool::update(&backends, &changed_backend, &wrong_port).unwrap();
    let foreign = service_key(
        Ipv4Addr::new(198, 19, 0, 99),
        80,
        IPPROTO_TCP,
        scope::INTERNAL,
    );
    bpftool::update(&services, &foreign, &service).unwrap();

    // Each drift is logged and repaired.
    let repairs = [
        format!(
            "resync: LB_SERVICES {}:{}/TCP internal was missing; rewritten",
            example::VIP,
            example::TCP_PORT
        ),
        format!("resync: LB_SLOTS service {id} slot 2 was missing; rewritten"),
        format!(
            "resync: LB_BACKENDS backend {} was missing; rewritten",
            u32_at(&deleted_backend, 0)
        ),
        format!(
            "resync: LB_BACKENDS backend {} had been changed; rewritten",
            u32_at(&changed_backend, 0)
        ),
        "resync: LB_SERVICES 198.19.0.99:80/TCP internal was not written by the agent; deleted"
            .to_string(),
    ];
    for repair in &repairs {
        agent.wait_for_log(repair, 1, REPAIR_TIMEOUT).unwrap();
    }
    assert!(agent.log().contains("resync repaired"), "{}", agent.log());

    // Restored to the exact bytes; the foreign entry is gone.
    assert_eq!(value(&services, &frontend), service);
    assert_eq!(value(&slots, &slot_keys[1]), slot_values[1]);
    assert_eq!(value(&backends, &deleted_backend), deleted_backend_value);
    assert_eq!(value(&backends, &changed_backend), changed_backend_value);
    assert_eq!(bpftool::lookup(&services, &foreign).unwrap(), None);

    // The Service works again, through every backend.
    assert_eq!(ask(&topology), all);
}
