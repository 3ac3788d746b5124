//! The five ways traffic reaches the target pod, and programming a [`ServiceSet`] into each
//! inside a node namespace.

use std::fs;

use lb_common::NodeConfig;
use lb_userspace::{agent, Capacities, Datapath, Reconciler};

use super::{
    error::{io_context, map_context, BenchError, Result},
    exec,
    kube_proxy_rules::{iptables_restore, nft_sync},
    services::ServiceSet,
};
use crate::{cgroup::TestCgroup, netns::unique_prefix, topology::Topology};

pub use super::options::Variant;

/// What keeps a variant's translation in place. Rules live in the node namespace and go
/// with it; the eBPF data path is detached and unloaded when this is dropped, then the
/// socket programs' cgroup is removed.
pub enum Programmed {
    Ebpf {
        datapath: Box<Datapath>,
        /// (e): the cgroup the client's processes run in, with the socket programs.
        sockets: Option<TestCgroup>,
    },
    /// Rules in the node namespace, or nothing for [`Variant::Direct`].
    InNamespace,
}

impl Programmed {
    /// The cgroup the client's processes must run in, if any.
    pub fn client_cgroup(&self) -> Option<&TestCgroup> {
        match self {
            Programmed::Ebpf { sockets, .. } => sockets.as_ref(),
            Programmed::InNamespace => None,
        }
    }

    /// The eBPF data path; `None` for rules.
    pub fn datapath(&self) -> Option<&Datapath> {
        match self {
            Programmed::Ebpf { datapath, .. } => Some(datapath),
            Programmed::InNamespace => None,
        }
    }

    /// Flows the eBPF data path tracks in conntrack; `None` for rules.
    pub fn conntrack_entries(&mut self) -> Result<Option<usize>> {
        match self {
            Programmed::Ebpf { datapath, .. } => Ok(Some(datapath.maps().conntrack()?.len())),
            Programmed::InNamespace => Ok(None),
        }
    }
}

/// Map capacities that hold `services` (the defaults, raised where they would not).
pub fn capacities_for(services: &ServiceSet, endpoints_per_service: u32) -> Capacities {
    let defaults = Capacities::default();
    let slots = services.count() * endpoints_per_service.max(1);
    Capacities {
        // Every frontend has an entry per lookup scope.
        services: defaults.services.max(2 * services.count() + 16),
        backends: defaults.backends.max(services.distinct_endpoints() + 16),
        backend_slots: defaults.backend_slots.max(slots + 16),
        ..defaults
    }
}

/// Programs `services` for `variant` into `topology`'s node: the eBPF data path on every pod
/// veth, or the baseline's rules in the node namespace.
pub fn program(
    variant: Variant,
    topology: &Topology,
    services: &ServiceSet,
    endpoints_per_service: u32,
    nft_services_per_transaction: u32,
) -> Result<Programmed> {
    let node = topology.node();
    match variant {
        Variant::Ebpf | Variant::EbpfSocket => {
            let capacities = capacities_for(services, endpoints_per_service);
            let mut datapath = Box::new(Datapath::load(&capacities)?);
            let summary =
                Reconciler::new(&capacities).apply(&services.desired_state(), datapath.maps())?;
            if let Some(rejected) = summary.rejected.first() {
                return Err(BenchError::Check(format!(
                    "the reconciler rejected {} services, first: {rejected}",
                    summary.rejected.len()
                )));
            }
            let ifaces = topology.host_ifaces();
            node.run(|| {
                ifaces
                    .iter()
                    .try_for_each(|iface| datapath.attach_tc(iface))
            })??;
            let sockets = match variant {
                Variant::EbpfSocket => Some(attach_sockets(topology, &mut datapath)?),
                _ => None,
            };
            Ok(Programmed::Ebpf { datapath, sockets })
        }
        Variant::Iptables => {
            let rules = iptables_restore(&services.kube_services());
            exec::run_in(node, "iptables-restore", &[], &rules)?;
            Ok(Programmed::InNamespace)
        }
        Variant::Nftables => {
            let per_transaction = nft_services_per_transaction as usize;
            for transaction in nft_sync(&services.kube_services(), per_transaction) {
                exec::run_in(node, "nft", &["-f", "-"], &transaction)?;
            }
            Ok(Programmed::InNamespace)
        }
        Variant::Direct => Ok(Programmed::InNamespace),
    }
}

/// Attaches the socket programs to a new cgroup, for every network namespace's sockets (as
/// `lb-agent --socket-lb-pods`, the node's namespace named as the agent would name it).
fn attach_sockets(topology: &Topology, datapath: &mut Datapath) -> Result<TestCgroup> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_context("reading /proc/self/mountinfo"))?;
    let root = agent::cgroup2_root(&mountinfo)
        .ok_or_else(|| BenchError::Check("no cgroup v2 mount for (e)".into()))?;
    let cgroup = TestCgroup::create(&root, &unique_prefix())?;
    datapath.attach_sockets(cgroup.path())?;
    let node_netns = topology
        .node()
        .run(agent::netns_cookie)?
        .map_err(io_context("reading the node namespace's cookie"))?;
    let config = NodeConfig::default()
        .with_sock_netns(node_netns)
        .with_sock_all_netns(true);
    datapath
        .maps()
        .set_node_config(&config)
        .map_err(|e| map_context("writing LB_CONFIG")(e.source))?;
    Ok(cgroup)
}
