//! The headline targets (issue 13): each target row with its measured value, the reference it
//! is compared with, the ratio and whether it is met, from the same results as every other
//! table. A row whose workload, size or reference did not run says "not measured".

use super::{
    report::{packet_summary, times, traffic_summary, Table, TrafficMetric},
    results::{ConntrackFill, Method, PacketCase, Results},
    stats::{percentile, Summary},
    test_run::Hook,
    variants::Variant,
};

/// The Services count of the rows measured at scale.
pub const LARGE: u32 = 30_000;

/// Whether a target row is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    NotMeasured,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::NotMet
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "**not met**",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// One target row as reported.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRow {
    pub row: &'static str,
    pub target: &'static str,
    pub measured: String,
    pub reference: String,
    pub ratio: String,
    pub verdict: Verdict,
}

impl TargetRow {
    fn not_measured(row: &'static str, target: &'static str) -> TargetRow {
        TargetRow {
            row,
            target,
            measured: "not measured".into(),
            reference: String::new(),
            ratio: String::new(),
            verdict: Verdict::NotMeasured,
        }
    }
}

/// Every target row, in the order.
pub fn rows(results: &Results) -> Vec<TargetRow> {
    vec![
        stream_throughput(results),
        new_connections(results),
        connect_p99(results),
        endpoint_change(results),
        change_to_traffic(results),
        agent_rss(results),
        non_service_packet(results),
        new_flow_packet(results),
    ]
}

/// The targets section of `results.md`.
pub fn section(results: &Results) -> String {
    let mut table = Table::new(&[
        "Target row",
        "Target",
        "Measured (a)",
        "Compared with",
        "Ratio",
        "Verdict",
    ]);
    for row in rows(results) {
        table.row(vec![
            row.row.to_string(),
            row.target.to_string(),
            row.measured,
            row.reference,
            row.ratio,
            row.verdict.label().to_string(),
        ]);
    }
    format!(
        "## Targets\n\nThe issue's target rows, from the tables below (medians of the runs; \
         p50/p99 over every change or scrape). Per-packet rows use the largest size measured \
         with conntrack 90% full.\n\n{}\n",
        table.render()
    )
}

fn median(results: &Results, variant: Variant, n: u32, metric: TrafficMetric) -> Option<f64> {
    traffic_summary(results, variant, n, metric).map(|s| s.median)
}

/// The better of (b) and (c) by `metric` (higher is better), with its label.
fn best_baseline(results: &Results, n: u32, metric: TrafficMetric) -> Option<(Variant, f64)> {
    [Variant::Iptables, Variant::Nftables]
        .into_iter()
        .filter_map(|v| Some((v, median(results, v, n, metric)?)))
        .max_by(|x, y| x.1.total_cmp(&y.1))
}

fn stream_throughput(results: &Results) -> TargetRow {
    let (row, target) = (
        "stream throughput, N = 1",
        ">= 0.95x direct and >= the best baseline",
    );
    let metric = TrafficMetric::Throughput;
    let of = |v| median(results, v, 1, metric);
    let (Some(a), Some(d), Some((best, b))) = (
        of(Variant::Ebpf),
        of(Variant::Direct),
        best_baseline(results, 1, metric),
    ) else {
        return TargetRow::not_measured(row, target);
    };
    TargetRow {
        row,
        target,
        measured: format!("{a:.1} Gbit/s"),
        reference: format!("(d) {d:.1}; best baseline {} {b:.1}", short(best)),
        ratio: format!(
            "{} of (d), {} of {}",
            times(a / d),
            times(a / b),
            short(best)
        ),
        verdict: Verdict::of(a >= 0.95 * d && a >= b),
    }
}

fn new_connections(results: &Results) -> TargetRow {
    let (row, target) = (
        "new connections/s, N = 30000",
        ">= 0.95x direct and >= nftables",
    );
    let of = |v| median(results, v, LARGE, TrafficMetric::ConnectionRate);
    let (Some(a), Some(d), Some(c)) = (
        of(Variant::Ebpf),
        of(Variant::Direct),
        of(Variant::Nftables),
    ) else {
        return TargetRow::not_measured(row, target);
    };
    TargetRow {
        row,
        target,
        measured: format!("{a:.0}/s"),
        reference: format!("(d) {d:.0}/s; (c) {c:.0}/s"),
        ratio: format!("{} of (d), {} of (c)", times(a / d), times(a / c)),
        verdict: Verdict::of(a >= 0.95 * d && a >= c),
    }
}

