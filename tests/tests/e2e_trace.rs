//! End to end: `lb-agent trace` (the real binary, on the real agent's pins) says where a SYN
//! to the example Service would go, follows the live conntrack entry of a connection the
//! test made to the backend that connection reached, shows the reject of a Service without
//! endpoints, and changes neither the conntrack table nor the counters.

use std::collections::BTreeSet;
use std::time::Duration;

use lb_tests::{
    cluster::Cluster,
    example, require_root,
    servers::TcpClient,
    topology::{backend_addr, CLIENT_ADDR},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(2);

/// The live conntrack entries (without their age), counters and per-Service counters, from
/// `lb-agent inspect`.
fn live_state(inspect: &str) -> (BTreeSet<String>, Value, Value) {
    let json: Value = serde_json::from_str(inspect).unwrap();
    let entries = json["conntrack"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["direction"], e["source"], e["destination"], e["nat_to"]
            )
        })
        .collect();
    (entries, json["counters"].clone(), json["services"].clone())
}

fn trace(cluster: &Cluster, args: &[&str]) -> Value {
    let out = cluster.agent().trace_with(args).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn trace_shows_backend_conntrack_and_reject_without_changing_the_maps() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    example::replace_manifest(dir.path(), "empty.yaml", example::EMPTY_SERVICE).unwrap();
    let cluster = Cluster::start(dir.path(), "info").unwrap();
    let agent = cluster.agent();
    let backends: Vec<String> = (0..example::BACKENDS)
        .map(|i| format!("{}:{}", backend_addr(i), example::TCP_TARGET_PORT))
        .collect();

    // A real connection, kept open: the backend it reached.
    let mut connection = cluster
        .client()
        .netns
        .run(|| TcpClient::connect(example::tcp_vip(), TIMEOUT))
        .unwrap()
        .unwrap();
    let reply = connection.ask().unwrap();
    let index: usize = reply.from.trim_start_matches("backend-").parse().unwrap();
    let reached = format!("{}:{}", backend_addr(index), example::TCP_TARGET_PORT);
    let client = format!("{CLIENT_ADDR}:{}", reply.local_port);
    let before = live_state(&agent.inspect_with(&["--json", "--all"]).unwrap());
    assert!(
        before.0.iter().any(|e| e.contains(&client)),
        "{client} not in {:?}",
        before.0
    );

    // A SYN from a new client port: one of the Service's endpoints, the rewritten destination.
    let vip = example::tcp_vip().to_string();
    let syn = trace(
        &cluster,
        &["--json", "--from", "198.18.1.2:40999", "--to", &vip],
    );
    assert_eq!(syn["verdict"], "pass", "{syn}");
    assert_eq!(syn["service"]["name"], "default/demo:http", "{syn}");
    let backend = syn["backend"]["addr"].as_str().unwrap();
    assert!(backends.iter().any(|b| b == backend), "{backend} {syn}");
    assert_eq!(
        syn["after"],
        format!("198.18.1.2:40999 -> {backend} TCP [syn]"),
        "{syn}"
    );
    assert_eq!(
        syn["conntrack"]["new_entries"], 2,
        "forward and reply: {syn}"
    );
    assert_eq!(syn["counters"]["new_flows"], 1, "{syn}");

    // An ACK of the open connection: its live entry's backend.
    let ack = trace(
        &cluster,
        &[
            "--json",
            "--from",
            &client,
            "--to",
            &vip,
            "--tcp-flags",
            "ack",
        ],
    );
    assert_eq!(ack["backend"]["addr"], reached.as_str(), "{ack}");
    assert_ne!(ack["conntrack"]["matched_backend_id"], 0, "{ack}");
    assert_eq!(ack["conntrack"]["new_entries"], 0, "{ack}");
    assert_eq!(
        ack["after"],
        format!("{client} -> {reached} TCP [ack]"),
        "{ack}"
    );

    // A Service without endpoints: the reject, an ICMP error back to the client.
    let empty = trace(
        &cluster,
        &[
            "--json",
            "--from",
            "198.18.1.2:41000",
            "--to",
            "198.19.0.20:80",
        ],
    );
    assert_eq!(empty["after"], "198.19.0.20 -> 198.18.1.2 ICMP", "{empty}");
    assert_eq!(empty["counters"]["reject_no_backend"], 1, "{empty}");
    assert_eq!(empty["backend"], Value::Null, "{empty}");

    // The text form of the same SYN.
    let text = agent
        .trace_with(&["--from", "198.18.1.2:40999", "--to", &vip])
        .unwrap();
    assert!(
        text.contains("service:   default/demo:http (slot group"),
        "{text}"
    );

    // Nothing traced reached the live maps: same flows, same per-Service counters (the open
    // connection is idle), and no node-wide counter the traces reported moved (`packets`
    // also counts what the kernel itself sends on the test's links).
    let after = live_state(&agent.inspect_with(&["--json", "--all"]).unwrap());
    assert_eq!(before.0, after.0, "conntrack changed");
    assert_eq!(before.2, after.2, "per-Service counters moved");
    for traced in [&syn, &ack, &empty] {
        for (name, _) in traced["counters"].as_object().unwrap() {
            if name != "packets" {
                assert_eq!(before.1[name], after.1[name], "{name} moved");
            }
        }
    }
    drop(connection);
}
