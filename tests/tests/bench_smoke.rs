//! The benchmark harness end to end with 10 services, one run and tiny counts, so it cannot
//! rot: every variant reaches the target service (through its VIP where it translates), every
//! per-packet case and control-plane operation yields a number, and the report is written.
//! It checks that the harness works, never how fast anything is.

use lb_tests::{
    bench::{
        self,
        client::Workload as ClientWorkload,
        options::Plan,
        program_stats::Role,
        report,
        results::{ConntrackFill, Method, PacketCase},
        services::ServiceSet,
        test_run::Hook,
        variants::Variant,
    },
    require_root,
};

#[test]
fn every_variant_and_workload_produces_sane_results() {
    require_root!();
    let plan = Plan::smoke();
    let results = bench::run(&plan, "bench_smoke").unwrap();

    let vip = ServiceSet::new(10, plan.endpoints).target_vip();
    let variants: Vec<Variant> = results.traffic.iter().map(|c| c.variant).collect();
    assert_eq!(variants, Variant::ALL);
    for cell in &results.traffic {
        let name = cell.variant.label();
        assert_eq!(cell.services, 10);
        assert_eq!(
            cell.target == vip,
            cell.variant != Variant::Direct,
            "{name}"
        );
        let connections = &cell.connections[0];
        assert!(
            connections.completed > 0 && connections.failed == 0,
            "{name}: {connections:?}"
        );
        assert_eq!(connections.peer, Some(cell.target.into()), "{name}");
        assert!(
            connections.connect_p99_us >= connections.connect_p50_us,
            "{name}"
        );
        // Warm-up, the loop, the stream and the request/response connection all reached a
        // backend pod.
        assert!(
            cell.backend_connections >= 5 + connections.completed + 2,
            "{name}: backends accepted {} connections",
            cell.backend_connections
        );
        assert!(cell.stream[0].bytes > 0, "{name}");
        assert!(cell.request_response[0].transactions > 0, "{name}");
        // (a) and (e): the TC ingress program ran under each workload's window with the
        // run-time statistics on (for (e) too: the backends' replies and the packets addressed
        // to a pod pass it).
        let ebpf = matches!(cell.variant, Variant::Ebpf | Variant::EbpfSocket);
        let workloads: Vec<ClientWorkload> = cell.programs.iter().map(|w| w.workload).collect();
        if ebpf {
            assert_eq!(
                workloads,
                [
                    ClientWorkload::Connections,
                    ClientWorkload::Stream,
                    ClientWorkload::RequestResponse
                ],
                "{name}"
            );
        } else {
            assert!(workloads.is_empty(), "{name}");
        }
        // (e) also ran its connect4 program, once per connection.
        let mut roles = vec![Role::TcIngress];
        if cell.variant == Variant::EbpfSocket {
            roles.push(Role::SockConnect);
        }
        for window in &cell.programs {
            let ran: Vec<Role> = window.costs.iter().map(|c| c.role).collect();
            assert_eq!(ran, roles, "{name}: {window:?}");
            for cost in &window.costs {
                assert!(
                    cost.runs > 0 && cost.ns_per_run.is_some_and(|ns| ns > 0.0 && ns < 1e6),
                    "{name}: {window:?}"
                );
            }
        }
    }

    // Both reply paths, to the local and the remote pod, through node A's NodePort.
    let cells: Vec<_> = results
        .reply_path
        .iter()
        .map(|c| (c.path, c.endpoint))
        .collect();
    assert_eq!(
        cells,
        [
            ("redirect", "local"),
            ("redirect", "remote"),
            ("kernel", "local"),
            ("kernel", "remote")
        ]
    );
    for cell in &results.reply_path {
        let connections = &cell.connections[0];
        assert!(
            connections.completed > 0 && connections.failed == 0,
            "{cell:?}"
        );
        assert_eq!(connections.peer, Some(cell.target.into()), "{cell:?}");
        assert!(cell.request_response[0].transactions > 0, "{cell:?}");
        // Node A's programs ran on the requests/responses: XDP on every request, the handoff
        // (redirect only) on every packet in from the LAN, TC ingress on the local pod's
        // replies, TC egress on every packet out; each run took some time.
        let mut expected = vec![Role::Xdp, Role::TcIngress, Role::TcEgress];
        if cell.path == "redirect" {
            expected.insert(1, Role::XdpHandoff);
        }
        assert!(cell.programs[0].rate > 0.0, "{cell:?}");
        let costs = &cell.programs[0].costs;
        let roles: Vec<Role> = costs.iter().map(|c| c.role).collect();
        assert_eq!(roles, expected, "{cell:?}");
        for cost in costs {
            if cost.role == Role::TcIngress && cell.endpoint == "remote" {
                continue;
            }
            assert!(
                cost.runs > 0 && cost.ns_per_run.is_some_and(|ns| ns > 0.0 && ns < 1e6),
                "{cost:?} in {cell:?}"
            );
        }
    }

    // Per conntrack fill, eight cases on TC and XDP (with new flows to load-balancer IPs
    // with 1 and 1000 source ranges); TC egress starts no flow, so five.
    // Per fill: 11 cases on XDP and TC ingress (8 IPv4, 3 IPv6), 7 on egress (no new flows).
    assert_eq!(results.per_packet.len(), 2 * (11 + 11 + 7));
    let ranged = [
        PacketCase::NewFlowOneRange,
        PacketCase::NewFlowThousandRanges,
    ];
    for cell in results
        .per_packet
        .iter()
        .filter(|c| ranged.contains(&c.case))
    {
        assert!(
            cell.hook != Hook::TcEgress && cell.method == Method::Single,
            "{cell:?}"
        );
        assert!(cell.ns.len() == 1 && cell.ns[0] > 0.0, "{cell:?}");
    }
    for hook in Hook::ALL {
        for fill in [ConntrackFill::Empty, ConntrackFill::NinetyPercent] {
            for case in [
                PacketCase::NoOp,
                PacketCase::Established,
                PacketCase::NewFlow,
                PacketCase::NonService6,
                PacketCase::Established6,
                PacketCase::NewFlow6,
            ] {
                let new_flow = matches!(case, PacketCase::NewFlow | PacketCase::NewFlow6);
                let method = if new_flow {
                    Method::Single
                } else {
                    Method::Repeat
                };
                let found = results.per_packet.iter().find(|c| {
                    (c.hook, c.conntrack, c.case, c.method) == (hook, fill, case, method)
                });
                if hook == Hook::TcEgress && new_flow {
                    assert!(found.is_none(), "{found:?}");
                    continue;
                }
                let cell = found.unwrap_or_else(|| panic!("no {hook:?} {fill:?} {case:?} cell"));
                assert!(cell.ns.len() == 1 && cell.ns[0] > 0.0, "{cell:?}");
            }
        }
    }

    for cells in [&results.programming, &results.endpoint_change] {
        let variants: Vec<Variant> = cells.iter().map(|c| c.variant).collect();
        assert_eq!(
            variants,
            [Variant::Ebpf, Variant::Iptables, Variant::Nftables]
        );
        assert!(
            cells.iter().all(|c| c.seconds.iter().all(|s| *s > 0.0)),
            "{cells:?}"
        );
    }
    // (a)'s endpoint change: every change is a sample; the baselines run once here.
    let samples: Vec<usize> = results
        .endpoint_change
        .iter()
        .map(|c| c.seconds.len())
        .collect();
    assert_eq!(samples, [plan.endpoint_changes as usize, 1, 1]);
    assert!(results.programming.iter().all(|c| c.seconds.len() == 1));
    let agent = &results.agent[0];
    assert_eq!((agent.services, agent.distinct_backends), (10, 30));
    assert!(
        agent.rss_mib[0] > 1.0 && agent.ready_s[0] > 0.0,
        "{agent:?}"
    );
    let sync = &results.sync_latency[0];
    assert_eq!(sync.services, 10, "one cell per size, with its Services");
    assert_eq!(sync.latency_ms.len(), plan.sync_changes as usize);
    assert_eq!(sync.traffic_ms.len(), plan.sync_changes as usize);
    assert!(
        sync.latency_ms
            .iter()
            .chain(&sync.traffic_ms)
            .all(|ms| *ms > 0.0 && *ms < 10_000.0)
            && sync.rss_mib > 1.0,
        "{sync:?}"
    );
    // The scrapes ran with conntrack filled (an LRU map may evict a few entries while
    // filled); the agent reported the count of its walk at start, before the fill.
    let scrape = &sync.scrape;
    assert_eq!(scrape.ms.len(), plan.scrapes as usize);
    assert!(
        f64::from(scrape.conntrack_entries) >= 0.9 * f64::from(scrape.conntrack_capacity)
            && scrape.reported_entries < 0.1 * f64::from(scrape.conntrack_capacity)
            && scrape.conntrack_capacity >= 262_144
            && scrape.ms.iter().all(|ms| *ms > 0.0)
            && scrape.bytes > 0,
        "{scrape:?}"
    );

    let out = tempfile::tempdir().unwrap();
    let written = report::write(out.path(), &results).unwrap();
    let markdown = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(markdown.contains("## Headline"), "{markdown}");
    assert!(
        markdown.contains("| Per packet by family, ns | non-service IPv4 | non-service IPv6 |"),
        "{markdown}"
    );
    // The targets at N = 10: the per-packet rows are measured (at the largest size run), the
    // rows at N = 1 or 30000 are not.
    assert!(markdown.contains("## Targets"), "{markdown}");
    let targets = bench::targets::rows(&results);
    let measured: Vec<bool> = targets
        .iter()
        .map(|r| r.verdict != bench::targets::Verdict::NotMeasured)
        .collect();
    assert_eq!(
        measured,
        [false, false, false, false, false, false, true, true],
        "{targets:?}"
    );
    assert!(
        markdown.contains("### Scrape cost at a full conntrack"),
        "{markdown}"
    );
    assert!(
        markdown.contains("### Program run time under traffic"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| TC ingress, pod veth (ns per run) |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("## Kubernetes sync latency"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| New connections (per s) | 10 |"),
        "{markdown}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(
        json["traffic"].as_array().map(Vec::len),
        Some(Variant::ALL.len())
    );
    let plots: Vec<_> = written
        .iter()
        .filter(|p| p.extension() == Some("png".as_ref()))
        .collect();
    assert!(plots.len() >= 10, "{written:?}");
    assert!(plots
        .iter()
        .all(|p| std::fs::metadata(p).unwrap().len() > 1_000));
}
