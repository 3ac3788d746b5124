//! `results.md` (tables of medians with min–max and ratios), `results.json` (every run's
//! numbers) and the plots, written to the output directory.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use super::{
    client::Workload as ClientWorkload,
    error::{io_context, Result},
    plot,
    program_stats::{ProgramCost, Role},
    results::{ConntrackFill, ControlCell, Method, PacketCase, PacketCell, Results, TrafficCell},
    stats::Summary,
    targets::{self, p50_p99},
    test_run::Hook,
    variants::Variant,
    workloads::sync_latency,
};

/// Writes `results.md`, `results.json` and the plots into `dir`; returns the files written.
pub fn write(dir: &Path, results: &Results) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).map_err(io_context(format!("creating {}", dir.display())))?;
    let json = serde_json::to_string_pretty(results).map_err(|e| super::error::BenchError::Io {
        context: "encoding results.json".into(),
        source: e.into(),
    })?;
    let mut written = Vec::new();
    for (name, text) in [("results.md", markdown(results)), ("results.json", json)] {
        let path = dir.join(name);
        fs::write(&path, text).map_err(io_context(format!("writing {}", path.display())))?;
        written.push(path);
    }
    written.extend(plot::draw_all(dir, results)?);
    Ok(written)
}

/// The report: headline, one section per workload, and how each number was measured.
pub fn markdown(results: &Results) -> String {
    let mut md = String::from("# Benchmark results\n\n");
    let plan = &results.plan;
    let _ = write!(
        md,
        "Command: `{}`  \nMachine: {}  \nEvery cell is the median of {} runs (min–max in \
         parentheses; `n=` marks cells that stopped early to stay within the time budget). The \
         machine is a shared VM: compare variants within a table rather than across runs.\n\n",
        results.command,
        results.machine.summary(),
        plan.runs
    );
    md.push_str(&targets::section(results));
    md.push_str(&headline(results));
    md.push_str(&traffic_sections(results));
    md.push_str(&traffic_programs_section(results));
    md.push_str(&per_packet_section(results));
    md.push_str(&control_plane_section(results));
    md.push_str(&sync_latency_section(results));
    md.push_str(&reply_path_section(results));
    md.push_str(&methods(results));
    md
}

/// The headline table: the key numbers at the smallest and largest size.
pub fn headline(results: &Results) -> String {
    let sizes = &results.plan.sizes;
    let Some((&first, &last)) = sizes.first().zip(sizes.last()) else {
        return String::new();
    };
    let ends: Vec<u32> = if first == last {
        vec![first]
    } else {
        vec![first, last]
    };
    let mut header = vec!["Metric".to_string(), "Services".to_string()];
    header.extend(Variant::ALL.map(|v| v.label().to_string()));
    header.extend(HEADLINE_RATIOS.map(|(x, y)| format!("{}/{}", short(x), short(y))));
    let mut table = Table::from_header(header);
    let runs = results.plan.runs;
    for (metric, unit) in TRAFFIC_METRICS {
        for &n in &ends {
            let of = |v| traffic_summary(results, v, n, metric);
            if Variant::ALL.iter().all(|&v| of(v).is_none()) {
                continue;
            }
            let mut row = vec![format!("{} ({unit})", metric.label()), n.to_string()];
            row.extend(Variant::ALL.map(|v| cell(of(v), number, runs)));
            row.extend(HEADLINE_RATIOS.map(|(x, y)| ratio(of(x), of(y))));
            table.row(row);
        }
    }
    for (label, cells) in [
        ("Program N x 10 endpoints", &results.programming),
        ("One endpoint change", &results.endpoint_change),
    ] {
        for &n in &ends {
            let of = |v| control_summary(cells, v, n);
            if of(Variant::Ebpf).is_none() {
                continue;
            }
            let mut row = vec![label.to_string(), n.to_string()];
            row.extend(Variant::ALL.map(|v| cell(of(v), seconds, runs)));
            row.extend(HEADLINE_RATIOS.map(|(x, y)| match (x, y) {
                (Variant::Ebpf, Variant::Iptables) => ratio(of(x), of(y)),
                _ => String::new(),
            }));
            table.row(row);
        }
    }
    if table.is_empty() {
        return String::new();
    }
    let mut md = String::from("## Headline\n\n");
    md.push_str(&table.render());
    if let Some(packets) = packet_headline(results, last) {
        md.push('\n');
        md.push_str(&packets);
    }
    if let Some(families) = family_headline(results, last) {
        md.push('\n');
        md.push_str(&families);
    }
    md.push('\n');
    md
}

