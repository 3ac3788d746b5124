//! End to end: `lb-agent trace` (the real binary, on the real agent's pins) says where a SYN
//! to the example Service would go, follows the live conntrack entry of a connection the
//! test made to the backend that connection reached, shows the reject of a Service without
//! endpoints, and changes neither the conntrack table nor the counters. A capture written
//! here is traced packet by packet at the hook the agent attached to the interface named.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use lb_frames::{Frame, Frame6};
use lb_tests::{
    cluster::{Cluster, HeldConnection},
    example, require_root,
    topology::{backend_addr, backend_name, ipv6_of, EXTERNAL_IFACE},
    Error,
};
use pcap_file::pcap::{PcapPacket, PcapWriter};
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
    let HeldConnection {
        client,
        backend: reached,
        connection,
        ..
    } = cluster.hold_tcp_connection(TIMEOUT).unwrap();
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

/// Writes `frames` as a pcap file at `path`.
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut writer = PcapWriter::new(std::fs::File::create(path).unwrap()).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        let at = Duration::from_millis(i as u64);
        let packet = PcapPacket::new(at, frame.len() as u32, frame);
        writer.write_packet(&packet).unwrap();
    }
}

/// The JSON lines `lb-agent trace --json` printed.
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The error a failed `lb-agent trace` printed, which must be one line (before the stack
/// backtrace anyhow adds where `RUST_BACKTRACE` is set, as under `cargo test`).
fn one_line_error(result: lb_tests::Result<String>) -> String {
    match result {
        Err(Error::Command { stderr, .. }) => {
            let message = stderr.split("\n\nStack backtrace:").next().unwrap();
            assert_eq!(message.lines().count(), 1, "{stderr}");
            message.to_string()
        }
        other => panic!("expected a failed command, got {other:?}"),
    }
}

#[test]
fn trace_runs_each_packet_of_a_capture_at_the_hook_of_the_interface() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    example::replace_manifest(dir.path(), "empty.yaml", example::EMPTY_SERVICE).unwrap();
    let ipv6 = example::manifests_dir().join(example::IPV6_FILE);
    std::fs::copy(ipv6, dir.path().join(example::IPV6_FILE)).unwrap();
    let cluster = Cluster::start_with_outside(dir.path()).unwrap();
    let agent = cluster.agent();
    let node = cluster.topology().node();
    let backends: Vec<String> = (0..example::BACKENDS)
        .map(|i| format!("{}:{}", backend_addr(i), example::TCP_TARGET_PORT))
        .collect();
    // A real connection, kept open (its entries are part of the live state).
    let HeldConnection {
        client: connected,
        backend: reached,
        backend_index: index,
        connection,
    } = cluster.hold_tcp_connection(TIMEOUT).unwrap();
    let backend_veth = cluster
        .topology()
        .pod(&backend_name(index))
        .host_iface
        .clone();
    let before = live_state(&agent.inspect_with(&["--json", "--all"]).unwrap());

    // A SYN to the ClusterIP, one to the Service without endpoints, and a datagram to an
    // address no Service has.
    let client: SocketAddrV4 = "198.18.1.2:40999".parse().unwrap();
    let empty = SocketAddrV4::new(example::EMPTY_VIP, 80);
    let elsewhere: SocketAddrV4 = "198.18.7.7:5353".parse().unwrap();
    let capture = dir.path().join("capture.pcap");
    write_pcap(
        &capture,
        &[
            Frame::tcp(client, example::tcp_vip(), 0x02).to_bytes(),
            Frame::tcp(client, empty, 0x02).to_bytes(),
            Frame::udp(client, elsewhere, b"query").to_bytes(),
        ],
    );
    let capture = capture.to_str().unwrap();

    // On the client pod's veth: TC, as the agent attached there.
    let veth = cluster.client().host_iface.as_str();
    let out = agent
        .trace_in(node, &["--json", "--pcap", capture, "--iface", veth])
        .unwrap();
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 3, "{out}");
    for (i, report) in reports.iter().enumerate() {
        assert_eq!(report["packet"], i + 1, "{report}");
        assert_eq!(report["hook"], "tc", "{report}");
        assert_eq!(report["iface"], veth, "{report}");
    }
    let syn = &reports[0];
    assert_eq!(syn["service"]["name"], "default/demo:http", "{syn}");
    let backend = syn["backend"]["addr"].as_str().unwrap();
    assert!(backends.iter().any(|b| b == backend), "{backend} {syn}");
    assert_eq!(
        syn["after"],
        format!("{client} -> {backend} TCP [syn]"),
        "{syn}"
    );
    assert_eq!(syn["counters"]["new_flows"], 1, "{syn}");
    // The same packet described on the command line: the same backend (its 5-tuple's).
    let described = trace(
        &cluster,
        &[
            "--json",
            "--from",
            &client.to_string(),
            "--to",
            &example::tcp_vip().to_string(),
        ],
    );
    assert_eq!(described["backend"], syn["backend"], "{described}");
    let reject = &reports[1];
    assert_eq!(reject["verdict"], "redirect", "{reject}");
    assert_eq!(reject["service"]["name"], "default/empty:web", "{reject}");
    assert_eq!(
        reject["after"],
        format!("{} -> {} ICMP", empty.ip(), client.ip()),
        "{reject}"
    );
    assert_eq!(reject["counters"]["reject_no_backend"], 1, "{reject}");
    let other = &reports[2];
    assert_eq!(other["verdict"], "pass", "{other}");
    assert_eq!(
        (&other["service"], &other["backend"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(other["after"], other["before"], "{other}");
    assert_eq!(other["counters"]["not_service"], 1, "{other}");

    // One packet of it, and the text form saying where it ran.
    let second = json_lines(
        &agent
            .trace_in(
                node,
                &[
                    "--json", "--pcap", capture, "--packet", "2", "--iface", veth,
                ],
            )
            .unwrap(),
    );
    assert_eq!(second.as_slice(), std::slice::from_ref(reject));
    let text = agent
        .trace_in(node, &["--pcap", capture, "--packet", "1", "--iface", veth])
        .unwrap();
    assert!(
        text.starts_with(&format!(
            "packet:    1\nhook:      tc on {veth}\nverdict:   "
        )),
        "{text}"
    );

    // On the external interface: XDP, whose packets from outside the node are masqueraded
    // on their way to a pod (at TC, from a pod, they were not), handed to TC with the mark.
    let external = json_lines(
        &agent
            .trace_in(
                node,
                &["--json", "--pcap", capture, "--iface", EXTERNAL_IFACE],
            )
            .unwrap(),
    );
    assert_eq!(external.len(), 3);
    assert!(
        reports[0]["counters"].get("masqueraded").is_none(),
        "{}",
        reports[0]
    );
    let syn = &external[0];
    assert_eq!(
        (&syn["hook"], &syn["iface"]),
        (&Value::from("xdp"), &Value::from(EXTERNAL_IFACE))
    );
    assert_eq!(syn["verdict"], "pass", "{syn}");
    assert_eq!(syn["service"]["name"], "default/demo:http", "{syn}");
    assert_eq!(syn["counters"]["masqueraded"], 1, "{syn}");
    let backend = syn["backend"]["addr"].as_str().unwrap();
    let after = syn["after"].as_str().unwrap();
    assert!(
        after.ends_with(&format!(" -> {backend} TCP [syn]")),
        "{syn}"
    );
    assert!(
        !after.starts_with(&client.to_string()),
        "not masqueraded: {syn}"
    );
    // `--hook xdp` alone: the same program on the loopback device, the same decision.
    let hooked = json_lines(
        &agent
            .trace_with(&[
                "--json", "--hook", "xdp", "--pcap", capture, "--packet", "1",
            ])
            .unwrap(),
    );
    assert_eq!(
        (&hooked[0]["hook"], &hooked[0]["iface"]),
        (&Value::from("xdp"), &Value::Null)
    );
    assert_eq!(hooked[0]["after"], syn["after"], "{}", hooked[0]);

    // A backend's reply to a connection the test holds open, on that backend's veth: the
    // redirect reply path's FIB lookup runs as for that interface, so it sends the reply on
    // while the interface forwards, and leaves it to the kernel once it does not.
    let reply_args = [
        "--json",
        "--from",
        &reached,
        "--to",
        &connected,
        "--tcp-flags",
        "ack",
        "--iface",
        &backend_veth,
    ];
    let forwarded = json_lines(&agent.trace_in(node, &reply_args).unwrap());
    assert_eq!(forwarded[0]["verdict"], "redirect", "{}", forwarded[0]);
    assert_eq!(
        forwarded[0]["after"],
        format!("{} -> {connected} TCP [ack]", example::tcp_vip()),
        "{}",
        forwarded[0]
    );
    let forwarding = format!("net.ipv4.conf.{backend_veth}.forwarding");
    node.set_sysctl(&forwarding, "0").unwrap();
    let kept = json_lines(&agent.trace_in(node, &reply_args).unwrap());
    node.set_sysctl(&forwarding, "1").unwrap();
    assert_eq!(kept[0]["verdict"], "pass", "{}", kept[0]);
    assert_eq!(kept[0]["after"], forwarded[0]["after"], "{}", kept[0]);

    // An IPv6 SYN to the IPv6 example's ClusterIP goes through the copy's own IPv6 program
    // (in the copy's program arrays: the pinned ones hold the agent's live IPv6 programs).
    let (from6, to6) = ("[2001:2::a]:40999", "[2001:2:0:53::10]:80");
    let six = json_lines(
        &agent
            .trace_in(
                node,
                &["--json", "--from", from6, "--to", to6, "--iface", veth],
            )
            .unwrap(),
    );
    assert_eq!(six[0]["verdict"], "pass", "{}", six[0]);
    assert_eq!(six[0]["counters"]["new_flows"], 1, "{}", six[0]);
    assert_eq!(
        six[0]["counters"].get("ipv6_unavailable"),
        None,
        "{}",
        six[0]
    );
    let backend6 = six[0]["backend"]["addr"].as_str().unwrap().to_string();
    let backends6: Vec<String> = (0..example::BACKENDS)
        .map(|i| {
            format!(
                "[{}]:{}",
                ipv6_of(backend_addr(i)),
                example::TCP_TARGET_PORT
            )
        })
        .collect();
    assert!(backends6.contains(&backend6), "{}", six[0]);
    assert_eq!(
        six[0]["after"],
        format!("[2001:2::a]:40999 -> {backend6} TCP [syn]"),
        "{}",
        six[0]
    );
    // An IPv4 --from with an IPv6 --to is refused, saying why.
    let mixed = one_line_error(agent.trace_in(node, &["--from", "198.18.1.2:1", "--to", to6]));
    assert!(mixed.contains("different address families"), "{mixed}");

    // Nor is an SCTP frame of either family: the copy leaves SCTP out (its verifier budget)
    // and passes it.
    let capture_sctp = dir.path().join("capture-sctp.pcap");
    let init = Frame::sctp(
        "198.18.1.2:40999".parse().unwrap(),
        "198.19.0.10:80".parse().unwrap(),
        lb_common::net::sctp_chunk::INIT,
    );
    let init6 = Frame6::sctp(
        from6.parse().unwrap(),
        to6.parse().unwrap(),
        lb_common::net::sctp_chunk::INIT,
    );
    write_pcap(&capture_sctp, &[init.to_bytes(), init6.to_bytes()]);
    let capture_sctp = capture_sctp.to_str().unwrap();
    let sctp = json_lines(
        &agent
            .trace_in(node, &["--json", "--pcap", capture_sctp, "--iface", veth])
            .unwrap(),
    );
    for family in &sctp[..2] {
        assert_eq!(family["verdict"], "pass", "{family}");
        assert_eq!(family["counters"]["other_protocol"], 1, "{family}");
    }

    // What cannot be traced: one line each, and a failed exit.
    let error = one_line_error(agent.trace_in(
        node,
        &["--pcap", capture, "--iface", EXTERNAL_IFACE, "--hook", "tc"],
    ));
    assert!(
        error.contains("--hook tc disagrees with the xdp program the agent attached to ext0"),
        "{error}"
    );
    let error = one_line_error(agent.trace_in(node, &["--pcap", capture, "--iface", "tracepcap0"]));
    assert!(
        error.contains("no interface tracepcap0 in this network namespace"),
        "{error}"
    );
    let missing = dir.path().join("missing.pcap");
    let error = one_line_error(agent.trace_with(&["--pcap", missing.to_str().unwrap()]));
    assert!(
        error.contains("cannot read ") && error.contains("missing.pcap"),
        "{error}"
    );
    let garbage = dir.path().join("garbage.pcap");
    std::fs::write(&garbage, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let error = one_line_error(agent.trace_with(&["--pcap", garbage.to_str().unwrap()]));
    assert!(
        error.contains("not a readable pcap or pcapng capture"),
        "{error}"
    );
    let error = one_line_error(agent.trace_with(&["--pcap", capture, "--packet", "4"]));
    assert!(error.contains("no packet 4: it holds 3"), "{error}");

    // Nothing traced reached the live maps.
    let after = live_state(&agent.inspect_with(&["--json", "--all"]).unwrap());
    assert_eq!(before.0, after.0, "conntrack changed");
    assert_eq!(before.2, after.2, "per-Service counters moved");
    for name in ["new_flows", "reject_no_backend", "masqueraded"] {
        assert_eq!(before.1[name], after.1[name], "{name} moved");
    }
    drop(connection);
}
