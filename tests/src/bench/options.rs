//! Options of `cargo xtask bench` (parsed by xtask and by the `lb-bench` binary it runs) and the
//! [`Plan`] they describe: sizes, repetitions, window lengths and loop bounds.

use std::{path::PathBuf, time::Duration};

/// Largest number of services: their VIPs are 198.19.0.1 and up, one /16.
pub const MAX_SERVICES: u32 = 60_000;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Workload {
    /// TCP connect / one request / close, in a loop: connections per second, connect latency.
    Connections,
    /// One kept-open TCP connection: stream throughput and request/response rate.
    Established,
    /// Cost per packet of the XDP and TC programs through BPF_PROG_TEST_RUN, next to a no-op.
    PerPacket,
    /// Programming N services from empty, applying one endpoint change, the agent's memory.
    ControlPlane,
    /// Kubernetes mode: time from an EndpointSlice change in the API server to the map updated.
    SyncLatency,
    /// Two nodes: new connections and requests/responses to a NodePort with a local and a
    /// remote (masqueraded) endpoint, with `--reply-path redirect` and `kernel`.
    ReplyPath,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 6] = [
        Workload::Connections,
        Workload::Established,
        Workload::PerPacket,
        Workload::ControlPlane,
        Workload::SyncLatency,
        Workload::ReplyPath,
    ];
}

/// How a client's packets to a service reach a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
#[cfg_attr(feature = "bench", derive(serde::Serialize))]
pub enum Variant {
    /// (a) This project: TC programs on the pod veths, maps written by the agent's reconciler.
    #[value(name = "ebpf")]
    Ebpf,
    /// (b) kube-proxy's iptables mode (nf_tables backend), loaded with `iptables-restore`.
    Iptables,
    /// (c) kube-proxy's nftables mode, loaded with `nft -f`.
    Nftables,
    /// (d) No translation: the client addresses the pod directly.
    Direct,
    /// (e) This project with `--socket-lb-pods`: the client pod's process is in a cgroup that
    /// carries the socket programs, so its sockets are connected to a backend at `connect()`;
    /// the TC programs stay on the pod veths (and pass the packets, addressed to a pod).
    EbpfSocket,
}

impl Variant {
    /// Every variant, in report order.
    pub const ALL: [Variant; 5] = [
        Variant::Ebpf,
        Variant::Iptables,
        Variant::Nftables,
        Variant::Direct,
        Variant::EbpfSocket,
    ];

    /// The variants that program translations of their own ((e) has (a)'s maps).
    pub const TRANSLATING: [Variant; 3] = [Variant::Ebpf, Variant::Iptables, Variant::Nftables];

    /// Column heading in reports.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Ebpf => "(a) eBPF TC",
            Variant::Iptables => "(b) iptables",
            Variant::Nftables => "(c) nftables",
            Variant::Direct => "(d) direct",
            Variant::EbpfSocket => "(e) eBPF socket",
        }
    }
}

/// `cargo xtask bench` options.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct BenchOptions {
    /// Short windows, one run and sizes 1 and 1000 (unless given): a quick look, not a result.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every measurement; tables show medians [default: 5, 1 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: Option<u32>,
    /// Numbers of services to program (3 endpoints each; 10 for the control plane)
    /// [default: 1,1000,10000,30000].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=MAX_SERVICES as i64))]
    pub sizes: Option<Vec<u32>>,
    /// Workloads to run [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub workloads: Option<Vec<Workload>>,
    /// Variants the traffic workloads run through [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub variants: Option<Vec<Variant>>,
    /// Directory for results.md, results.json and the plots.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
}

/// Default `--out`.
const DEFAULT_OUT: &str = "bench-results";

impl BenchOptions {
    /// The default output directory (relative).
    pub fn default_out() -> PathBuf {
        PathBuf::from(DEFAULT_OUT)
    }

    /// The same options as command-line arguments (xtask passes them on to `lb-bench`).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.quick {
            args.push("--quick".to_string());
        }
        if let Some(runs) = self.runs {
            args.extend(["--runs".to_string(), runs.to_string()]);
        }
        if let Some(sizes) = &self.sizes {
            let sizes: Vec<String> = sizes.iter().map(u32::to_string).collect();
            args.extend(["--sizes".to_string(), sizes.join(",")]);
        }
        if let Some(workloads) = &self.workloads {
            args.extend(["--workloads".to_string(), value_names(workloads).join(",")]);
        }
        if let Some(variants) = &self.variants {
            args.extend(["--variants".to_string(), value_names(variants).join(",")]);
        }
        args.extend(["--out".to_string(), self.out.display().to_string()]);
        args
    }

    /// What these options ask for.
    pub fn plan(&self) -> Plan {
        let base = if self.quick {
            Plan::quick()
        } else {
            Plan::full()
        };
        let mut workloads = self.workloads.clone().unwrap_or(base.workloads);
        workloads.sort();
        workloads.dedup();
        let mut sizes = self.sizes.clone().unwrap_or(base.sizes);
        sizes.sort();
        sizes.dedup();
        let mut variants = self.variants.clone().unwrap_or(base.variants);
        variants.sort();
        variants.dedup();
        Plan {
            runs: self.runs.unwrap_or(base.runs),
            sizes,
            workloads,
            variants,
            ..base
        }
    }
}

