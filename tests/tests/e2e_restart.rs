//! End to end: restarting the agent loses nothing. Maps and program links stay pinned while no
//! agent runs, and a new agent adopts them: established connections keep their backends and
//! new ones are served throughout, even across many SIGKILLs, and changes made while no agent
//! ran are applied as a minimal diff that keeps the ids of what did not change.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use lb_tests::{
    agent::{untranslated_after_cleanup, Agent, READY_MARKER, READY_TIMEOUT},
    cluster::{Cluster, Protocol},
    cmd, example, inspect_output,
    load::client_traffic,
    require_root,
    servers::{tcp_request, TcpClient},
    topology::{backend_addr, backend_name},
};

/// How many times the agent is killed and restarted.
const RESTARTS: usize = 20;
/// Pause between a restarted agent becoming ready and the next kill.
const BETWEEN_RESTARTS: Duration = Duration::from_millis(400);
const TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn connections_survive_the_agent_being_killed_and_restarted_many_times() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let mut cluster = Cluster::start(dir.path(), "info").unwrap();
    let client = cluster.client().netns.open().unwrap();
    let stop = AtomicBool::new(false);

    let traffic = thread::scope(|scope| {
        let (tcp, udp, stop) = (example::tcp_vip(), example::udp_vip(), &stop);
        let worker = scope.spawn(move || client_traffic(client, tcp, udp, stop));
        let restarts = (|| {
            for restart in 0..RESTARTS {
                thread::sleep(BETWEEN_RESTARTS);
                cluster.restart_agent_after_kill()?;
                let log = cluster.agent().log();
                assert!(
                    log.contains("replaced the program in the pinned tcx link"),
                    "restart {restart} did not adopt the pinned links:\n{log}"
                );
                assert!(
                    !log.contains("different layout"),
                    "restart {restart} replaced a map:\n{log}"
                );
            }
            thread::sleep(BETWEEN_RESTARTS);
            Ok::<_, lb_tests::Error>(())
        })();
        stop.store(true, Ordering::Relaxed);
        let traffic = worker.join().expect("client traffic panicked");
        restarts.unwrap();
        traffic
    });

    traffic.assert_nothing_lost("", RESTARTS, RESTARTS * 10);
    // The restarts rewrote nothing that changes where new flows go: all backends still serve.
    let replies = cluster.requests(Protocol::Tcp, 30, TIMEOUT).unwrap();
    assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
}

#[test]
fn an_upgrade_replaces_a_pinned_map_whose_layout_changed() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let mut cluster = Cluster::start(dir.path(), "info").unwrap();
    cluster.agent_mut().kill().unwrap();

    // An "older version" left a conntrack map with another value size at the pin path.
    let pin = cluster
        .agent()
        .options()
        .bpffs_dir
        .join("maps/LB_CONNTRACK");
    std::fs::remove_file(&pin).unwrap();
    let pin_text = pin.to_string_lossy();
    cmd::run(
        "bpftool",
        &[
            "map",
            "create",
            &pin_text,
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "LB_CONNTRACK",
        ],
    )
    .unwrap();

    cluster.restart_agent_after_kill().unwrap();
    let log = cluster.agent().log();
    assert!(
        log.contains("pinned map LB_CONNTRACK")
            && log.contains("different layout (Hash, key 4 B, value 8 B, 16 entries)")
            && log.contains("established connections lose their conntrack entries"),
        "no clear log line about the replaced map:\n{log}"
    );
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let replies = cluster.requests(protocol, 10, TIMEOUT).unwrap();
        assert!(replies.iter().all(|r| r.is_ok()), "{protocol}: {replies:?}");
    }
    // The new map is the one pinned: inspect reads it with lb-common's layout.
    let inspect = cluster.agent().inspect().unwrap();
    assert!(inspect.contains("198.18.0.10"), "{inspect}");
}