/// The per-packet headline: both hooks at the largest size with conntrack 90% full.
fn packet_headline(results: &Results, n: u32) -> Option<String> {
    let mut table = Table::new(&[
        "Per packet, ns",
        "no-op",
        "non-service",
        "established",
        "no-op (repeat = 1)",
        "new flow (repeat = 1)",
    ]);
    for hook in Hook::ALL {
        let of = |case, method| {
            packet_summary(results, hook, ConntrackFill::NinetyPercent, n, case, method)
        };
        if of(PacketCase::NoOp, Method::Repeat).is_none() {
            continue;
        }
        let runs = results.plan.runs;
        table.row(vec![
            format!("{} program, {n} services, conntrack 90% full", hook.label()),
            cell(of(PacketCase::NoOp, Method::Repeat), number, runs),
            cell(of(PacketCase::NonService, Method::Repeat), number, runs),
            cell(of(PacketCase::Established, Method::Repeat), number, runs),
            cell(of(PacketCase::NoOp, Method::Single), number, runs),
            cell(of(PacketCase::NewFlow, Method::Single), number, runs),
        ]);
    }
    (!table.is_empty()).then(|| table.render())
}

/// IPv4 and IPv6 side by side: each hook's non-service, established and new-flow cost at the
/// largest size with conntrack 90% full (new flows net of the no-op measured the same way).
fn family_headline(results: &Results, n: u32) -> Option<String> {
    use Method::{Repeat, Single};
    use PacketCase::{Established, Established6, NewFlow, NewFlow6, NoOp, NonService, NonService6};
    let mut table = Table::new(&[
        "Per packet by family, ns",
        "non-service IPv4",
        "non-service IPv6",
        "established IPv4",
        "established IPv6",
        "new flow net IPv4",
        "new flow net IPv6",
    ]);
    for hook in Hook::ALL {
        let of = |case, method| {
            packet_summary(results, hook, ConntrackFill::NinetyPercent, n, case, method)
        };
        if of(NonService6, Repeat).is_none() {
            continue;
        }
        let runs = results.plan.runs;
        table.row(vec![
            format!("{} program, {n} services, conntrack 90% full", hook.label()),
            cell(of(NonService, Repeat), number, runs),
            cell(of(NonService6, Repeat), number, runs),
            cell(of(Established, Repeat), number, runs),
            cell(of(Established6, Repeat), number, runs),
            difference(of(NewFlow, Single), of(NoOp, Single)),
            difference(of(NewFlow6, Single), of(NoOp, Single)),
        ]);
    }
    (!table.is_empty()).then(|| table.render())
}

/// A traffic metric taken from every run of a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficMetric {
    ConnectionRate,
    ConnectP50,
    ConnectP99,
    Throughput,
    RequestRate,
}

/// Traffic metrics with their units, in report order.
pub const TRAFFIC_METRICS: [(TrafficMetric, &str); 5] = [
    (TrafficMetric::ConnectionRate, "per s"),
    (TrafficMetric::ConnectP50, "µs"),
    (TrafficMetric::ConnectP99, "µs"),
    (TrafficMetric::Throughput, "Gbit/s"),
    (TrafficMetric::RequestRate, "per s"),
];

