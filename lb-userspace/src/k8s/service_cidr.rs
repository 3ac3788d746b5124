//! The service CIDRs, the ranges ClusterIPs are allocated from: `networking.k8s.io/v1`
//! `ServiceCIDR` objects or `--service-cidrs`. A new flow to an address inside one that no
//! Service holds is dropped, as kube-proxy's nftables mode does. Only IPv4 ranges are used,
//! as only IPv4 is served.

use std::collections::BTreeSet;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::ResourceExt;
use tracing::{debug, warn};

use crate::objects::FieldError;

/// One `ServiceCIDR` object's usable ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceCidrDef {
    pub cidrs: Vec<Ipv4Net>,
}

impl ServiceCidrDef {
    /// `spec.cidrs`: an entry that is not a CIDR is logged (naming the object and the entry)
    /// and skipped, as `loadBalancerSourceRanges` entries are; IPv6 ones are skipped at debug.
    /// Kubernetes objects being deleted still count, as in kube-proxy.
    pub fn from_k8s(object: &ServiceCIDR) -> Result<Self, FieldError> {
        let name = object.name_any();
        let listed = object
            .spec
            .as_ref()
            .and_then(|spec| spec.cidrs.as_deref())
            .unwrap_or_default();
        let mut cidrs = Vec::new();
        for (i, cidr) in listed.iter().enumerate() {
            match cidr.trim().parse::<IpNet>() {
                Ok(IpNet::V4(net)) => cidrs.push(net.trunc()),
                Ok(IpNet::V6(net)) => {
                    debug!("ServiceCIDR {name}: {net} is IPv6, which is not served; skipped")
                }
                Err(_) => {
                    warn!("ServiceCIDR {name}: spec.cidrs[{i}] {cidr:?} is not a CIDR; skipped")
                }
            }
        }
        Ok(Self { cidrs })
    }
}

/// The IPv4 ranges of `--service-cidrs` (host bits ignored); IPv6 ones are skipped at debug.
pub fn ipv4_cidrs(cidrs: &[IpNet]) -> BTreeSet<Ipv4Net> {
    cidrs
        .iter()
        .filter_map(|cidr| match cidr {
            IpNet::V4(net) => Some(net.trunc()),
            IpNet::V6(net) => {
                debug!("--service-cidrs {net} is IPv6, which is not served; skipped");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(cidrs: &str) -> ServiceCIDR {
        serde_yaml::from_str(&format!(
            "metadata: {{name: kubernetes}}\nspec: {{cidrs: {cidrs}}}"
        ))
        .unwrap()
    }

    fn nets(nets: &[&str]) -> Vec<Ipv4Net> {
        nets.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn ipv4_cidrs_are_used_and_ipv6_and_invalid_ones_skipped() {
        let def = ServiceCidrDef::from_k8s(&object(
            "['198.19.0.0/16', '2001:2::/112', 'nonsense', '198.18.255.1/24']",
        ))
        .unwrap();
        assert_eq!(def.cidrs, nets(&["198.19.0.0/16", "198.18.255.0/24"]));
        let empty = serde_yaml::from_str("metadata: {name: empty}").unwrap();
        assert_eq!(ServiceCidrDef::from_k8s(&empty).unwrap().cidrs, []);
    }

    #[test]
    fn the_flag_keeps_ipv4_ranges_without_host_bits() {
        let flag: Vec<IpNet> = ["198.19.0.1/16", "2001:2::/112", "198.19.0.0/16"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let cidrs: Vec<Ipv4Net> = ipv4_cidrs(&flag).into_iter().collect();
        assert_eq!(cidrs, nets(&["198.19.0.0/16"]));
    }
}
