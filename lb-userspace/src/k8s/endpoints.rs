//! Which endpoints of a service port take new connections, per traffic policy, with
//! kube-proxy's rules (`CategorizeEndpoints`):
//! - Cluster policy: ready endpoints; when none is ready anywhere, the serving terminating
//!   ones (a rolling update's last pods keep answering while they drain);
//! - Local policy: this node's ready endpoints; when it has none, its serving terminating ones.
//!
//! Ready means `conditions.ready` true or unset; serving true or unset; terminating only when
//! set true. An endpoint is local when its `nodeName` is this node's name (kube-proxy's rule;
//! without a `nodeName` it is not).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

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
    pub fn select(port: &PortDef, slices: &[&SliceDef], node_name: &str) -> PortEndpoints {
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
                    .merge(def, node_name);
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
        let with_fallback = |local_only: bool| {
            let ready = pick(&|c| c.ready && (c.local || !local_only));
            if !ready.is_empty() {
                return ready;
            }
            pick(&|c| c.serving && c.terminating && (c.local || !local_only))
        };
        PortEndpoints {
            cluster: with_fallback(false),
            local: with_fallback(true),
        }
    }

    /// Whether any endpoint anywhere takes new connections. Without one, every path to the
    /// service rejects (kube-proxy's REJECT), whatever the traffic policies.
    pub fn any_usable(&self) -> bool {
        !self.cluster.is_empty()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Conditions {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

impl Conditions {
    fn merge(&mut self, def: &EndpointDef, node_name: &str) {
        self.ready |= def.ready;
        self.serving |= def.serving;
        self.terminating |= def.terminating;
        self.local |= def.node_name.as_deref() == Some(node_name);
    }
}
