//! This node: its name (which endpoints are local) and its addresses (where node ports are
//! served).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use super::fields::parse_ip;
use crate::objects::FieldError;

/// The node the agent runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeDef {
    /// Matched against endpoints' `nodeName`.
    pub name: String,
    /// Addresses that serve node ports.
    pub addresses: Vec<IpAddr>,
}

impl NodeDef {
    /// The node's `InternalIP` and `ExternalIP` addresses from `status.addresses`.
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
        Ok(NodeDef { name, addresses })
    }
}
