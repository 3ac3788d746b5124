//! Which endpoints of a service port take new connections, per traffic policy, with
//! kube-proxy's rules (`CategorizeEndpoints`):
//! - Cluster policy: ready endpoints; when none is ready anywhere, the serving terminating
//!   ones (a rolling update's last pods keep answering while they drain);
//! - Local policy: this node's ready endpoints; when it has none, its serving terminating ones.
//!
//! - Topology (Cluster policy only; Local already keeps to this node): the ready endpoints
//!   are narrowed by the hints the EndpointSlice controller writes for
//!   `trafficDistribution`: to those hinted `forNodes` this node when every ready endpoint
//!   has node hints and one names this node; else to those hinted `forZones` this node's
//!   zone when every ready endpoint has zone hints and one names the zone; else all of them
//!   (`topologyModeFromHints`). The terminating fallback ignores hints, as kube-proxy's does.
//!
//! Ready means `conditions.ready` true or unset; serving true or unset; terminating only when
//! set true. An endpoint is local when its `nodeName` is this node's name (kube-proxy's rule;
//! without a `nodeName` it is not).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::node::NodeDef;
use super::service::PortDef;
use super::slice::{EndpointDef, SliceDef};
use crate::model::Endpoint;

/// The endpoints of one service port, per traffic policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortEndpoints {
    /// For `Cluster` traffic policies.
    pub cluster: BTreeSet<Endpoint>,
    /// For `Local` traffic policies: only endpoints on this node.
    pub local: BTreeSet<Endpoint>,
}

impl PortEndpoints {
    /// The endpoints of `port` in `slices` (of its service): each slice maps the service
    /// port to a number through the slice port of the same name and protocol, so a named
    /// `targetPort` resolves per endpoint.
    pub fn select(port: &PortDef, slices: &[&SliceDef], node: &NodeDef) -> PortEndpoints {
        // By address and port: locality comes from the conditions, merged over slices.
        let mut conditions: BTreeMap<(IpAddr, u16), Conditions> = BTreeMap::new();
        for slice in slices {
            let Some(slice_port) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
            else {
                continue;
            };
            for def in &slice.endpoints {
                // One endpoint listed by two slices (while it moves between them) counts
                // with the best conditions either gives it.
                conditions
                    .entry((def.addr, slice_port.port))
                    .or_default()
                    .merge(def, &node.name);
            }
        }
        let pick = |keep: &dyn Fn(&Conditions) -> bool| -> BTreeSet<Endpoint> {
            conditions
                .iter()
                .filter(|(_, c)| keep(c))
                .map(|(&(addr, port), c)| Endpoint {
                    addr,
                    port,
                    local: c.local,
                })
                .collect()
        };
        // The ready endpoints `ready_in` keeps; without one, the serving terminating ones
        // `terminating_in` keeps.
        let with_fallback =
            |ready_in: &dyn Fn(&Conditions) -> bool,
             terminating_in: &dyn Fn(&Conditions) -> bool| {
                let ready = pick(&|c| c.ready && ready_in(c));
                if !ready.is_empty() {
                    return ready;
                }
                pick(&|c| c.serving && c.terminating && terminating_in(c))
            };
        let topology = Topology::from_hints(conditions.values(), node);
        PortEndpoints {
            cluster: with_fallback(&|c| topology.admits(c, node), &|_| true),
            local: with_fallback(&|c| c.local, &|c| c.local),
        }
    }

    /// Whether any endpoint anywhere takes new connections. Without one, every path to the
    /// service rejects (kube-proxy's REJECT), whatever the traffic policies.
    pub fn any_usable(&self) -> bool {
        !self.cluster.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
struct Conditions {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    zone_hints: BTreeSet<String>,
    node_hints: BTreeSet<String>,
}

impl Conditions {
    fn merge(&mut self, def: &EndpointDef, node_name: &str) {
        self.ready |= def.ready;
        self.serving |= def.serving;
        self.terminating |= def.terminating;
        self.local |= def.node_name.as_deref() == Some(node_name);
        self.zone_hints.extend(def.zone_hints().iter().cloned());
        self.node_hints.extend(def.node_hints().iter().cloned());
    }
}

/// Which hints narrow a port's Cluster-policy endpoints on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// No hints apply: every endpoint.
    All,
    /// Endpoints hinted for this node.
    SameNode,
    /// Endpoints hinted for this node's zone.
    SameZone,
}

impl Topology {
    /// kube-proxy's `topologyModeFromHints`: node hints first, then zone hints, each only
    /// when every ready endpoint has such hints and at least one names this node (zone).
    fn from_hints<'a>(
        endpoints: impl Iterator<Item = &'a Conditions> + Clone,
        node: &NodeDef,
    ) -> Self {
        let ready = endpoints.filter(|c| c.ready);
        let fits = |hints: fn(&Conditions) -> &BTreeSet<String>, want: Option<&str>| {
            ready.clone().all(|c| !hints(c).is_empty())
                && want.is_some_and(|want| ready.clone().any(|c| hints(c).contains(want)))
        };
        if fits(|c| &c.node_hints, Some(&node.name)) {
            Topology::SameNode
        } else if fits(|c| &c.zone_hints, node.zone.as_deref()) {
            Topology::SameZone
        } else {
            Topology::All
        }
    }

    fn admits(self, endpoint: &Conditions, node: &NodeDef) -> bool {
        match self {
            Topology::All => true,
            Topology::SameNode => endpoint.node_hints.contains(&node.name),
            Topology::SameZone => node
                .zone
                .as_ref()
                .is_some_and(|zone| endpoint.zone_hints.contains(zone)),
        }
    }
}