impl TrafficMetric {
    /// Name in reports.
    pub fn label(self) -> &'static str {
        match self {
            TrafficMetric::ConnectionRate => "New connections",
            TrafficMetric::ConnectP50 => "Connect latency p50",
            TrafficMetric::ConnectP99 => "Connect latency p99",
            TrafficMetric::Throughput => "Stream throughput",
            TrafficMetric::RequestRate => "Requests/responses",
        }
    }

    /// One value per run of `cell`.
    pub fn samples(self, cell: &TrafficCell) -> Vec<f64> {
        match self {
            TrafficMetric::ConnectionRate => cell.connections.iter().map(|r| r.rate).collect(),
            TrafficMetric::ConnectP50 => {
                cell.connections.iter().map(|r| r.connect_p50_us).collect()
            }
            TrafficMetric::ConnectP99 => {
                cell.connections.iter().map(|r| r.connect_p99_us).collect()
            }
            TrafficMetric::Throughput => cell.stream.iter().map(|r| r.gbit_per_s).collect(),
            TrafficMetric::RequestRate => cell.request_response.iter().map(|r| r.rate).collect(),
        }
    }
}

/// The summary of `metric` for `variant` at `n` services.
pub fn traffic_summary(
    results: &Results,
    variant: Variant,
    n: u32,
    metric: TrafficMetric,
) -> Option<Summary> {
    let cell = results
        .traffic
        .iter()
        .find(|c| c.variant == variant && c.services == n)?;
    Summary::of(&metric.samples(cell))
}

/// The summary of a control-plane cell.
pub fn control_summary(cells: &[ControlCell], variant: Variant, n: u32) -> Option<Summary> {
    let cell = cells
        .iter()
        .find(|c| c.variant == variant && c.services == n)?;
    Summary::of(&cell.seconds)
}

/// The summary of a per-packet cell.
pub fn packet_summary(
    results: &Results,
    hook: Hook,
    fill: ConntrackFill,
    n: u32,
    case: PacketCase,
    method: Method,
) -> Option<Summary> {
    let found = |c: &&PacketCell| {
        (c.hook, c.conntrack, c.services, c.case, c.method) == (hook, fill, n, case, method)
    };
    Summary::of(&results.per_packet.iter().find(found)?.ns)
}

fn traffic_sections(results: &Results) -> String {
    if results.traffic.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "## 1. New connections and 2. established traffic\n\nA client pod connects to the \
         target service (the last of N programmed) through a node namespace; (d) connects to \
         a backend pod directly; (e)'s sockets are connected to a backend at `connect()`. \
         Ratios compare medians; for latencies lower is better.\n\n",
    );
    for (metric, unit) in TRAFFIC_METRICS {
        let mut header = vec!["Services".to_string()];
        header.extend(Variant::ALL.map(|v| v.label().to_string()));
        header.extend(RATIOS.map(|(x, y)| format!("{}/{}", short(x), short(y))));
        let mut table = Table::from_header(header);
        for &n in &results.plan.sizes {
            let of = |v| traffic_summary(results, v, n, metric);
            if Variant::ALL.iter().all(|&v| of(v).is_none()) {
                continue;
            }
            let mut row = vec![n.to_string()];
            row.extend(Variant::ALL.map(|v| cell(of(v), number, results.plan.runs)));
            row.extend(RATIOS.map(|(x, y)| ratio(of(x), of(y))));
            table.row(row);
        }
        if !table.is_empty() {
            let _ = write!(
                md,
                "### {} ({unit})\n\n{}\n",
                metric.label(),
                table.render()
            );
        }
    }
    md
}

/// Ratio columns: every variant against (d), the other translations against (b), and
/// socket-level against per-packet translation.
const RATIOS: [(Variant, Variant); 7] = [
    (Variant::Ebpf, Variant::Direct),
    (Variant::Iptables, Variant::Direct),
    (Variant::Nftables, Variant::Direct),
    (Variant::EbpfSocket, Variant::Direct),
    (Variant::Ebpf, Variant::Iptables),
    (Variant::Nftables, Variant::Iptables),
    (Variant::EbpfSocket, Variant::Ebpf),
];

/// The headline's ratio columns.
const HEADLINE_RATIOS: [(Variant, Variant); 4] = [
    (Variant::Ebpf, Variant::Iptables),
    (Variant::Ebpf, Variant::Direct),
    (Variant::EbpfSocket, Variant::Ebpf),
    (Variant::EbpfSocket, Variant::Direct),
];

