//! The services a benchmark programs: N TCP ClusterIPs on port 80 with E endpoints each, the
//! same set for every variant (maps, iptables, nftables, manifests for the agent). The last
//! service (highest VIP, written last by every variant) is the target the traffic uses.
//!
//! VIPs are 198.19.0.1 and up. Endpoints of the other services never receive traffic; they are
//! distinct addresses in 198.18.128.0/17 (a port per block of services when the /17 runs out).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use lb_userspace::model::{
    DesiredService, DesiredState, Endpoint, Frontend, Protocol, ServicePortName,
};

use super::kube_proxy_rules::KubeService;

/// Port of every VIP.
pub const VIP_PORT: u16 = 80;
/// Port endpoints listen on (the first block of filler endpoints uses it too).
pub const TARGET_PORT: u16 = 8080;
/// Kubernetes namespace of the generated objects.
const NAMESPACE: &str = "bench";
const FIRST_VIP: u32 = u32::from_be_bytes([198, 19, 0, 1]);
const FILLER_BASE: u32 = u32::from_be_bytes([198, 18, 128, 0]);
const FILLER_ADDRESSES: u32 = 1 << 15;

/// N services with E endpoints each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSet {
    count: u32,
    endpoints: u32,
    /// Real endpoints of the target service; `None`: filler endpoints like the others.
    target: Option<Vec<SocketAddrV4>>,
    /// Services with endpoints of their own; later ones reuse earlier services' endpoints.
    distinct: u32,
}

impl ServiceSet {
    /// `count` services (at least one) with `endpoints` filler endpoints each.
    pub fn new(count: u32, endpoints: u32) -> ServiceSet {
        let count = count.max(1);
        ServiceSet {
            count,
            endpoints,
            target: None,
            distinct: count,
        }
    }

    /// The same services, the target balancing to `endpoints` instead.
    pub fn with_target(mut self, endpoints: Vec<SocketAddrV4>) -> ServiceSet {
        self.target = Some(endpoints);
        self
    }

    /// The same services with at most `backends` distinct endpoints overall (services reuse
    /// endpoint sets), to fit a data path's backend capacity.
    pub fn with_at_most_backends(mut self, backends: u32) -> ServiceSet {
        let sets = (backends / self.endpoints.max(1)).max(1);
        self.distinct = self.distinct.min(sets);
        self
    }

    /// Number of services.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Index of the target service (the last one).
    pub fn target_index(&self) -> u32 {
        self.count - 1
    }

    /// The target's VIP and port.
    pub fn target_vip(&self) -> SocketAddrV4 {
        self.vip(self.target_index())
    }

