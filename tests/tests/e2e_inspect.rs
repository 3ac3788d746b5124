//! End to end: `lb-agent inspect` (the real binary, on the real agent's pins) names the
//! Service of the example manifests, shows the flows the test made with their client address
//! and backend, narrows to a Service or a backend, prints the same as JSON and pages a
//! conntrack table longer than its limit.

use std::{net::UdpSocket, time::Duration};

use lb_tests::{
    cluster::{Cluster, HeldConnection},
    example,
    inspect_output::table_rows,
    require_root,
    topology::{backend_addr, CLIENT_ADDR},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(2);
/// UDP flows made for paging: more than the default limit of 50 rows.
const UDP_FLOWS: u16 = 60;
/// Their client ports, `FIRST_PORT..FIRST_PORT + UDP_FLOWS`.
const FIRST_PORT: u16 = 41_000;
const HTTP: &str = "default/demo:http";
const DNS: &str = "default/demo:dns";

#[test]
fn inspect_names_filters_prints_json_and_pages_the_flows_the_test_made() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    let cluster = Cluster::start(dir.path(), "info").unwrap();
    let agent = cluster.agent();

    // One TCP connection, kept open so its flow stays: its client and the backend it reached.
    let HeldConnection {
        client,
        backend,
        backend_index: index,
        connection,
    } = cluster.hold_tcp_connection(TIMEOUT).unwrap();

    // --service: only the http port's frontend, named, and the flow with its backend.
    let tables = agent.inspect_with(&["--service", HTTP]).unwrap();
    let services = table_rows(&tables, "SERVICES");
    assert!(!services.is_empty(), "{tables}");
    for row in &services {
        assert_eq!(
            (row[0].as_str(), row[1].as_str()),
            ("198.19.0.10:80/TCP", HTTP)
        );
    }
    let forward = |tables: &str| -> Vec<Vec<String>> {
        table_rows(tables, "CONNTRACK")
            .into_iter()
            .filter(|row| row[0] == "forward" && row[2] == client)
            .collect()
    };
    let flow = forward(&tables);
    assert_eq!(flow.len(), 1, "{client} not in:\n{tables}");
    assert_eq!(flow[0][3], example::tcp_vip().to_string());
    assert_eq!(flow[0][4], backend, "NAT TO");
    assert_eq!(flow[0][6], HTTP, "SERVICE");
    let backends = table_rows(&tables, "BACKENDS");
    assert_eq!(backends.len(), example::BACKENDS, "{tables}");

    // --backend: that backend only, and the flow; another backend has not got it.
    let tables = agent.inspect_with(&["--backend", &backend]).unwrap();
    let backends = table_rows(&tables, "BACKENDS");
    assert_eq!(backends.len(), 1, "{tables}");
    assert_eq!(backends[0][1], backend);
    assert_eq!(forward(&tables).len(), 1, "{tables}");
    let other = format!("{}", backend_addr((index + 1) % example::BACKENDS));
    let tables = agent.inspect_with(&["--backend", &other]).unwrap();
    assert!(forward(&tables).is_empty(), "{tables}");

    // --json: the same, under the README's field names.
    let json: Value =
        serde_json::from_str(&agent.inspect_with(&["--json", "--service", HTTP]).unwrap()).unwrap();
    let services = json["services"].as_array().unwrap();
    assert!(!services.is_empty(), "{json}");
    for service in services {
        assert_eq!(service["name"], HTTP);
        assert_eq!(service["frontend"], "198.19.0.10:80");
    }
    let entries = json["conntrack"]["entries"].as_array().unwrap();
    let flow = entries
        .iter()
        .find(|e| e["direction"] == "forward" && e["source"] == client.as_str())
        .unwrap_or_else(|| panic!("{client} not in {json}"));
    assert_eq!(flow["nat_to"], backend.as_str());
    assert_eq!(flow["service"], HTTP);

    // Paging: UDP from UDP_FLOWS client ports, two entries each.
    cluster
        .client()
        .netns
        .run(|| {
            for port in FIRST_PORT..FIRST_PORT + UDP_FLOWS {
                let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
                socket.set_read_timeout(Some(TIMEOUT)).unwrap();
                socket.send_to(b"hi\n", example::udp_vip()).unwrap();
                let mut answer = [0u8; 64];
                socket.recv_from(&mut answer).unwrap();
            }
        })
        .unwrap();
    let json: Value = serde_json::from_str(
        &agent
            .inspect_with(&["--json", "--all", "--service", DNS])
            .unwrap(),
    )
    .unwrap();
    let matched = json["conntrack"]["matched"].as_u64().unwrap() as usize;
    let entries = json["conntrack"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), matched, "--all shows every entry");
    for port in FIRST_PORT..FIRST_PORT + UDP_FLOWS {
        let source = format!("{CLIENT_ADDR}:{port}");
        assert!(
            entries
                .iter()
                .any(|e| e["source"] == source.as_str() && e["service"] == DNS),
            "{source} not in {json}"
        );
    }
    assert!(
        matched >= 2 * UDP_FLOWS as usize,
        "forward and reply: {matched}"
    );
    let tables = agent.inspect_with(&["--service", DNS]).unwrap();
    assert_eq!(table_rows(&tables, "CONNTRACK").len(), 50, "{tables}");
    let note = format!(
        "rows 1-50 of {matched} matching entries; {} more: --conntrack-offset 50, \
         --conntrack-limit N or --all",
        matched - 50
    );
    assert!(tables.contains(&note), "{note:?} not in:\n{tables}");
    let rest = agent
        .inspect_with(&[
            "--service",
            DNS,
            "--conntrack-offset",
            "50",
            "--conntrack-limit",
            "1000",
        ])
        .unwrap();
    assert_eq!(table_rows(&rest, "CONNTRACK").len(), matched - 50, "{rest}");

    // A bad filter is one line naming the value.
    let error = agent.inspect_with(&["--service", "demo"]).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("\"demo\" is not NAMESPACE/NAME[:PORT]"),
        "{error}"
    );
    drop(connection);
}
