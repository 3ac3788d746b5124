//! What each of an agent's programs costs per run under real traffic, as the kernel counts it:
//! BPF_ENABLE_STATS turns on every program's `run_time_ns` / `run_cnt` while its fd is held
//! (the machine-wide sysctl `kernel.bpf_stats_enabled` is left alone), and a window's cost is
//! the difference of the two before and after it. `BPF_PROG_TEST_RUN` cannot do this for the
//! reply path: it does not execute redirects.
//!
//! The programs are found through the agent's pinned links (`<bpffs dir>/links/<iface>-<hook>`):
//! each link names the program attached. A program attached to several interfaces (TC egress,
//! or TC ingress with several pods) is counted once, over all of them. The traffic workloads'
//! in-process data path names its TC program itself, and its `connect4` program is the one
//! loaded under that name that uses the data path's maps.

use std::{collections::BTreeMap, os::fd::OwnedFd, path::Path};

use aya::programs::{links::PinnedLink, loaded_programs};
use lb_common::program_names::SOCK_CONNECT4;
use lb_userspace::{
    datapath::link_pin::{Hook, LinkPin},
    Datapath,
};
use serde::Serialize;

use crate::bench::error::{io_context, BenchError, Result};

/// What a program does on the node, which names its column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// XDP on the external interface.
    Xdp,
    /// `lb_tc_xdp_handoff` on the external interface's TC ingress (redirect path only).
    XdpHandoff,
    /// TC ingress on the pod-facing interfaces.
    TcIngress,
    /// TC egress on the pod-facing and the external interfaces.
    TcEgress,
    /// cgroup `connect4` of socket-level translation (the one socket program a TCP client's
    /// `connect()` runs).
    SockConnect,
}

impl Role {
    /// The programs a node's links name, in report order.
    pub const LINKED: [Role; 4] = [Role::Xdp, Role::XdpHandoff, Role::TcIngress, Role::TcEgress];

    /// The role of the link pinned as `pin` on a node whose XDP interface is `xdp_iface`.
    fn of(pin: &LinkPin, xdp_iface: &str) -> Role {
        match pin.hook {
            Hook::Xdp => Role::Xdp,
            Hook::Tc if pin.iface == xdp_iface => Role::XdpHandoff,
            Hook::Tc => Role::TcIngress,
            Hook::TcEgress => Role::TcEgress,
        }
    }
}

/// Run-time statistics on for as long as this is held.
pub struct StatsEnabled {
    _fd: OwnedFd,
}

impl StatsEnabled {
    pub fn new() -> Result<StatsEnabled> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map(|fd| StatsEnabled { _fd: fd })
            .map_err(|e| BenchError::Check(format!("BPF_ENABLE_STATS: {e}")))
    }
}

/// One program's runs in a window and the kernel's time for them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ProgramCost {
    pub role: Role,
    pub runs: u64,
    /// Nanoseconds per run; `None` when it did not run.
    pub ns_per_run: Option<f64>,
}

/// The programs of one agent, by role.
pub struct AgentPrograms {
    ids: BTreeMap<Role, u32>,
}

impl AgentPrograms {
    /// The programs linked under `bpffs_dir/links/` on a node whose XDP interface is
    /// `xdp_iface`.
    pub fn pinned(bpffs_dir: &Path, xdp_iface: &str) -> Result<AgentPrograms> {
        let links = bpffs_dir.join("links");
        let context = format!("listing {}", links.display());
        let mut ids = BTreeMap::new();
        for entry in std::fs::read_dir(&links).map_err(io_context(context.clone()))? {
            let path = entry.map_err(io_context(context.clone()))?.path();
            let Some(pin) = path
                .file_name()
                .and_then(|n| LinkPin::parse(&n.to_string_lossy()))
            else {
                continue;
            };
            let link = PinnedLink::from_pin(&path)
                .and_then(|link| aya::programs::links::FdLink::from(link).info())
                .map_err(|e| BenchError::Check(format!("reading {}: {e}", path.display())))?;
            let role = Role::of(&pin, xdp_iface);
            if let Some(other) = ids.insert(role, link.program_id()) {
                if other != link.program_id() {
                    return Err(BenchError::Check(format!(
                        "two {role:?} programs under {} ({other} and {})",
                        links.display(),
                        link.program_id()
                    )));
                }
            }
        }
        Ok(AgentPrograms { ids })
    }

