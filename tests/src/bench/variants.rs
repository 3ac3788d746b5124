//! The four ways traffic reaches the target pod, and programming a [`ServiceSet`] into each
//! inside a node namespace.

use lb_userspace::{Capacities, Datapath, Reconciler};
use serde::Serialize;

use super::{
    error::{BenchError, Result},
    exec,
    kube_proxy_rules::{iptables_restore, nft_sync},
    services::ServiceSet,
};
use crate::topology::Topology;

/// How a client's packets to a service reach a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Variant {
    /// (a) This project: TC programs on the pod veths, maps written by the agent's reconciler.
    Ebpf,
    /// (b) kube-proxy's iptables mode (nf_tables backend), loaded with `iptables-restore`.
    Iptables,
    /// (c) kube-proxy's nftables mode, loaded with `nft -f`.
    Nftables,
    /// (d) No translation: the client addresses the pod directly.
    Direct,
}

impl Variant {
    /// Every variant, in report order.
    pub const ALL: [Variant; 4] = [
        Variant::Ebpf,
        Variant::Iptables,
        Variant::Nftables,
        Variant::Direct,
    ];

    /// The variants that translate (and so have something to program).
    pub const TRANSLATING: [Variant; 3] = [Variant::Ebpf, Variant::Iptables, Variant::Nftables];

    /// Column heading in reports.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Ebpf => "(a) eBPF",
            Variant::Iptables => "(b) iptables",
            Variant::Nftables => "(c) nftables",
            Variant::Direct => "(d) direct",
        }
    }
}

/// What keeps a variant's translation in place. Rules live in the node namespace and go
/// with it; the eBPF data path is detached and unloaded when this is dropped.
pub enum Programmed {
    Ebpf(Box<Datapath>),
    /// Rules in the node namespace, or nothing for [`Variant::Direct`].
    InNamespace,
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
        Variant::Ebpf => {
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
            Ok(Programmed::Ebpf(datapath))
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
