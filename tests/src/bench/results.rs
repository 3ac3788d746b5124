//! Everything one benchmark run measured, as saved to `results.json` and turned into tables and
//! plots. One cell per (variant or case, size), each with one entry per run.

use std::net::SocketAddrV4;

use serde::Serialize;

pub use crate::bench::workloads::{reply_path::ReplyPathCell, sync_latency::SyncCell};

use super::{
    client::{ConnectionRun, RequestResponseRun, StreamRun, Workload as ClientWorkload},
    machine::Machine,
    program_stats::ProgramCost,
    test_run::Hook,
    variants::Variant,
};

/// The results of a benchmark run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub machine: Machine,
    /// The command that produced them.
    pub command: String,
    pub plan: PlanRecord,
    pub traffic: Vec<TrafficCell>,
    pub per_packet: Vec<PacketCell>,
    pub programming: Vec<ControlCell>,
    pub endpoint_change: Vec<ControlCell>,
    pub agent: Vec<AgentCell>,
    /// Kubernetes-mode sync latency of EndpointSlice changes, and the agent's memory, per
    /// number of Services.
    pub sync_latency: Vec<SyncCell>,
    /// The reply paths' live traffic through a NodePort (two nodes).
    pub reply_path: Vec<ReplyPathCell>,
}

/// The plan's numbers, for the record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlanRecord {
    pub sizes: Vec<u32>,
    /// Variants of the traffic workloads.
    pub variants: Vec<Variant>,
    pub runs: u32,
    pub endpoints: u32,
    pub control_plane_endpoints: u32,
    pub window_ms: u128,
    pub max_operations: u32,
    pub repeat: u32,
    pub single_frames: u32,
    pub control_plane_budget_s: u64,
    pub nft_services_per_transaction: u32,
    pub sync_changes: u32,
    pub endpoint_changes: u32,
    pub scrapes: u32,
}

/// Traffic through one variant with N services programmed.
#[derive(Clone, Debug, Serialize)]
pub struct TrafficCell {
    pub variant: Variant,
    pub services: u32,
    /// Where the client sent its traffic (the target VIP, or a pod for the direct variant).
    pub target: SocketAddrV4,
    pub connections: Vec<ConnectionRun>,
    pub stream: Vec<StreamRun>,
    pub request_response: Vec<RequestResponseRun>,
    /// (a) and (e): one window per workload with run-time statistics on, and what the
    /// data path's programs cost per run in it.
    pub programs: Vec<WorkloadCosts>,
    /// Connections the backends accepted during the cell (warm-up included).
    pub backend_connections: u64,
}

/// The programs' cost per run during one window of a client workload.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadCosts {
    pub workload: ClientWorkload,
    pub costs: Vec<ProgramCost>,
}

/// Which packet a per-packet measurement runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PacketCase {
    /// The two-instruction no-op program (any frame).
    NoOp,
    /// A TCP packet to an address that is no service and has no conntrack entry.
    NonService,
    /// A data packet of an established flow (conntrack hit, destination rewritten).
    Established,
    /// A SYN to the target VIP (service lookup, backend choice, two conntrack inserts).
    NewFlow,
    /// A SYN from outside (XDP) to a load-balancer IP with one `loadBalancerSourceRanges`
    /// entry holding the source: a new flow plus the source range lookup.
    NewFlowOneRange,
    /// As [`PacketCase::NewFlowOneRange`], with 1000 ranges (999 not holding the source).
    NewFlowThousandRanges,
    /// [`PacketCase::NonService`] over IPv6.
    NonService6,
    /// [`PacketCase::Established`] over IPv6, to an IPv6 Service programmed next to the N.
    Established6,
    /// [`PacketCase::NewFlow`] over IPv6, to that Service.
    NewFlow6,
}

impl PacketCase {
    /// Name in reports.
    pub fn label(self) -> &'static str {
        match self {
            PacketCase::NoOp => "no-op",
            PacketCase::NonService => "non-service",
            PacketCase::Established => "established",
            PacketCase::NewFlow => "new flow",
            PacketCase::NewFlowOneRange => "new flow, 1 source range",
            PacketCase::NewFlowThousandRanges => "new flow, 1000 source ranges",
            PacketCase::NonService6 => "IPv6 non-service",
            PacketCase::Established6 => "IPv6 established",
            PacketCase::NewFlow6 => "IPv6 new flow",
        }
    }
}

/// How a per-packet number was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Method {
    /// One BPF_PROG_TEST_RUN with `repeat` iterations: the kernel's time per iteration.
    Repeat,
    /// BPF_PROG_TEST_RUN with repeat = 1 over distinct frames: the median of the kernel's times
    /// (includes the fixed per-run overhead of the kernel's timer).
    Single,
}

/// Conntrack occupancy during a per-packet measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ConntrackFill {
    /// Only the entries the measurement itself needs.
    Empty,
    /// 90% of the map's capacity pre-filled through the map API.
    NinetyPercent,
}

impl ConntrackFill {
    /// Name in reports.
    pub fn label(self) -> &'static str {
        match self {
            ConntrackFill::Empty => "empty",
            ConntrackFill::NinetyPercent => "90% full",
        }
    }
}

/// Per-packet cost of one case, in nanoseconds, one entry per run.
#[derive(Clone, Debug, Serialize)]
pub struct PacketCell {
    pub hook: Hook,
    pub conntrack: ConntrackFill,
    pub services: u32,
    pub case: PacketCase,
    pub method: Method,
    pub ns: Vec<f64>,
}

/// A control-plane operation's duration for one variant, in seconds, one entry per run.
#[derive(Clone, Debug, Serialize)]
pub struct ControlCell {
    pub variant: Variant,
    pub services: u32,
    pub endpoints: u32,
    pub seconds: Vec<f64>,
}

/// The real agent programming N services from a manifests directory.
#[derive(Clone, Debug, Serialize)]
pub struct AgentCell {
    pub services: u32,
    pub endpoints: u32,
    /// Distinct backends in the manifests (capped to the agent's default capacity).
    pub distinct_backends: u32,
    /// VmRSS after the ready line, in MiB.
    pub rss_mib: Vec<f64>,
    /// From start to the ready line, in seconds.
    pub ready_s: Vec<f64>,
}