fn short(variant: Variant) -> &'static str {
    &variant.label()[..3]
}

/// The programs' time per run under each traffic workload, for (a) and (e).
fn traffic_programs_section(results: &Results) -> String {
    let workloads = [
        (ClientWorkload::Connections, "new connections"),
        (ClientWorkload::Stream, "stream"),
        (ClientWorkload::RequestResponse, "requests/responses"),
    ];
    let programs = [
        (Role::TcIngress, "TC ingress"),
        (Role::SockConnect, "connect4"),
    ];
    let mut header = ["Variant", "Services", "Program"]
        .map(String::from)
        .to_vec();
    header.extend(workloads.map(|(_, label)| format!("{label}: ns per run (runs)")));
    let mut table = Table::from_header(header);
    for cell in results.traffic.iter().filter(|c| !c.programs.is_empty()) {
        for (role, program) in programs {
            let cost_in = |workload| {
                cell.programs
                    .iter()
                    .filter(|w| w.workload == workload)
                    .flat_map(|w| &w.costs)
                    .find(|c| c.role == role)
            };
            if workloads.iter().all(|&(w, _)| cost_in(w).is_none()) {
                continue;
            }
            let mut row = vec![
                cell.variant.label().to_string(),
                cell.services.to_string(),
                program.to_string(),
            ];
            row.extend(workloads.map(|(workload, _)| match cost_in(workload) {
                Some(ProgramCost {
                    ns_per_run: Some(ns),
                    runs,
                    ..
                }) => format!("{} ({runs})", number(*ns)),
                _ => "–".to_string(),
            }));
            table.row(row);
        }
    }
    if table.is_empty() {
        return String::new();
    }
    format!(
        "### Program run time under traffic (BPF_ENABLE_STATS)\n\nAfter its runs, each (a) and \
         (e) cell runs one more window of each workload with the kernel's run-time statistics \
         on (held only for that window; they add two clock reads to every program run, so the \
         windows above run without them): each program's `run_time_ns` / `run_cnt` over that \
         window. TC ingress runs on every pod veth (the client's packets and the backends' \
         replies); (e)'s `connect4` once per `connect()` (its other socket programs are not \
         counted).\n\n{}\n",
        table.render()
    )
}

fn per_packet_section(results: &Results) -> String {
    if results.per_packet.is_empty() {
        return String::new();
    }
    let plan = &results.plan;
    let mut md = format!(
        "## 3. Per-packet cost (BPF_PROG_TEST_RUN, ns per packet)\n\n\"repeat\" columns: one \
         run of {} iterations, the kernel's time per iteration. \"once\" columns: {} runs with \
         repeat = 1 (distinct frames), the median of the kernel's times; they include the \
         kernel's fixed per-run overhead, which the no-op (once) column shows. \"net\" \
         subtracts the no-op measured the same way.\n\n",
        plan.repeat | 1,
        plan.single_frames
    );
    use Method::{Repeat, Single};
    use PacketCase::{
        Established, Established6, NewFlow, NewFlow6, NewFlowOneRange, NewFlowThousandRanges, NoOp,
        NonService, NonService6,
    };
    let columns = [
        ("no-op, repeat", NoOp, Repeat),
        ("non-service, repeat", NonService, Repeat),
        ("established, repeat", Established, Repeat),
        ("no-op, once", NoOp, Single),
        ("established, once", Established, Single),
        ("new flow, once", NewFlow, Single),
        ("new flow, 1 source range, once", NewFlowOneRange, Single),
        (
            "new flow, 1000 source ranges, once",
            NewFlowThousandRanges,
            Single,
        ),
        ("IPv6 non-service, repeat", NonService6, Repeat),
        ("IPv6 established, repeat", Established6, Repeat),
        ("IPv6 new flow, once", NewFlow6, Single),
    ];
    for hook in Hook::ALL {
        let mut header = vec!["Services".to_string(), "Conntrack".to_string()];
        header.extend(columns.map(|(label, ..)| label.to_string()));
        header.extend([
            "established net".into(),
            "new flow net".into(),
            "IPv6 new flow net".into(),
        ]);
        let mut table = Table::from_header(header);
        for &n in &plan.sizes {
            for fill in [ConntrackFill::Empty, ConntrackFill::NinetyPercent] {
                let of = |case, method| packet_summary(results, hook, fill, n, case, method);
                if of(NoOp, Repeat).is_none() {
                    continue;
                }
                let mut row = vec![n.to_string(), fill.label().to_string()];
                row.extend(
                    columns.map(|(_, case, method)| cell(of(case, method), number, plan.runs)),
                );
                row.push(difference(of(Established, Repeat), of(NoOp, Repeat)));
                row.push(difference(of(NewFlow, Single), of(NoOp, Single)));
                row.push(difference(of(NewFlow6, Single), of(NoOp, Single)));
                table.row(row);
            }
        }
        if !table.is_empty() {
            let _ = write!(md, "### {} program\n\n{}\n", hook.label(), table.render());
        }
    }
    md
}