#[test]
fn a_clean_exit_leaves_traffic_flowing_until_cleanup_removes_everything() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let mut cluster = Cluster::start(dir.path(), "info").unwrap();
    let refused = cluster.agent().cleanup().unwrap_err().to_string();
    assert!(refused.contains("is running"), "{refused}");
    let status = cluster.agent_mut().stop_keeping_pins().unwrap();
    assert!(status.success(), "{status}");
    let bpffs_dir = cluster.agent().options().bpffs_dir.clone();
    assert!(bpffs_dir.join("maps/LB_CONNTRACK").exists());
    assert!(bpffs_dir.join("links/v-client-tc").exists());
    assert!(bpffs_dir.join("links/v-client-tc-egress").exists());

    // No agent runs, yet the pinned programs and maps keep serving.
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let replies = cluster.requests(protocol, 10, TIMEOUT).unwrap();
        assert!(replies.iter().all(|r| r.is_ok()), "{protocol}: {replies:?}");
    }

    cluster.agent().cleanup().unwrap();
    assert!(
        !bpffs_dir.exists(),
        "{} is still there",
        bpffs_dir.display()
    );
    // The programs are detached: nothing translates the VIP any more.
    let detached = untranslated_after_cleanup(&cluster.client().netns, example::tcp_vip());
    assert!(detached, "the VIP is still translated after cleanup");
}

#[test]
fn a_second_agent_on_the_same_pins_waits_for_the_first_to_exit() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let mut cluster = Cluster::start(dir.path(), "info").unwrap();
    let options = cluster.agent().options().clone();
    let (first, topology) = cluster.agent_and_topology();
    // Started until it says it waits: only then is the first one stopped.
    let mut second =
        Agent::start_until(topology.node(), options, "waiting for the agent that uses").unwrap();
    assert!(
        !second.log().contains(READY_MARKER),
        "the second agent became ready beside the first"
    );
    first.kill().unwrap();
    second.wait_for_log(READY_MARKER, 1, READY_TIMEOUT).unwrap();
    let replies = cluster.requests(Protocol::Tcp, 10, TIMEOUT).unwrap();
    assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
}

/// A ClusterIP Service `name` at `vip`:80/TCP with its EndpointSlice listing the example
/// backends `backends` (port 8080), as one manifest file.
fn tcp_service_yaml(name: &str, vip: Ipv4Addr, backends: &[usize]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  type: ClusterIP\n  clusterIP: {vip}\n  ports:\n    - name: http\n      \
         protocol: TCP\n      port: 80\n      targetPort: {port}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\n\
         addressType: IPv4\nports:\n  - name: http\n    protocol: TCP\n    port: {port}\n\
         endpoints:\n",
        port = example::TCP_TARGET_PORT
    );
    for &i in backends {
        yaml.push_str(&format!(
            "  - addresses:\n      - {}\n    conditions:\n      ready: true\n",
            backend_addr(i)
        ));
    }
    yaml
}

fn write_service(dir: &Path, name: &str, vip: Ipv4Addr, backends: &[usize]) {
    let yaml = tcp_service_yaml(name, vip, backends);
    example::replace_manifest(dir, &format!("{name}.yaml"), &yaml).unwrap();
}

/// The ID and SLOTS columns of each services row (by frontend and scope), and the address of
/// each backend id, from `lb-agent inspect`.
#[derive(Debug, PartialEq, Eq)]
struct Ids {
    services: BTreeMap<(String, String), (u32, String)>,
    backends: BTreeMap<u32, String>,
}

impl Ids {
    fn parse(inspect: &str) -> Ids {
        let rows = |title: &str| inspect_output::table_rows(inspect, title);
        let services = rows("SERVICES")
            .into_iter()
            .map(|c| {
                (
                    (c[0].clone(), c[2].clone()),
                    (c[3].parse().unwrap(), c[5].clone()),
                )
            })
            .collect();
        let backends = rows("BACKENDS")
            .into_iter()
            .map(|c| (c[0].parse().unwrap(), c[1].clone()))
            .collect();
        Ids { services, backends }
    }

    /// The rows of frontends on `vip`, with the addresses of the backends in their slots.
    fn of(&self, vip: Ipv4Addr) -> Vec<(String, String, u32, Vec<String>)> {
        self.services
            .iter()
            .filter(|((frontend, _), _)| frontend.starts_with(&format!("{vip}:")))
            .map(|((frontend, scope), (id, slots))| {
                let addresses = slots
                    .split(',')
                    .filter(|slot| *slot != "-")
                    .map(|slot| self.backends[&slot.parse().unwrap()].clone())
                    .collect();
                (frontend.clone(), scope.clone(), *id, addresses)
            })
            .collect()
    }
}

