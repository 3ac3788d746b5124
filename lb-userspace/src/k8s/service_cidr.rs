//! The service CIDRs, the ranges ClusterIPs are allocated from: `networking.k8s.io/v1`
//! `ServiceCIDR` objects or `--service-cidrs`. A new flow to an address inside one that no
//! Service holds is dropped, as kube-proxy's nftables mode does. Ranges of both families are
//! used.

use std::collections::BTreeSet;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::ResourceExt;
use tracing::warn;

use crate::objects::FieldError;

/// One `ServiceCIDR` object's usable ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceCidrDef {
    pub cidrs: Vec<IpNet>,
}

impl ServiceCidrDef {
    /// `spec.cidrs`: an entry that is not a CIDR is logged (naming the object and the entry)
    /// and skipped, as `loadBalancerSourceRanges` entries are; host bits are ignored.
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
                Ok(net) => cidrs.push(net.trunc()),
                Err(_) => {
                    warn!("ServiceCIDR {name}: spec.cidrs[{i}] {cidr:?} is not a CIDR; skipped")
                }
            }
        }
        Ok(Self { cidrs })
    }
}

/// The ranges of `--service-cidrs`, host bits ignored.
pub fn flag_cidrs(cidrs: &[IpNet]) -> BTreeSet<IpNet> {
    cidrs.iter().map(IpNet::trunc).collect()
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

    fn nets(nets: &[&str]) -> Vec<IpNet> {
        nets.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn ranges_of_both_families_are_used_and_invalid_ones_skipped() {
        let def = ServiceCidrDef::from_k8s(&object(
            "['198.19.0.0/16', '2001:2::1/112', 'nonsense', '198.18.255.1/24']",
        ))
        .unwrap();
        let expected = nets(&["198.19.0.0/16", "2001:2::/112", "198.18.255.0/24"]);
        assert_eq!(def.cidrs, expected);
        let empty = serde_yaml::from_str("metadata: {name: empty}").unwrap();
        assert_eq!(ServiceCidrDef::from_k8s(&empty).unwrap().cidrs, []);
    }

    #[test]
    fn the_flag_keeps_ranges_without_host_bits() {
        let flag = nets(&["198.19.0.1/16", "2001:2::1/112", "198.19.0.0/16"]);
        let cidrs: Vec<IpNet> = flag_cidrs(&flag).into_iter().collect();
        assert_eq!(cidrs, nets(&["198.19.0.0/16", "2001:2::/112"]));
    }
}