fn control_plane_section(results: &Results) -> String {
    if results.programming.is_empty() && results.agent.is_empty() {
        return String::new();
    }
    let plan = &results.plan;
    let mut md = format!(
        "## 4. Control plane\n\nN services x {} endpoints. (a): the agent's reconciler writing \
         the maps (in-process; loading the object is not included). (b): `iptables-restore` of \
         the whole nat table, for a change too (kube-proxy's full sync). (c): `nft -f` \
         transactions of {} services each for programming, one small incremental transaction \
         for a change (kube-proxy's nftables mode). (a)'s endpoint change is applied {} times \
         per size (the endpoint swapped in and out in turn), each a sample: its cell is the \
         median (min–max) of all of them, with their p50 and p99.\n\n",
        plan.control_plane_endpoints, plan.nft_services_per_transaction, plan.endpoint_changes
    );
    let translated = Variant::TRANSLATING;
    for (title, cells, per_change) in [
        ("Programming from empty", &results.programming, false),
        ("One endpoint change", &results.endpoint_change, true),
    ] {
        let mut header = vec!["Services".to_string()];
        header.extend(translated.map(|v| v.label().to_string()));
        header.extend(["(a)/(b)".into(), "(c)/(b)".into()]);
        if per_change {
            header.extend(["(a) p50".into(), "(a) p99".into(), "(a) changes".into()]);
        }
        let mut table = Table::from_header(header);
        for &n in &plan.sizes {
            let of = |v| control_summary(cells, v, n);
            if translated.iter().all(|&v| of(v).is_none()) {
                continue;
            }
            let mut row = vec![n.to_string()];
            row.extend(translated.map(|v| cell(of(v), seconds, plan.runs)));
            row.push(ratio(of(Variant::Ebpf), of(Variant::Iptables)));
            row.push(ratio(of(Variant::Nftables), of(Variant::Iptables)));
            if per_change {
                let samples = cells
                    .iter()
                    .find(|c| c.variant == Variant::Ebpf && c.services == n)
                    .map(|c| c.seconds.as_slice())
                    .unwrap_or_default();
                match p50_p99(samples) {
                    Some((p50, p99)) => row.extend([seconds(p50), seconds(p99)]),
                    None => row.extend(["–".to_string(), "–".to_string()]),
                }
                row.push(samples.len().to_string());
            }
            table.row(row);
        }
        if !table.is_empty() {
            let _ = write!(md, "### {title}\n\n{}\n", table.render());
        }
    }
    if !results.agent.is_empty() {
        let mut table = Table::new(&[
            "Services",
            "Endpoints each",
            "Distinct backends",
            "VmRSS (MiB)",
            "Start to ready",
        ]);
        for agent in &results.agent {
            table.row(vec![
                agent.services.to_string(),
                agent.endpoints.to_string(),
                agent.distinct_backends.to_string(),
                cell(Summary::of(&agent.rss_mib), number, plan.runs),
                cell(Summary::of(&agent.ready_s), seconds, plan.runs),
            ]);
        }
        let _ = write!(
            md,
            "### lb-agent memory\n\nThe real `lb-agent` reading N services from a manifests \
             directory, VmRSS after its ready line. It runs with its default capacities (no flag \
             raises them), so services share endpoint sets when N x {} endpoints exceed its \
             backend capacity.\n\n{}\n",
            plan.endpoints,
            table.render()
        );
    }
    md
}

