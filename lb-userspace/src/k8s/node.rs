//! This node: its name (which endpoints are local), its zone (which topology hints apply),
//! its addresses (where node ports and health check node ports are served) and whether load
//! balancers should still send it traffic.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::fields::parse_ip;
use crate::objects::FieldError;

/// The Node label naming its zone, matched against endpoints' `hints.forZones`.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Why load balancers should stop sending traffic to `node`, kube-proxy's rule: it is being
/// deleted (`deletionTimestamp` set) or carries [`TO_BE_DELETED_TAINT`]; `None` while it is
/// eligible. The health port's `/healthz` fails meanwhile, so cloud load balancers drain it.
pub fn not_eligible_because(node: &Node) -> Option<&'static str> {
    if node.metadata.deletion_timestamp.is_some() {
        return Some("it is being deleted");
    }
    let taints = node.spec.as_ref().and_then(|spec| spec.taints.as_deref());
    taints
        .unwrap_or_default()
        .iter()
        .any(|taint| taint.key == TO_BE_DELETED_TAINT)
        .then_some("it is tainted ToBeDeletedByClusterAutoscaler")
}

/// The node the agent runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeDef {
    /// Matched against endpoints' `nodeName`.
    pub name: String,
    /// Addresses that serve node ports.
    pub addresses: Vec<IpAddr>,
    /// The [`ZONE_LABEL`] label; `None` when unset or empty.
    pub zone: Option<String>,
    /// Where health check node ports listen (`0.0.0.0`: every address), from
    /// [`super::NodePortAddresses::health_check_addresses`].
    pub health_check_addrs: Arc<[IpAddr]>,
}

impl NodeDef {
    /// The node's `InternalIP` and `ExternalIP` addresses from `status.addresses`, and its
    /// zone label.
    pub fn from_k8s(node: &Node) -> Result<NodeDef, FieldError> {
        let name = node
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| FieldError::new("metadata.name", "missing"))?;
        let listed = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        let mut addresses = Vec::new();
        for (i, address) in listed.iter().enumerate() {
            if matches!(address.type_.as_str(), "InternalIP" | "ExternalIP") {
                let addr = parse_ip(&address.address, &format!("status.addresses[{i}].address"))?;
                if !addresses.contains(&addr) {
                    addresses.push(addr);
                }
            }
        }
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(ZONE_LABEL))
            .filter(|zone| !zone.is_empty())
            .cloned();
        Ok(NodeDef {
            name,
            addresses,
            zone,
            health_check_addrs: Arc::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Node;

    use super::not_eligible_because;

    fn node(yaml: &str) -> Node {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_node_is_eligible_unless_deleted_or_tainted_for_deletion() {
        let eligible = |yaml: &str| not_eligible_because(&node(yaml)).is_none();
        assert!(eligible("metadata: {name: a}"));
        assert!(eligible(
            "metadata: {name: a}\nspec: {taints: [{key: other, effect: NoSchedule}]}"
        ));
        assert_eq!(
            not_eligible_because(&node(
                "metadata: {name: a}\nspec: {taints: [{key: other, effect: NoSchedule}, \
             {key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}]}"
            )),
            Some("it is tainted ToBeDeletedByClusterAutoscaler")
        );
        assert_eq!(
            not_eligible_because(&node(
                "metadata: {name: a, deletionTimestamp: '2024-01-01T00:00:00Z', finalizers: [x]}"
            )),
            Some("it is being deleted")
        );
    }
}
