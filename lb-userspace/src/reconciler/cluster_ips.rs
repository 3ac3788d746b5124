//! `LB_CLUSTER_IPS`: every address that is a ClusterIP of a programmed frontend, so the data
//! path rejects new flows to it on a port or protocol no Service exposes (kube-proxy
//! nftables' `cluster-ips` set).
//!
//! An address stays listed while any ClusterIP frontend has it. Only the frontends that
//! changed are looked at; the first sync (and the one after a failed write) reads the map and
//! compares everything, so entries an earlier agent left behind are removed.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{map_addr, Changed, DesiredState, Frontend};

use super::MapWriteError;

/// The map operations the sync needs; implemented by [`crate::datapath::DatapathMaps`] and by
/// a set in tests.
pub trait ClusterIpMap {
    fn read_cluster_ips(&self) -> Result<Vec<[u8; 16]>, MapWriteError>;
    fn set_cluster_ip(&mut self, addr: &[u8; 16]) -> Result<(), MapWriteError>;
    fn remove_cluster_ip(&mut self, addr: &[u8; 16]) -> Result<(), MapWriteError>;
}

/// What the map holds (once read) and the ClusterIP frontends behind each address.
#[derive(Debug, Default)]
pub struct ClusterIps {
    /// `None` until read from the map, and again after a failed write.
    written: Option<BTreeSet<[u8; 16]>>,
    frontends: BTreeMap<[u8; 16], BTreeSet<Frontend>>,
}

impl ClusterIps {
    /// Brings the map in line with `state`'s ClusterIP frontends, given what changed since
    /// the last successful sync.
    pub fn sync(
        &mut self,
        state: &DesiredState,
        changed: &Changed,
        map: &mut impl ClusterIpMap,
    ) -> Result<(), MapWriteError> {
        let result = self.try_sync(state, changed, map);
        if result.is_err() {
            self.written = None;
        }
        result
    }

