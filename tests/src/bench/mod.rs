//! `cargo xtask bench`: the same workloads through (a) this project's eBPF data path, (b)
//! kube-proxy-style iptables rules, (c) kube-proxy-style nftables rules and (d) no translation,
//! with 1 to 30,000 services programmed; results as tables, plots and raw JSON.
//!
//! - [`options`]: the command-line options and the [`options::Plan`] they describe (always
//!   built, so xtask can parse them); everything else needs the `bench` feature.
//! - [`services`]: the N services; [`kube_proxy_rules`]: the baselines' rules for them;
//!   [`variants`]: programming them for each variant.
//! - [`workloads`]: traffic through a node namespace ([`server`], [`client`]), per-packet cost
//!   through BPF_PROG_TEST_RUN ([`test_run`]) and under real traffic ([`program_stats`]), the
//!   control plane.
//! - [`report`] and [`plot`]: `results.md`, `results.json` and the PNG plots; [`targets`]: its
//!   table of the target rows.
//!
//! Everything runs in namespaces the benchmark creates, on 198.18.0.0/15; every namespace,
//! rule set, program and process is removed by a guard, also on failure or Ctrl-C.

pub mod options;

/// The font the plots use, from the Debian package [`PLOT_FONT_PACKAGE`].
pub const PLOT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The Debian package that has [`PLOT_FONT`] (`cargo xtask bench` installs it).
pub const PLOT_FONT_PACKAGE: &str = "fonts-dejavu-core";

#[cfg(feature = "bench")]
pub mod client;
#[cfg(feature = "bench")]
pub mod conntrack_fill;
#[cfg(feature = "bench")]
pub mod error;
#[cfg(feature = "bench")]
pub mod exec;
#[cfg(feature = "bench")]
pub mod interrupt;
#[cfg(feature = "bench")]
pub mod kube_proxy_rules;
#[cfg(feature = "bench")]
pub mod machine;
#[cfg(feature = "bench")]
pub mod plot;
#[cfg(feature = "bench")]
pub mod program_stats;
#[cfg(feature = "bench")]
pub mod report;
#[cfg(feature = "bench")]
pub mod results;
#[cfg(feature = "bench")]
pub mod server;
#[cfg(feature = "bench")]
pub mod services;
#[cfg(feature = "bench")]
pub mod stats;
#[cfg(feature = "bench")]
pub mod targets;
#[cfg(feature = "bench")]
pub mod test_run;
#[cfg(feature = "bench")]
pub mod variants;
#[cfg(feature = "bench")]
pub mod workloads;

#[cfg(feature = "bench")]
pub use run::{progress, run};

#[cfg(feature = "bench")]
mod run {
    use std::{sync::OnceLock, time::Instant};

    use super::{
        error::Result,
        machine::Machine,
        options::{Plan, Workload},
        results::{PlanRecord, Results},
        workloads::{agent_memory, control_plane, per_packet, reply_path, sync_latency, traffic},
    };

    /// Prints a progress line with the time since the first one.
    pub fn progress(message: &str) {
        static STARTED: OnceLock<Instant> = OnceLock::new();
        let seconds = STARTED.get_or_init(Instant::now).elapsed().as_secs();
        eprintln!("bench [{:02}:{:02}] {message}", seconds / 60, seconds % 60);
    }

    /// Runs `plan`; `command` is recorded as what produced the results.
    pub fn run(plan: &Plan, command: &str) -> Result<Results> {
        progress(&format!("plan: {plan:?}"));
        let mut results = Results {
            machine: Machine::detect(),
            command: command.to_string(),
            plan: record(plan),
            ..Results::default()
        };
        let wants = |w| plan.workloads.contains(&w);
        if wants(Workload::PerPacket) {
            results.per_packet = per_packet::run(plan)?;
        }
        let live = traffic::Traffic {
            connections: wants(Workload::Connections),
            established: wants(Workload::Established),
        };
        if live.connections || live.established {
            for &services in &plan.sizes {
                for &variant in &plan.variants {
                    progress(&format!(
                        "traffic, {} with {services} services",
                        variant.label()
                    ));
                    results
                        .traffic
                        .push(traffic::run_cell(plan, live, variant, services)?);
                }
            }
        }
        if wants(Workload::ControlPlane) {
            (results.programming, results.endpoint_change) = control_plane::run(plan)?;
            results.agent = agent_memory::run(plan)?;
        }
        if wants(Workload::SyncLatency) {
            results.sync_latency = sync_latency::run(plan)?;
        }
        if wants(Workload::ReplyPath) {
            results.reply_path = reply_path::run(plan)?;
        }
        Ok(results)
    }

    fn record(plan: &Plan) -> PlanRecord {
        PlanRecord {
            sizes: plan.sizes.clone(),
            variants: plan.variants.clone(),
            runs: plan.runs,
            endpoints: plan.endpoints,
            control_plane_endpoints: plan.control_plane_endpoints,
            window_ms: plan.window.as_millis(),
            max_operations: plan.max_operations,
            repeat: plan.repeat,
            single_frames: plan.single_frames,
            control_plane_budget_s: plan.control_plane_budget.as_secs(),
            nft_services_per_transaction: plan.nft_services_per_transaction,
            sync_changes: plan.sync_changes,
            endpoint_changes: plan.endpoint_changes,
            scrapes: plan.scrapes,
        }
    }
}
