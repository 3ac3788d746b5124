//! End to end: editing the manifests of a running `lb-agent`. Removing a backend stops new
//! connections to it within a second while an open connection to it keeps working; broken
//! manifests and duplicates in earlier-sorting files leave the running state intact.

use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    cluster::{Cluster, Protocol},
    example::{self, ENDPOINTSLICE_FILE, SERVICE_FILE},
    require_root,
    servers::{tally, TcpClient},
    topology::backend_name,
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// The agent reads the directory every 200 ms; a change must be in effect within this.
const PROPAGATION: Duration = Duration::from_secs(1);
const REQUESTS: usize = 60;

/// Which backends answered `REQUESTS` new TCP connections; every request must succeed.
fn tcp_backends(cluster: &Cluster) -> BTreeSet<String> {
    let replies = cluster
        .requests(Protocol::Tcp, REQUESTS, TIMEOUT)
        .unwrap()
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("every request is answered");
    tally(&replies).into_keys().collect()
}

fn backends(indexes: &[usize]) -> BTreeSet<String> {
    indexes.iter().map(|&i| backend_name(i)).collect()
}

fn start() -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let cluster = Cluster::start(dir.path(), "info").unwrap();
    (dir, cluster)
}

#[test]
fn a_removed_backend_gets_no_new_connections_but_keeps_its_open_one() {
    require_root!();
    let (dir, cluster) = start();
    let mut open = cluster
        .client()
        .netns
        .run(|| TcpClient::connect(example::tcp_vip(), TIMEOUT))
        .unwrap()
        .unwrap();
    let first = open.ask().unwrap();
    let removed: usize = first.from.trim_start_matches("backend-").parse().unwrap();
    let kept: Vec<usize> = (0..example::BACKENDS).filter(|&i| i != removed).collect();
    assert_eq!(tcp_backends(&cluster), backends(&[0, 1, 2]));

    let written = Instant::now();
    let slice = example::endpointslice_yaml(&kept);
    example::replace_manifest(dir.path(), ENDPOINTSLICE_FILE, &slice).unwrap();
    thread::sleep(PROPAGATION.saturating_sub(written.elapsed()));

    let accepted_before = cluster.served(removed, Protocol::Tcp);
    assert_eq!(
        tcp_backends(&cluster),
        backends(&kept),
        "1 s after the removal"
    );
    assert_eq!(
        cluster.served(removed, Protocol::Tcp),
        accepted_before,
        "the removed backend accepted new connections"
    );
    for _ in 0..5 {
        let reply = open.ask().expect("the open connection keeps working");
        assert_eq!(reply, first);
    }
}

#[test]
fn broken_manifests_leave_the_running_state_intact() {
    require_root!();
    let (dir, mut cluster) = start();
    let only_backend_0 = example::endpointslice_yaml(&[0]);
    let service = std::fs::read_to_string(dir.path().join(SERVICE_FILE)).unwrap();
    let broken = [
        // Not YAML: a valid slice with only backend-0 followed by an unclosed flow sequence.
        (
            ENDPOINTSLICE_FILE,
            format!("{only_backend_0}  - addresses: [198.18.0.12\n"),
        ),
        // Valid YAML, invalid field: a port that is not a number.
        (
            ENDPOINTSLICE_FILE,
            only_backend_0.replace("port: 8080", "port: eighty"),
        ),
        // Valid YAML, invalid field in the Service: a ClusterIP that is no address.
        (SERVICE_FILE, service.replace("198.19.0.10", "198.19.0.300")),
    ];
    for (i, (file, contents)) in broken.iter().enumerate() {
        let before = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert_ne!(contents, &before, "case {i} must change {file}");
        let errors = cluster.agent().log_count(file);
        example::replace_manifest(dir.path(), file, contents).unwrap();
        // The agent reports the file and keeps running ...
        cluster
            .agent_mut()
            .wait_for_log(file, errors + 1, PROPAGATION)
            .unwrap_or_else(|e| panic!("case {i}: the agent did not report {file}: {e}"));
        // ... with the state from before: every backend still gets traffic.
        assert_eq!(tcp_backends(&cluster), backends(&[0, 1, 2]), "case {i}");
        assert_eq!(cluster.agent_mut().exit_status().unwrap(), None, "case {i}");
    }

    // Fixed files take effect again: the agent was not stuck on the broken ones.
    let written = Instant::now();
    example::replace_manifest(dir.path(), SERVICE_FILE, &service).unwrap();
    example::replace_manifest(dir.path(), ENDPOINTSLICE_FILE, &only_backend_0).unwrap();
    thread::sleep(PROPAGATION.saturating_sub(written.elapsed()));
    assert_eq!(tcp_backends(&cluster), backends(&[0]));
}

#[test]
fn a_duplicate_in_an_earlier_sorting_file_leaves_the_service_in_effect() {
    require_root!();
    let (dir, mut cluster) = start();
    // Sorts before both example files: the Service on another ClusterIP, its EndpointSlice
    // with backend-0 only.
    const DUPLICATES: &str = "0-duplicates.yaml";
    let service = std::fs::read_to_string(dir.path().join(SERVICE_FILE)).unwrap();
    let duplicates = format!(
        "{}\n---\n{}",
        service.replace("198.19.0.10", "198.19.0.99"),
        example::endpointslice_yaml(&[0])
    );
    example::replace_manifest(dir.path(), DUPLICATES, &duplicates).unwrap();
    let ignored = |object: &str| {
        format!(
            "{}: {object} is already defined in {}, whose definition stays in effect; ignored",
            dir.path().join(DUPLICATES).display(),
            dir.path()
                .join(if object.starts_with("Service") {
                    SERVICE_FILE
                } else {
                    ENDPOINTSLICE_FILE
                })
                .display()
        )
    };
    for object in ["Service default/demo", "EndpointSlice default/demo-abc12"] {
        cluster
            .agent_mut()
            .wait_for_log(&ignored(object), 1, PROPAGATION)
            .unwrap_or_else(|e| panic!("the agent did not name {DUPLICATES} for {object}: {e}"));
    }
    assert_eq!(tcp_backends(&cluster), backends(&[0, 1, 2]));
}