fn connect_p99(results: &Results) -> TargetRow {
    let (row, target) = ("connect p99, N = 30000", "<= nftables");
    let of = |v| median(results, v, LARGE, TrafficMetric::ConnectP99);
    let (Some(a), Some(c)) = (of(Variant::Ebpf), of(Variant::Nftables)) else {
        return TargetRow::not_measured(row, target);
    };
    TargetRow {
        row,
        target,
        measured: format!("{a:.1} µs"),
        reference: format!("(c) {c:.1} µs"),
        ratio: format!("{} of (c)", times(a / c)),
        verdict: Verdict::of(a <= c),
    }
}

/// p50 and p99 of `samples`, `None` when there are none.
pub fn p50_p99(samples: &[f64]) -> Option<(f64, f64)> {
    let mut sorted: Vec<f64> = samples.to_vec();
    (!sorted.is_empty()).then(|| (percentile(&mut sorted, 0.5), percentile(&mut sorted, 0.99)))
}

fn endpoint_change(results: &Results) -> TargetRow {
    let (row, target) = (
        "one endpoint change, N = 30000",
        "<= 5 ms p99, independent of N",
    );
    let p99_at = |n: u32| {
        let cell = results
            .endpoint_change
            .iter()
            .find(|c| c.variant == Variant::Ebpf && c.services == n)?;
        Some(p50_p99(&cell.seconds)?.1 * 1e3)
    };
    let Some(p99) = p99_at(LARGE) else {
        return TargetRow::not_measured(row, target);
    };
    let smallest = results.plan.sizes.first().copied().unwrap_or(LARGE);
    let (reference, ratio) = match p99_at(smallest).filter(|_| smallest != LARGE) {
        Some(small) => (
            format!("5 ms; N = {smallest}: {small:.2} ms"),
            format!(
                "{} of 5 ms, {} of N = {smallest}",
                times(p99 / 5.0),
                times(p99 / small)
            ),
        ),
        None => ("5 ms".to_string(), format!("{} of 5 ms", times(p99 / 5.0))),
    };
    TargetRow {
        row,
        target,
        measured: format!("p99 {p99:.2} ms (in-process)"),
        reference,
        ratio,
        verdict: Verdict::of(p99 <= 5.0),
    }
}

fn change_to_traffic(results: &Results) -> TargetRow {
    let (row, target) = (
        "EndpointSlice change to traffic, N = 30000 x 10 distinct endpoints, API mode",
        "p99 <= 10 ms",
    );
    let Some((p50, p99)) = results
        .sync_latency
        .iter()
        .find(|c| c.services == LARGE)
        .and_then(|c| p50_p99(&c.traffic_ms))
    else {
        return TargetRow::not_measured(row, target);
    };
    TargetRow {
        row,
        target,
        measured: format!("p99 {p99:.2} ms (p50 {p50:.2} ms)"),
        reference: "10 ms".into(),
        ratio: format!("{} of 10 ms", times(p99 / 10.0)),
        verdict: Verdict::of(p99 <= 10.0),
    }
}

fn agent_rss(results: &Results) -> TargetRow {
    let (row, target) = (
        "agent RSS, 30000 Services",
        "<= 150 MiB with 30000 x 10 distinct endpoints",
    );
    let Some(cell) = results.sync_latency.iter().find(|c| c.services == LARGE) else {
        return TargetRow::not_measured(row, target);
    };
    let rss = cell.rss_mib;
    TargetRow {
        row,
        target,
        measured: format!("{rss:.0} MiB"),
        reference: "150 MiB".into(),
        ratio: format!("{} of 150 MiB", times(rss / 150.0)),
        verdict: Verdict::of(rss <= 150.0),
    }
}

/// The XDP cell of `case` measured by `method` at the largest size, conntrack 90% full.
fn xdp(results: &Results, case: PacketCase, method: Method) -> Option<(u32, Summary)> {
    let n = *results.plan.sizes.last()?;
    let fill = ConntrackFill::NinetyPercent;
    Some((
        n,
        packet_summary(results, Hook::Xdp, fill, n, case, method)?,
    ))
}