    /// VIP and port of service `index`.
    pub fn vip(&self, index: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(FIRST_VIP + index), VIP_PORT)
    }

    /// Endpoints of service `index`.
    pub fn endpoints(&self, index: u32) -> Vec<SocketAddrV4> {
        if let (true, Some(target)) = (index == self.target_index(), &self.target) {
            return target.clone();
        }
        let set = index % self.distinct;
        // A block of services shares a port; within it every endpoint has its own address.
        let per_block = (FILLER_ADDRESSES / self.endpoints.max(1)).max(1);
        let port = TARGET_PORT + (set / per_block) as u16;
        let first = (set % per_block) * self.endpoints;
        (0..self.endpoints)
            .map(|e| SocketAddrV4::new(Ipv4Addr::from(FILLER_BASE + first + e), port))
            .collect()
    }

    /// Number of distinct endpoints over all services.
    pub fn distinct_endpoints(&self) -> u32 {
        let target = self.target.as_ref().map_or(0, Vec::len) as u32;
        self.distinct
            .min(self.count - u32::from(self.target.is_some()))
            * self.endpoints
            + target
    }

    /// The services for the kube-proxy rule generators, target last.
    pub fn kube_services(&self) -> Vec<KubeService> {
        (0..self.count)
            .map(|index| KubeService {
                vip: self.vip(index),
                endpoints: self.endpoints(index),
            })
            .collect()
    }

    /// The desired state the agent's reconciler programs.
    pub fn desired_state(&self) -> DesiredState {
        (0..self.count)
            .map(|index| {
                let frontend = Frontend {
                    addr: IpAddr::V4(*self.vip(index).ip()),
                    port: VIP_PORT,
                    protocol: Protocol::Tcp,
                };
                let endpoints = self
                    .endpoints(index)
                    .into_iter()
                    .map(|e| Endpoint {
                        addr: IpAddr::V4(*e.ip()),
                        port: e.port(),
                        local: true,
                    })
                    .collect::<BTreeSet<_>>();
                let name = ServicePortName {
                    namespace: NAMESPACE.to_string(),
                    name: service_name(index),
                    port_name: "http".to_string(),
                };
                let service = DesiredService {
                    cluster_ip: true,
                    ..DesiredService::uniform(name, endpoints)
                };
                (frontend, service)
            })
            .collect()
    }

    /// A multi-document YAML file with every Service and its EndpointSlice, for `lb-agent run
    /// --manifests`.
    pub fn manifests(&self) -> String {
        let mut yaml = String::new();
        for index in 0..self.count {
            let name = service_name(index);
            let vip = self.vip(index);
            let endpoints = self.endpoints(index);
            let port = endpoints.first().map_or(TARGET_PORT, SocketAddrV4::port);
            let _ = write!(
                yaml,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: \
                 {NAMESPACE}\nspec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  \
                 ports:\n    - name: http\n      protocol: TCP\n      port: {VIP_PORT}\n      \
                 targetPort: {port}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata:\n  name: {name}-0\n  namespace: {NAMESPACE}\n  labels:\n    \
                 kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n  - name: http\n    \
                 protocol: TCP\n    port: {port}\nendpoints:\n",
                ip = vip.ip(),
            );
            for endpoint in &endpoints {
                let _ = writeln!(
                    yaml,
                    "  - addresses: [{}]\n    conditions:\n      ready: true",
                    endpoint.ip()
                );
            }
        }
        yaml
    }
}

fn service_name(index: u32) -> String {
    format!("svc-{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_its_own_vip_and_endpoints_and_the_target_is_last() {
        let target = vec![SocketAddrV4::new([198, 18, 0, 11].into(), TARGET_PORT)];
        let set = ServiceSet::new(30_000, 10).with_target(target.clone());
        assert_eq!(set.vip(0), "198.19.0.1:80".parse().unwrap());
        assert_eq!(set.target_vip(), "198.19.117.48:80".parse().unwrap());
        assert_eq!(set.endpoints(29_999), target);
        let all: BTreeSet<SocketAddrV4> = (0..30_000).flat_map(|i| set.endpoints(i)).collect();
        assert_eq!(all.len() as u32, set.distinct_endpoints());
        assert_eq!(all.len(), 29_999 * 10 + 1);
        assert!(all.iter().all(|e| e.ip().octets()[..2] == [198, 18]));
        let state = set.desired_state();
        assert_eq!(state.services.len(), 30_000);
        let (last, _) = state.services.iter().next_back().unwrap();
        assert_eq!(last.addr, IpAddr::V4(*set.target_vip().ip()));
        assert_eq!(set.kube_services().last().unwrap().endpoints, target);
    }

    #[test]
    fn endpoint_sets_can_be_shared_to_fit_a_capacity() {
        let set = ServiceSet::new(30_000, 3).with_at_most_backends(60_000);
        assert_eq!(set.distinct_endpoints(), 60_000);
        assert_eq!(set.endpoints(20_000), set.endpoints(0));
        let all: BTreeSet<SocketAddrV4> = (0..30_000).flat_map(|i| set.endpoints(i)).collect();
        assert_eq!(all.len(), 60_000);
    }

    #[test]
    fn manifests_hold_a_service_and_a_slice_per_service() {
        let set = ServiceSet::new(3, 2);
        let yaml = set.manifests();
        assert_eq!(yaml.matches("kind: Service\n").count(), 3);
        assert_eq!(yaml.matches("kind: EndpointSlice\n").count(), 3);
        assert!(yaml.contains("clusterIP: 198.19.0.3\n"));
        assert!(yaml.contains("  - addresses: [198.18.128.5]\n"));
        assert!(yaml.contains("kubernetes.io/service-name: svc-2\n"));
    }
}