    fn try_sync(
        &mut self,
        state: &DesiredState,
        changed: &Changed,
        map: &mut impl ClusterIpMap,
    ) -> Result<(), MapWriteError> {
        let (mut written, touched) = match (self.written.take(), changed) {
            (Some(written), Changed::Frontends(frontends)) => {
                let touched = self.update(state, frontends.iter().copied());
                (written, touched)
            }
            _ => {
                self.frontends.clear();
                let written: BTreeSet<_> = map.read_cluster_ips()?.into_iter().collect();
                self.update(state, state.services.keys().copied());
                let touched = written
                    .union(&self.frontends.keys().copied().collect())
                    .copied()
                    .collect();
                (written, touched)
            }
        };
        let mut result = Ok(());
        for addr in touched {
            let wanted = self.frontends.contains_key(&addr);
            let step = match (wanted, written.contains(&addr)) {
                (true, false) => map.set_cluster_ip(&addr).map(|()| written.insert(addr)),
                (false, true) => map.remove_cluster_ip(&addr).map(|()| written.remove(&addr)),
                _ => Ok(true),
            };
            if let Err(e) = step {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            self.written = Some(written);
        }
        result
    }

    /// Records the ClusterIP frontends among `frontends` as `state` has them; returns the
    /// addresses whose frontends changed.
    fn update(
        &mut self,
        state: &DesiredState,
        frontends: impl Iterator<Item = Frontend>,
    ) -> BTreeSet<[u8; 16]> {
        let mut touched = BTreeSet::new();
        for frontend in frontends {
            let addr = map_addr(frontend.addr);
            let is_cluster_ip = state.services.get(&frontend).is_some_and(|d| d.cluster_ip);
            let listed = self.frontends.entry(addr).or_default();
            let changed = match is_cluster_ip {
                true => listed.insert(frontend),
                false => listed.remove(&frontend),
            };
            if listed.is_empty() {
                self.frontends.remove(&addr);
            }
            if changed {
                touched.insert(addr);
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aya::maps::MapError;

    use super::*;
    use crate::model::{DesiredService, Protocol, ServicePortName};

    /// The map as a set; refuses writes while `broken`.
    #[derive(Default)]
    struct FakeMap {
        addrs: BTreeSet<[u8; 16]>,
        writes: u32,
        broken: bool,
    }

    impl FakeMap {
        fn write(&mut self) -> Result<(), MapWriteError> {
            self.writes += 1;
            match self.broken {
                true => Err(MapWriteError {
                    map: "LB_CLUSTER_IPS",
                    op: "update",
                    source: MapError::KeyNotFound,
                }),
                false => Ok(()),
            }
        }
    }

    impl ClusterIpMap for FakeMap {
        fn read_cluster_ips(&self) -> Result<Vec<[u8; 16]>, MapWriteError> {
            Ok(self.addrs.iter().copied().collect())
        }
        fn set_cluster_ip(&mut self, addr: &[u8; 16]) -> Result<(), MapWriteError> {
            self.write()?;
            self.addrs.insert(*addr);
            Ok(())
        }
        fn remove_cluster_ip(&mut self, addr: &[u8; 16]) -> Result<(), MapWriteError> {
            self.write()?;
            self.addrs.remove(addr);
            Ok(())
        }
    }

    fn frontend(host: u8, port: u16) -> Frontend {
        Frontend {
            addr: [198, 19, 0, host].into(),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn addr(host: u8) -> [u8; 16] {
        lb_common::ipv4_mapped([198, 19, 0, host])
    }

    fn service(cluster_ip: bool) -> Arc<DesiredService> {
        let name = ServicePortName {
            namespace: "default".into(),
            name: "svc".into(),
            port_name: String::new(),
        };
        Arc::new(DesiredService {
            cluster_ip,
            ..DesiredService::uniform(name, BTreeSet::new())
        })
    }

    fn state(frontends: &[(Frontend, bool)]) -> DesiredState {
        let mut state = DesiredState::default();
        for (frontend, cluster_ip) in frontends {
            state.services.insert(*frontend, service(*cluster_ip));
        }
        state
    }

    fn changed(frontends: &[Frontend]) -> Changed {
        Changed::Frontends(frontends.iter().copied().collect())
    }

    #[test]
    fn lists_cluster_ips_only_and_removes_what_an_earlier_agent_left() {
        let mut map = FakeMap::default();
        map.addrs.insert(addr(99));
        let mut ips = ClusterIps::default();
        let state = state(&[(frontend(1, 80), true), (frontend(2, 80), false)]);
        ips.sync(&state, &changed(&[]), &mut map).unwrap();
        assert_eq!(map.addrs, BTreeSet::from([addr(1)]));
    }

    #[test]
    fn an_address_stays_while_any_of_its_ports_is_a_cluster_ip() {
        let mut map = FakeMap::default();
        let mut ips = ClusterIps::default();
        let both = [(frontend(1, 80), true), (frontend(1, 443), true)];
        ips.sync(&state(&both), &Changed::Everything, &mut map)
            .unwrap();
        let one = state(&both[1..]);
        ips.sync(&one, &changed(&[frontend(1, 80)]), &mut map)
            .unwrap();
        assert_eq!(map.addrs, BTreeSet::from([addr(1)]));
        ips.sync(&state(&[]), &changed(&[frontend(1, 443)]), &mut map)
            .unwrap();
        assert!(map.addrs.is_empty());
    }

    #[test]
    fn only_changed_frontends_are_written() {
        let mut map = FakeMap::default();
        let mut ips = ClusterIps::default();
        let one = [(frontend(1, 80), true)];
        ips.sync(&state(&one), &Changed::Everything, &mut map)
            .unwrap();
        let two = state(&[one[0], (frontend(2, 80), true)]);
        ips.sync(&two, &changed(&[frontend(2, 80)]), &mut map)
            .unwrap();
        ips.sync(&two, &changed(&[frontend(1, 80)]), &mut map)
            .unwrap();
        assert_eq!(map.writes, 2);
        assert_eq!(map.addrs, BTreeSet::from([addr(1), addr(2)]));
    }

    #[test]
    fn a_failed_write_is_repaired_by_the_next_sync() {
        let mut map = FakeMap {
            broken: true,
            ..FakeMap::default()
        };
        let mut ips = ClusterIps::default();
        let one = state(&[(frontend(1, 80), true)]);
        assert!(ips.sync(&one, &Changed::Everything, &mut map).is_err());
        map.broken = false;
        ips.sync(&one, &changed(&[]), &mut map).unwrap();
        assert_eq!(map.addrs, BTreeSet::from([addr(1)]));
    }
}