/// Which pods answered `count` new TCP connections to `vip`:80 from the client (`None` for a
/// request that failed).
fn answered_by(
    cluster: &Cluster,
    vip: Ipv4Addr,
    count: usize,
    timeout: Duration,
) -> Vec<Option<String>> {
    let target = SocketAddrV4::new(vip, 80);
    cluster
        .client()
        .netns
        .run(|| {
            (0..count)
                .map(|_| tcp_request(target, timeout).ok().map(|r| r.from))
                .collect()
        })
        .unwrap()
}

#[test]
fn changes_made_while_the_agent_was_down_keep_the_ids_of_what_did_not_change() {
    require_root!();
    // `gone` sorts before the example Service, so ids handed out afresh would shift the
    // example's; `moved` changes its endpoints; `added` takes `gone`'s freed id.
    let (gone, moved, added) = (
        Ipv4Addr::new(198, 19, 0, 9),
        Ipv4Addr::new(198, 19, 0, 12),
        Ipv4Addr::new(198, 19, 0, 13),
    );
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    write_service(dir.path(), "gone", gone, &[0]);
    write_service(dir.path(), "moved", moved, &[1]);
    let mut cluster = Cluster::start(dir.path(), "info").unwrap();
    assert_eq!(
        answered_by(&cluster, gone, 3, TIMEOUT),
        vec![Some(backend_name(0)); 3]
    );
    assert_eq!(
        answered_by(&cluster, moved, 3, TIMEOUT),
        vec![Some(backend_name(1)); 3]
    );
    let mut kept = cluster
        .client()
        .netns
        .run(|| {
            [example::tcp_vip(), SocketAddrV4::new(moved, 80)]
                .map(|vip| TcpClient::connect(vip, TIMEOUT).unwrap())
        })
        .unwrap();
    let kept_by = kept.each_mut().map(|conn| conn.ask().unwrap().from);
    let before = Ids::parse(&cluster.agent().inspect().unwrap());

    cluster.agent_mut().kill().unwrap();
    std::fs::remove_file(dir.path().join("gone.yaml")).unwrap();
    write_service(dir.path(), "moved", moved, &[2]);
    write_service(dir.path(), "added", added, &[0, 1]);
    cluster.restart_agent_after_kill().unwrap();

    let log = cluster.agent().log();
    for expected in [
        "adopted 4 services, 6 backends from the pinned maps",
        // Only the difference: `gone`'s two entries and slot, `moved`'s slot, `added`.
        "reconcile applied: service entries 2 written 2 removed, slots 3 written 1 removed, \
         backends 0 written 0 removed",
        "ready: programmed 4 services, 6 backends",
    ] {
        assert!(
            log.contains(expected),
            "{expected:?} not in the log:\n{log}"
        );
    }
    assert!(!log.contains("adopting the pinned maps:"), "{log}");

    // Established connections, to the unchanged Service and to a backend `moved` dropped.
    for (conn, by) in kept.iter_mut().zip(&kept_by) {
        assert_eq!(&conn.ask().unwrap().from, by);
    }
    let after = Ids::parse(&cluster.agent().inspect().unwrap());
    assert_eq!(after.of(example::VIP), before.of(example::VIP));
    assert_eq!(after.of(example::VIP).len(), 4, "{after:?}");
    let (gone_id, added_rows) = (before.of(gone)[0].2, after.of(added));
    assert!(added_rows.iter().all(|row| row.2 == gone_id), "{after:?}");
    assert!(after.of(gone).is_empty(), "{after:?}");

    // New connections go only where the new state says.
    assert_eq!(
        answered_by(&cluster, moved, 10, TIMEOUT),
        vec![Some(backend_name(2)); 10]
    );
    let to_added = answered_by(&cluster, added, 10, TIMEOUT);
    let allowed = [Some(backend_name(0)), Some(backend_name(1))];
    assert!(
        to_added.iter().all(|by| allowed.contains(by)),
        "{to_added:?}"
    );
    let short = Duration::from_millis(300);
    assert_eq!(answered_by(&cluster, gone, 3, short), vec![None; 3]);
    let replies = cluster.requests(Protocol::Tcp, 10, TIMEOUT).unwrap();
    assert!(replies.iter().all(|r| r.is_ok()), "{replies:?}");
}