/// The command-line names of `values`.
fn value_names<T: clap::ValueEnum>(values: &[T]) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            v.to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// Everything a benchmark run does, with its bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Numbers of services; the measured service is always the last one programmed.
    pub sizes: Vec<u32>,
    /// Repetitions of every measurement.
    pub runs: u32,
    pub workloads: Vec<Workload>,
    /// Variants of the traffic workloads, in report order.
    pub variants: Vec<Variant>,
    /// Endpoints per service in the traffic and per-packet workloads.
    pub endpoints: u32,
    /// Endpoints per service in the control-plane workload.
    pub control_plane_endpoints: u32,
    /// Length of one traffic measurement (connection loop, stream, request/response).
    pub window: Duration,
    /// Upper bound of connections (or transactions) in one window.
    pub max_operations: u32,
    /// BPF_PROG_TEST_RUN repeat count for packets the program does not change.
    pub repeat: u32,
    /// Distinct frames run once each (repeat = 1) per measurement.
    pub single_frames: u32,
    /// A control-plane measurement stops repeating once its runs took this long (after at
    /// least one run), so the largest sizes stay within the total time budget.
    pub control_plane_budget: Duration,
    /// Services per `nft -f` transaction when the nftables variant programs everything.
    pub nft_services_per_transaction: u32,
    /// EndpointSlice changes timed by the sync-latency workload (each twice: to the services
    /// map, and to traffic following it).
    pub sync_changes: u32,
    /// One-endpoint changes (a) applies in-process per size, each a sample.
    pub endpoint_changes: u32,
    /// `GET /metrics` requests timed with conntrack full, per size of the sync-latency workload.
    pub scrapes: u32,
}

impl Plan {
    /// The full benchmark (20 to 25 minutes on a 2-core VM, most of it iptables-restore and
    /// nft -f at 30,000 services).
    pub fn full() -> Plan {
        Plan {
            sizes: vec![1, 1_000, 10_000, 30_000],
            runs: 5,
            workloads: Workload::ALL.to_vec(),
            variants: Variant::ALL.to_vec(),
            endpoints: 3,
            control_plane_endpoints: 10,
            window: Duration::from_secs(1),
            max_operations: 200_000,
            repeat: 100_000,
            single_frames: 1_000,
            control_plane_budget: Duration::from_secs(25),
            nft_services_per_transaction: 1_000,
            sync_changes: 200,
            endpoint_changes: 200,
            scrapes: 20,
        }
    }

    /// A quick look: short windows, one run, small sizes.
    pub fn quick() -> Plan {
        Plan {
            sizes: vec![1, 1_000],
            runs: 1,
            window: Duration::from_millis(300),
            repeat: 10_000,
            single_frames: 200,
            control_plane_budget: Duration::from_secs(5),
            sync_changes: 20,
            endpoint_changes: 100,
            scrapes: 5,
            ..Plan::full()
        }
    }

    /// The smoke test's plan: 10 services, one run, tiny counts; checks the harness, not speed.
    pub fn smoke() -> Plan {
        Plan {
            sizes: vec![10],
            runs: 1,
            window: Duration::from_millis(100),
            max_operations: 50,
            repeat: 100,
            single_frames: 20,
            control_plane_budget: Duration::ZERO,
            sync_changes: 3,
            endpoint_changes: 4,
            scrapes: 2,
            ..Plan::full()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: BenchOptions,
    }

    fn parse(args: &[&str]) -> BenchOptions {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .unwrap()
            .options
    }

    #[test]
    fn defaults_are_the_full_plan() {
        let plan = parse(&[]).plan();
        assert_eq!(plan, Plan::full());
        assert_eq!(plan.sizes, [1, 1_000, 10_000, 30_000]);
        assert_eq!(plan.runs, 5);
    }

    #[test]
    fn options_override_the_plan_and_round_trip_as_arguments() {
        let options = parse(&[
            "--quick",
            "--runs",
            "3",
            "--sizes",
            "1000,1,1000",
            "--workloads",
            "per-packet,connections",
            "--variants",
            "ebpf-socket,ebpf,direct",
            "--out",
            "/tmp/x",
        ]);
        let plan = options.plan();
        assert_eq!(plan.runs, 3);
        assert_eq!(plan.sizes, [1, 1_000]);
        assert_eq!(plan.workloads, [Workload::Connections, Workload::PerPacket]);
        assert_eq!(
            plan.variants,
            [Variant::Ebpf, Variant::Direct, Variant::EbpfSocket]
        );
        assert_eq!(plan.window, Plan::quick().window);
        let args = options.to_args();
        let reparsed = parse(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(reparsed.plan(), plan);
        assert_eq!(reparsed.out, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for args in [
            &["--runs", "0"][..],
            &["--sizes", "0"],
            &["--sizes", "60001"],
        ] {
            let argv = std::iter::once("bench").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }
}