fn sync_latency_section(results: &Results) -> String {
    if results.sync_latency.is_empty() {
        return String::new();
    }
    let mut table = Table::new(&[
        "Services",
        "changes",
        "map p50",
        "map p99",
        "map max",
        "traffic p50",
        "traffic p99",
        "traffic max",
        "agent RSS",
        "map memory",
    ]);
    let mut scrapes = Table::new(&[
        "Services",
        "conntrack entries",
        "scrapes",
        "p50",
        "p99",
        "agent CPU per scrape",
        "metrics text",
    ]);
    let ms = |x: f64| format!("{x:.2} ms");
    for cell in &results.sync_latency {
        let columns = |samples: &[f64]| match p50_p99(samples) {
            Some((p50, p99)) => {
                let max = samples.iter().copied().fold(f64::MIN, f64::max);
                [ms(p50), ms(p99), ms(max)]
            }
            None => ["–".to_string(), "–".to_string(), "–".to_string()],
        };
        let mut row = vec![cell.services.to_string(), cell.latency_ms.len().to_string()];
        row.extend(columns(&cell.latency_ms));
        row.extend(columns(&cell.traffic_ms));
        row.push(format!("{:.0} MiB", cell.rss_mib));
        row.push(format!("{:.0} MiB", cell.map_mib));
        table.row(row);
        let scrape = &cell.scrape;
        if let Some((p50, p99)) = p50_p99(&scrape.ms) {
            scrapes.row(vec![
                cell.services.to_string(),
                format!(
                    "{} of {} (reported {:.0})",
                    scrape.conntrack_entries, scrape.conntrack_capacity, scrape.reported_entries
                ),
                scrape.ms.len().to_string(),
                ms(p50),
                ms(p99),
                ms(scrape.cpu_ms_per_scrape),
                format!("{} KiB", scrape.bytes / 1024),
            ]);
        }
    }
    let mut md = format!(
        "## Kubernetes sync latency\n\nTime from an EndpointSlice change accepted by the \
         in-memory API server to the agent applying it: the real `lb-agent` in Kubernetes mode \
         watches the server from the node namespace, with N Services in the cluster (N - 2 of \
         them with {fillers} distinct endpoints each, its map capacities raised to fit). \
         \"map\": each change alternates one Service between two and three ready endpoints, \
         {settle} ms apart; the clock stops when the pinned services map, read in a tight loop, \
         shows it. \"traffic\": as many changes flip a probe Service between two endpoints (UDP \
         echo servers answering with their pod's name); after each, the client pod sends fresh \
         UDP flows (a source port not used before in the run, each waiting at most {probe} ms \
         for its answer) to the Service until the new endpoint answers; the clock stops at that \
         answer. Agent RSS: VmRSS once every Service is programmed; map memory: the `memlock` \
         of the BPF maps it holds then (kernel memory at these capacities, not part of its \
         RSS).\n\n{}\n",
        table.render(),
        fillers = sync_latency::FILLER_ENDPOINTS,
        settle = sync_latency::SETTLE.as_millis(),
        probe = sync_latency::PROBE_TIMEOUT.as_millis(),
    );
    if !scrapes.is_empty() {
        let _ = write!(
            md,
            "### Scrape cost at a full conntrack\n\nAfter the changes, the agent's conntrack \
             map is filled to its capacity through its pin (answered TCP flows; the agent runs \
             with `--conntrack-gc-interval 1h`, so no collection walk runs meanwhile), then \
             `GET /metrics` is timed from the node namespace (connect to the end of the \
             response), one scrape after the other. Agent CPU: its user and system time over \
             all scrapes (`/proc/<pid>/stat`, in clock ticks) divided by their number. \
             \"reported\": `lbagent_conntrack_entries`, the count of the garbage collector's \
             last walk (here the one at start, before the fill): the scrape reads no conntrack \
             entry.\n\n{}\n",
            scrapes.render()
        );
    }
    md
}