    /// The programs of an in-process data path that the traffic workloads run: TC ingress
    /// (attached to the pod veths) and, with `sockets`, `connect4`. The latter is found among
    /// the loaded programs by its name and by using this data path's maps.
    pub fn in_process(datapath: &Datapath, sockets: bool) -> Result<AgentPrograms> {
        let program_error = |context: &str| {
            let context = context.to_string();
            move |source| BenchError::Program { context, source }
        };
        let tc = datapath
            .tc_program()
            .info()
            .map_err(program_error("reading the TC program's info"))?;
        let mut ids = BTreeMap::from([(Role::TcIngress, tc.id())]);
        if !sockets {
            return Ok(AgentPrograms { ids });
        }
        let maps = tc
            .map_ids()
            .map_err(program_error("reading the TC program's maps"))?
            .unwrap_or_default();
        for info in loaded_programs() {
            let info = info.map_err(program_error("listing the loaded programs"))?;
            // The kernel keeps 15 bytes of a program's name.
            let named = info
                .name_as_str()
                .is_some_and(|name| !name.is_empty() && SOCK_CONNECT4.starts_with(name));
            if !named {
                continue;
            }
            let its_maps = info
                .map_ids()
                .map_err(program_error("reading a program's maps"))?
                .unwrap_or_default();
            if its_maps.iter().any(|id| maps.contains(id)) {
                ids.insert(Role::SockConnect, info.id());
            }
        }
        if !ids.contains_key(&Role::SockConnect) {
            return Err(BenchError::Check(format!(
                "no {SOCK_CONNECT4} program using the data path's maps is loaded"
            )));
        }
        Ok(AgentPrograms { ids })
    }

    /// Runs `window` with run-time statistics on; returns its result and what each program
    /// cost meanwhile.
    pub fn measure<T>(&self, window: impl FnOnce() -> Result<T>) -> Result<(T, Vec<ProgramCost>)> {
        let stats = StatsEnabled::new()?;
        let before = self.counters()?;
        let result = window()?;
        let costs = before.costs_until(&self.counters()?);
        drop(stats);
        Ok((result, costs))
    }

    /// Every program's (run time in ns, run count) now.
    pub fn counters(&self) -> Result<Counters> {
        let mut counters = BTreeMap::new();
        for info in loaded_programs() {
            let info = info.map_err(|source| BenchError::Program {
                context: "listing the loaded programs".to_string(),
                source,
            })?;
            if let Some((&role, _)) = self.ids.iter().find(|(_, &id)| id == info.id()) {
                let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                counters.insert(role, (ns, info.run_count()));
            }
        }
        if counters.len() != self.ids.len() {
            return Err(BenchError::Check(format!(
                "programs {:?} are no longer loaded",
                self.ids
            )));
        }
        Ok(Counters(counters))
    }
}

/// Run time (ns) and run count of each program at one moment.
pub struct Counters(BTreeMap<Role, (u64, u64)>);

impl Counters {
    /// What each program cost between `self` and `later`, in [`Role`] order.
    pub fn costs_until(&self, later: &Counters) -> Vec<ProgramCost> {
        self.0
            .iter()
            .map(|(&role, &(ns, runs))| {
                let (later_ns, later_runs) = later.0.get(&role).copied().unwrap_or((ns, runs));
                let runs = later_runs.saturating_sub(runs);
                let ns = later_ns.saturating_sub(ns);
                ProgramCost {
                    role,
                    runs,
                    ns_per_run: (runs > 0).then(|| ns as f64 / runs as f64),
                }
            })
            .collect()
    }
}
