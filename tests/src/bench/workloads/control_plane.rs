//! Workload 4a: programming N services x 10 endpoints from empty, then applying one endpoint
//! change of the target service, for the maps (the agent's reconciler, in-process, told which
//! frontend changed as the API source tells it), iptables
//! (kube-proxy's full `iptables-restore` of the nat table, also for a change) and nftables
//! (kube-proxy's transactions: the full sync, then one small incremental transaction).
//!
//! Inputs (desired states, rule texts) are built before the clock starts; the times cover the
//! map writes, or the commands from spawn to exit. Large sizes stop repeating once their runs
//! took [`Plan::control_plane_budget`], except (a)'s endpoint changes: each of
//! [`Plan::endpoint_changes`] changes (alternating the endpoint in and out) is a sample, for
//! their p50 and p99.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use lb_userspace::{
    model::{Changed, DesiredState},
    Datapath, Reconciler,
};
use std::sync::Arc;

use crate::{
    bench::{
        error::{BenchError, Result},
        exec, interrupt,
        kube_proxy_rules::{iptables_restore, nft_endpoint_change, nft_sync},
        options::Plan,
        results::ControlCell,
        services::{ServiceSet, TARGET_PORT},
        variants::{capacities_for, Variant},
    },
    netns::{unique_prefix, NetNs},
};

/// The endpoint the change swaps in for the target's first endpoint (and back).
const SWAPPED_IN: SocketAddrV4 =
    SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 127, 1), TARGET_PORT);

/// Programming and endpoint-change cells for every size and translating variant.
pub fn run(plan: &Plan) -> Result<(Vec<ControlCell>, Vec<ControlCell>)> {
    let (mut programming, mut changes) = (Vec::new(), Vec::new());
    for &services in &plan.sizes {
        let endpoints = plan.control_plane_endpoints;
        let set = ServiceSet::new(services, endpoints);
        let mut target = set.endpoints(set.target_index());
        target[0] = SWAPPED_IN;
        let changed = set.clone().with_target(target);
        for variant in Variant::TRANSLATING {
            crate::bench::progress(&format!(
                "control plane, {} with {services} services x {endpoints} endpoints",
                variant.label()
            ));
            let mut sync = Sync::prepare(variant, &set, &changed, plan);
            let cell = |seconds| ControlCell {
                variant,
                services,
                endpoints,
                seconds,
            };
            programming.push(cell(within_budget(plan, |_| sync.program_all())?));
            let samples = match variant {
                // Microseconds to milliseconds each: every change is a sample, for p50 and p99.
                Variant::Ebpf => (0..plan.endpoint_changes)
                    .map(|run| {
                        interrupt::check()?;
                        sync.change(run)
                    })
                    .collect::<Result<Vec<f64>>>()?,
                _ => within_budget(plan, |run| sync.change(run))?,
            };
            changes.push(cell(samples));
        }
    }
    Ok((programming, changes))
}

/// Runs `once` up to `plan.runs` times, stopping early (after one run at least) once the runs
/// took `plan.control_plane_budget`.
fn within_budget(plan: &Plan, mut once: impl FnMut(u32) -> Result<f64>) -> Result<Vec<f64>> {
    let started = Instant::now();
    let mut samples = Vec::new();
    for run in 0..plan.runs {
        interrupt::check()?;
        samples.push(once(run)?);
        if started.elapsed() >= plan.control_plane_budget {
            break;
        }
    }
    Ok(samples)
}

/// One variant's prepared inputs and its current state (the last full programming).
enum Sync {
    Maps {
        services: ServiceSet,
        states: [DesiredState; 2],
        /// The frontends that differ between the two states, as the API source names them.
        changed: Changed,
        current: Option<(Box<Datapath>, Box<Reconciler>)>,
    },
    Iptables {
        texts: [String; 2],
        netns: Option<NetNs>,
    },
    Nftables {
        transactions: Vec<String>,
        /// The change and its reverse.
        changes: [String; 2],
        netns: Option<NetNs>,
    },
}