fn reply_path_section(results: &Results) -> String {
    if results.reply_path.is_empty() {
        return String::new();
    }
    let runs = results.plan.runs;
    let mut table = Table::new(&[
        "NodePort endpoint",
        "reply path",
        "New connections (per s)",
        "Connect latency p50 (µs)",
        "Requests/responses (per s)",
        "Requests/responses, statistics on (per s)",
        "XDP, LAN (ns per run)",
        "TC handoff, LAN (ns per run)",
        "TC ingress, pod veth (ns per run)",
        "TC egress (ns per run)",
    ]);
    for row in &results.reply_path {
        let of = |values: Vec<f64>| Summary::of(&values);
        table.row(
            vec![
                row.endpoint.to_string(),
                row.path.to_string(),
                cell(
                    of(row.connections.iter().map(|r| r.rate).collect()),
                    number,
                    runs,
                ),
                cell(
                    of(row.connections.iter().map(|r| r.connect_p50_us).collect()),
                    number,
                    runs,
                ),
                cell(
                    of(row.request_response.iter().map(|r| r.rate).collect()),
                    number,
                    runs,
                ),
            ]
            .into_iter()
            .chain([cell(
                of(row.programs.iter().map(|w| w.rate).collect()),
                number,
                runs,
            )])
            .chain(Role::LINKED.map(|role| {
                let costs = row.programs.iter().flat_map(|w| &w.costs);
                let ns = costs
                    .filter(|c| c.role == role)
                    .filter_map(|c| c.ns_per_run);
                cell(of(ns.collect()), number, runs)
            }))
            .collect(),
        );
    }
    format!(
        "## Reply path\n\nAn outside client's TCP traffic to a NodePort of node A in the \
         two-node topology (`lb_tests::cluster::two_node`; real `lb-agent`s, XDP on the LAN \
         interfaces, TC on the pods' veths), whose only endpoint is node A's pod (`local`: \
         replies enter on the pod's veth and leave with node A's address) or node B's \
         (`remote`: masqueraded by node A's XDP program both ways). Node A's agent runs with \
         `--reply-path redirect` (the programs send those packets to the egress device) or \
         `kernel` (the kernel routes them, with `accept_local` set), one topology each, \
         alternating run by run. Each run ends with a third window of requests/responses with \
         the kernel's run-time statistics on (BPF_ENABLE_STATS, held only for that window): \
         its rate, then node A's programs' run time per program run in it: XDP and the \
         handoff on the LAN interface, TC ingress on the pod's veth, TC egress on both (one \
         program); `–` where a program is not attached or did not run. They count only the \
         program: the kernel's routing (kernel path) or the redirect's transmit after the \
         program returns (redirect path) are not in them.\n\n{}\n",
        table.render()
    )
}

fn methods(results: &Results) -> String {
    let plan = &results.plan;
    format!(
        "## How it was measured\n\n\
         - Topology: a node namespace routing between pod namespaces over veth pairs (/32 \
         routes, as kind's ptp CNI); (a) attaches the TC program to every pod veth in the node, \
         (b)/(c) load their rules into the node namespace only, (d) has neither; (e) is (a) plus \
         the socket programs on a cgroup the client's processes run in, translating every \
         namespace's sockets at `connect()` (`lb-agent --socket-lb-pods`). Each (variant, N) \
         gets fresh namespaces. N services with {e} endpoints each; the target is the last one \
         programmed; its endpoints are the three backend pods. Every measurement is a new \
         client process in the client pod's namespace.\n\
         - New connections: connect, a 32-byte request and its echo, close, in a loop for {w} ms \
         (at most {max} connections); connect latency is the time `connect()` takes.\n\
         - Established: one connection sending 128 KiB writes for {w} ms (the server confirms \
         the byte count), then 32-byte request/response on one kept-open connection for {w} ms.\n\
         - Per packet: BPF_PROG_TEST_RUN on the data path's XDP, TC and TC egress programs and \
         on a two-instruction no-op of the same type, through one raw bpf(2) helper. Conntrack \
         \"90% full\" is pre-filled through the map API. Established packets alternate between \
         two real translations of an answered flow (a second conntrack entry maps the \
         translated packet back; checked on the output frame); at TC egress they are a backend's replies, and there \
         is no new flow.\n\
         - Control plane: N services x {cpe} endpoints; times from process spawn to exit for \
         the baselines and of the map writes for (a). Cells stop repeating after {budget} s.\n\
         - Only the NAT path of kube-proxy is modelled (no filter-table chains, no \
         masquerading), so (b) and (c) do slightly less work than a real kube-proxy.\n",
        e = plan.endpoints,
        w = plan.window_ms,
        max = plan.max_operations,
        cpe = plan.control_plane_endpoints,
        budget = plan.control_plane_budget_s,
    )
}