fn non_service_packet(results: &Results) -> TargetRow {
    let (row, target) = ("per packet, non-service (XDP, repeat)", "<= 5x the no-op");
    let (Some((n, packet)), Some((_, noop))) = (
        xdp(results, PacketCase::NonService, Method::Repeat),
        xdp(results, PacketCase::NoOp, Method::Repeat),
    ) else {
        return TargetRow::not_measured(row, target);
    };
    let (packet, noop) = (packet.median, noop.median);
    TargetRow {
        row,
        target,
        measured: format!("{packet:.0} ns (N = {n})"),
        reference: format!("no-op {noop:.0} ns"),
        ratio: format!("{} of the no-op", times(packet / noop)),
        verdict: Verdict::of(packet <= 5.0 * noop),
    }
}

fn new_flow_packet(results: &Results) -> TargetRow {
    let (row, target) = ("per packet, new flow (XDP, once, net)", "<= 0.7 µs net");
    let (Some((n, packet)), Some((_, noop))) = (
        xdp(results, PacketCase::NewFlow, Method::Single),
        xdp(results, PacketCase::NoOp, Method::Single),
    ) else {
        return TargetRow::not_measured(row, target);
    };
    let net = packet.median - noop.median;
    TargetRow {
        row,
        target,
        measured: format!("{net:.0} ns net (N = {n})"),
        reference: format!(
            "700 ns (gross {:.0}, no-op once {:.0})",
            packet.median, noop.median
        ),
        ratio: format!("{} of 700 ns", times(net / 700.0)),
        verdict: Verdict::of(net <= 700.0),
    }
}

fn short(variant: Variant) -> &'static str {
    &variant.label()[..3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        options::Plan,
        results::{ControlCell, PacketCell, PlanRecord, SyncCell},
    };

    fn results(sizes: &[u32]) -> Results {
        let plan = Plan::full();
        Results {
            plan: PlanRecord {
                sizes: sizes.to_vec(),
                runs: plan.runs,
                ..PlanRecord::default()
            },
            ..Results::default()
        }
    }

    #[test]
    fn rows_without_their_workload_are_not_measured() {
        let rows = rows(&results(&[1, 1000]));
        assert_eq!(rows.len(), 8);
        assert!(
            rows.iter().all(|r| r.verdict == Verdict::NotMeasured),
            "{rows:?}"
        );
        assert!(section(&results(&[1])).contains("| not measured |"));
    }

    #[test]
    fn control_plane_and_packet_rows_compare_with_their_bounds() {
        let mut results = results(&[1, LARGE]);
        // 100 changes: p99 is the 99th smallest, 6 ms at 30000 (1 ms at N = 1).
        let change = |services, worst: f64| ControlCell {
            variant: Variant::Ebpf,
            services,
            endpoints: 10,
            seconds: (0..100)
                .map(|i| if i >= 98 { worst } else { 1e-4 })
                .collect(),
        };
        results.endpoint_change = vec![change(1, 1e-3), change(LARGE, 6e-3)];
        results.sync_latency = vec![SyncCell {
            services: LARGE,
            traffic_ms: vec![2.0; 100],
            rss_mib: 120.0,
            ..SyncCell::default()
        }];
        let packet = |case, method, ns| PacketCell {
            hook: Hook::Xdp,
            conntrack: ConntrackFill::NinetyPercent,
            services: LARGE,
            case,
            method,
            ns: vec![ns],
        };
        results.per_packet = vec![
            packet(PacketCase::NoOp, Method::Repeat, 10.0),
            packet(PacketCase::NonService, Method::Repeat, 60.0),
            packet(PacketCase::NoOp, Method::Single, 50.0),
            packet(PacketCase::NewFlow, Method::Single, 650.0),
        ];
        let rows = rows(&results);
        let verdicts: Vec<Verdict> = rows.iter().map(|r| r.verdict).collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [
                NotMeasured,
                NotMeasured,
                NotMeasured,
                NotMet,
                Met,
                Met,
                NotMet,
                Met
            ],
            "{rows:?}"
        );
        assert_eq!(rows[3].measured, "p99 6.00 ms (in-process)");
        assert_eq!(rows[3].ratio, "1.20× of 5 ms, 6.00× of N = 1");
        assert_eq!(rows[6].ratio, "6.00× of the no-op");
        assert_eq!(rows[7].measured, "600 ns net (N = 30000)");
    }
}
