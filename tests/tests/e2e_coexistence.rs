//! End to end: the agent shares a pod's TC ingress hook with other tools' programs. Before the
//! agent starts, the client pod's host-side veth already has a legacy `tc` clsact filter
//! (cls_bpf, direct-action) and a TCX program, both counting packets. The auto-attaching
//! agent adds its own program: the Service is translated, both other programs stay attached
//! and keep seeing every packet, also across an agent restart, and `lb-agent cleanup` removes
//! only the agent's program.

use std::{
    collections::BTreeSet,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_tests::{
    agent::{untranslated_after_cleanup, Agent, AgentOptions, BPFFS_ROOT},
    cmd,
    counting_program::CountingProgram,
    example, require_root,
    servers::tcp_answerers,
    topology::{backend_addr, backend_name, Topology, CLIENT},
};

const TIMEOUT: Duration = Duration::from_secs(2);
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
const REQUESTS: usize = 30;
/// The client pod's host-side veth, where the three programs share the ingress hook.
const IFACE: &str = "v-client";

/// Removes a bpffs directory of pins when dropped, also on panic.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `REQUESTS` new TCP connections from the client pod to `target`: who answered. Every
/// request must succeed.
fn ask(topology: &Topology, target: SocketAddrV4) -> BTreeSet<String> {
    tcp_answerers(&topology.pod(CLIENT).netns, target, REQUESTS, TIMEOUT)
}

/// Packets counted by each program so far: (legacy filter, TCX program).
fn counts(legacy: &CountingProgram, tcx: &CountingProgram) -> (u64, u64) {
    (legacy.count().unwrap(), tcx.count().unwrap())
}

/// Asserts both programs saw at least one packet per request since `before`.
fn assert_both_counted(before: (u64, u64), after: (u64, u64), when: &str) {
    let grew = |b: u64, a: u64| a >= b + REQUESTS as u64;
    assert!(
        grew(before.0, after.0),
        "{when}: the legacy tc filter saw {} packets for {REQUESTS} connections",
        after.0 - before.0
    );
    assert!(
        grew(before.1, after.1),
        "{when}: the TCX program saw {} packets for {REQUESTS} connections",
        after.1 - before.1
    );
}

/// `tc filter show dev IFACE ingress` in the node namespace.
fn legacy_filters(topology: &Topology) -> String {
    topology
        .node()
        .run(|| cmd::run("tc", &["filter", "show", "dev", IFACE, "ingress"]))
        .unwrap()
        .unwrap()
}

/// Adds the legacy filter: a clsact qdisc and a direct-action cls_bpf filter running
/// `program`, pinned for `tc` just while the filter is added.
fn add_legacy_filter(topology: &Topology, program: &CountingProgram) {
    let dir = Path::new(BPFFS_ROOT).join(format!("{}-legacy", topology.id()));
    lb_userspace::bpffs::prepare_pin_dir(&dir).unwrap();
    let _dir = PinDir(dir.clone());
    let pin = dir.join("legacy_count");
    program.pin(&pin).unwrap();
    let pin = pin.to_string_lossy();
    topology
        .node()
        .run(|| {
            cmd::run("tc", &["qdisc", "add", "dev", IFACE, "clsact"])?;
            cmd::run(
                "tc",
                &[
                    "filter",
                    "add",
                    "dev",
                    IFACE,
                    "ingress",
                    "prio",
                    "1",
                    "handle",
                    "1",
                    "bpf",
                    "direct-action",
                    "object-pinned",
                    &pin,
                ],
            )
        })
        .unwrap()
        .unwrap();
}

#[test]
fn other_tc_programs_on_a_pod_interface_stay_attached_and_keep_seeing_packets() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let topology = Topology::client_and_backends(example::BACKENDS).unwrap();
    let _servers = example::tcp_backends(&topology).unwrap();

    // Another tool's programs, there before the agent.
    let legacy = CountingProgram::load("legacy_count").unwrap();
    add_legacy_filter(&topology, &legacy);
    let tcx = CountingProgram::load("tcx_count").unwrap();
    let _tcx_link = topology
        .node()
        .run(|| tcx.attach_tcx_ingress(IFACE))
        .unwrap()
        .unwrap();
    let direct = SocketAddrV4::new(backend_addr(0), example::TCP_TARGET_PORT);
    let before = counts(&legacy, &tcx);
    assert_eq!(ask(&topology, direct), BTreeSet::from([backend_name(0)]));
    assert_both_counted(before, counts(&legacy, &tcx), "before the agent");

    // The agent attaches its program next to them.
    let mut options = AgentOptions::new(topology.id(), dir.path(), Vec::new());
    options.iface_patterns = vec!["v-*".into()];
    let mut agent = Agent::start(topology.node(), options.clone()).unwrap();
    agent
        .wait_for_log(
            &format!("attached lb_tc_ingress to {IFACE} ingress"),
            1,
            ATTACH_TIMEOUT,
        )
        .unwrap();
    let before = counts(&legacy, &tcx);
    let all: BTreeSet<String> = (0..example::BACKENDS).map(backend_name).collect();
    assert_eq!(ask(&topology, example::tcp_vip()), all);
    assert_both_counted(before, counts(&legacy, &tcx), "with the agent");
    let filters = legacy_filters(&topology);
    assert!(filters.contains("legacy_count"), "{filters}");

    // A restarted agent swaps its new program into its own pinned link only.
    agent.kill().unwrap();
    let mut agent = Agent::start(topology.node(), options).unwrap();
    agent
        .wait_for_log(
            &format!("replaced the program in the pinned tcx link of {IFACE}"),
            1,
            ATTACH_TIMEOUT,
        )
        .unwrap();
    let before = counts(&legacy, &tcx);
    assert_eq!(ask(&topology, example::tcp_vip()), all);
    assert_both_counted(before, counts(&legacy, &tcx), "after a restart");

    // Cleanup removes the agent's program only.
    agent.stop_keeping_pins().unwrap();
    agent.cleanup().unwrap();
    let detached = untranslated_after_cleanup(&topology.pod(CLIENT).netns, example::tcp_vip());
    assert!(detached, "the VIP is still translated after cleanup");
    let before = counts(&legacy, &tcx);
    assert_eq!(ask(&topology, direct), BTreeSet::from([backend_name(0)]));
    assert_both_counted(before, counts(&legacy, &tcx), "after cleanup");
    let filters = legacy_filters(&topology);
    assert!(filters.contains("legacy_count"), "{filters}");
}