/// `median (min–max)`, plus `n=` when fewer runs than planned were made.
fn cell(summary: Option<Summary>, format: fn(f64) -> String, planned: u32) -> String {
    let Some(s) = summary else {
        return "–".to_string();
    };
    let mut text = format(s.median);
    if s.runs > 1 {
        let _ = write!(text, " ({}–{})", format(s.min), format(s.max));
    }
    if (s.runs as u32) < planned {
        let _ = write!(text, " n={}", s.runs);
    }
    text
}

/// `x/y` of medians, to two significant digits (at least two decimals).
fn ratio(x: Option<Summary>, y: Option<Summary>) -> String {
    match (x, y) {
        (Some(x), Some(y)) if y.median > 0.0 => times(x.median / y.median),
        _ => "–".to_string(),
    }
}

/// A ratio `r` as `r×`, to two significant digits (at least two decimals).
pub fn times(r: f64) -> String {
    let decimals = if r > 0.0 && r < 0.1 {
        (-r.log10()).ceil() as usize + 1
    } else {
        2
    };
    format!("{r:.decimals$}×")
}

/// `x - y` of medians.
fn difference(x: Option<Summary>, y: Option<Summary>) -> String {
    match (x, y) {
        (Some(x), Some(y)) => number(x.median - y.median),
        _ => "–".to_string(),
    }
}

/// About three significant digits.
fn number(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

/// Seconds in the most readable unit.
fn seconds(s: f64) -> String {
    match s {
        s if s < 1e-3 => format!("{} µs", number(s * 1e6)),
        s if s < 1.0 => format!("{} ms", number(s * 1e3)),
        s => format!("{} s", number(s)),
    }
}

/// A Markdown table.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table::from_header(header.iter().map(|h| h.to_string()).collect())
    }

    fn from_header(header: Vec<String>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut text = line(&self.header);
        text.push_str(&line(&vec!["---".to_string(); self.header.len()]));
        for row in &self.rows {
            text.push_str(&line(row));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_median_range_and_early_stops() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!(cell(s, number, 3), "2.00 (1.00–3.00)");
        assert_eq!(cell(Summary::of(&[124.0]), seconds, 5), "124 s n=1");
        assert_eq!(cell(Summary::of(&[0.0123]), seconds, 1), "12.3 ms");
        assert_eq!(cell(None, number, 5), "–");
        assert_eq!(ratio(Summary::of(&[1.0]), Summary::of(&[4.0])), "0.25×");
        assert_eq!(
            ratio(Summary::of(&[6.25e-6]), Summary::of(&[0.0201])),
            "0.00031×"
        );
        assert_eq!(ratio(Summary::of(&[0.05]), Summary::of(&[1.0])), "0.050×");
        assert_eq!(ratio(Summary::of(&[10.6]), Summary::of(&[1.0])), "10.60×");
        assert_eq!(seconds(0.000_05), "50.0 µs");
    }

    #[test]
    fn tables_render_as_markdown() {
        let mut table = Table::new(&["a", "b"]);
        table.row(vec!["1".into(), "2".into()]);
        assert_eq!(table.render(), "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
    }
}