impl Sync {
    /// Builds the inputs for programming `set` and for switching between `set` and `changed`.
    fn prepare(variant: Variant, set: &ServiceSet, changed: &ServiceSet, plan: &Plan) -> Sync {
        match variant {
            // (d) programs nothing and (e) (a)'s maps; they are never passed here.
            Variant::Ebpf | Variant::Direct | Variant::EbpfSocket => {
                let states = sharing_unchanged(set.desired_state(), changed.desired_state());
                let differing = states[1]
                    .services
                    .iter()
                    .filter(|(frontend, service)| {
                        states[0].services.get(*frontend) != Some(*service)
                    })
                    .map(|(frontend, _)| *frontend)
                    .collect();
                Sync::Maps {
                    services: set.clone(),
                    states,
                    changed: Changed::Frontends(differing),
                    current: None,
                }
            }
            Variant::Iptables => Sync::Iptables {
                texts: [
                    iptables_restore(&set.kube_services()),
                    iptables_restore(&changed.kube_services()),
                ],
                netns: None,
            },
            Variant::Nftables => {
                let index = set.target_index();
                let services = set.kube_services();
                let before = &services[index as usize];
                let after = &changed.kube_services()[index as usize];
                Sync::Nftables {
                    transactions: nft_sync(&services, plan.nft_services_per_transaction as usize),
                    changes: [
                        nft_endpoint_change(index as usize, before, after),
                        nft_endpoint_change(index as usize, after, before),
                    ],
                    netns: None,
                }
            }
        }
    }

    /// Programs everything into fresh maps or a fresh namespace; returns the seconds it took.
    fn program_all(&mut self) -> Result<f64> {
        match self {
            Sync::Maps {
                services,
                states,
                current,
                ..
            } => {
                *current = None;
                let capacities = capacities_for(services, services.endpoints(0).len() as u32);
                let mut datapath = Box::new(Datapath::load(&capacities)?);
                let mut reconciler = Box::new(Reconciler::new(&capacities));
                let started = Instant::now();
                let summary = reconciler.apply(&states[0], datapath.maps())?;
                let elapsed = started.elapsed();
                if !summary.rejected.is_empty() {
                    return Err(BenchError::Check(format!(
                        "{} services did not fit the maps",
                        summary.rejected.len()
                    )));
                }
                *current = Some((datapath, reconciler));
                Ok(elapsed.as_secs_f64())
            }
            Sync::Iptables { texts, netns } => {
                *netns = None;
                let fresh = netns.insert(control_plane_netns()?);
                Ok(exec::run_in(fresh, "iptables-restore", &[], &texts[0])?.as_secs_f64())
            }
            Sync::Nftables {
                transactions,
                netns,
                ..
            } => {
                *netns = None;
                let fresh = netns.insert(control_plane_netns()?);
                let mut total = Duration::ZERO;
                for transaction in transactions.iter() {
                    total += exec::run_in(fresh, "nft", &["-f", "-"], transaction)?;
                }
                Ok(total.as_secs_f64())
            }
        }
    }

    /// Applies change number `run` (even runs swap the endpoint in, odd runs swap it back);
    /// returns the seconds it took.
    fn change(&mut self, run: u32) -> Result<f64> {
        let step = (run % 2) as usize;
        let missing = || BenchError::Check("a change before programming".into());
        match self {
            Sync::Maps {
                states,
                changed,
                current,
                ..
            } => {
                let (datapath, reconciler) = current.as_mut().ok_or_else(missing)?;
                let desired = &states[1 - step];
                let started = Instant::now();
                let summary = reconciler.apply_changes(desired, changed, datapath.maps())?;
                let elapsed = started.elapsed();
                if !summary.wrote_anything() {
                    return Err(BenchError::Check("the change wrote nothing".into()));
                }
                Ok(elapsed.as_secs_f64())
            }
            Sync::Iptables { texts, netns } => {
                let netns = netns.as_ref().ok_or_else(missing)?;
                let text = &texts[1 - step];
                Ok(exec::run_in(netns, "iptables-restore", &[], text)?.as_secs_f64())
            }
            Sync::Nftables { changes, netns, .. } => {
                let netns = netns.as_ref().ok_or_else(missing)?;
                Ok(exec::run_in(netns, "nft", &["-f", "-"], &changes[step])?.as_secs_f64())
            }
        }
    }
}

/// `before` and `after`, where `after` shares every service that did not change with
/// `before`, as the API source's successive states do.
fn sharing_unchanged(before: DesiredState, after: DesiredState) -> [DesiredState; 2] {
    let services = after
        .services
        .into_iter()
        .map(|(frontend, service)| match before.services.get(&frontend) {
            Some(old) if *old == service => (frontend, Arc::clone(old)),
            _ => (frontend, service),
        })
        .collect();
    [
        before,
        DesiredState {
            services,
            ..DesiredState::default()
        },
    ]
}

fn control_plane_netns() -> Result<NetNs> {
    Ok(NetNs::create(&format!("{}-cp", unique_prefix()))?)
}
