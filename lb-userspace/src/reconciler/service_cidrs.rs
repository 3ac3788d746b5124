//! `LB_SVC_CIDRS`: the service CIDRs, so the data path drops new flows to their addresses
//! that no Service holds (kube-proxy nftables' `cluster-ips-check`).
//!
//! A handful of ranges: every sync compares the whole desired set with what was written,
//! which costs nothing next to a Service change and writes only what differs. The first
//! sync (and the one after a failed write) reads the map, so ranges an earlier agent left
//! behind are removed.

use std::collections::BTreeSet;

use ipnet::IpNet;
use tracing::info;

use super::MapWriteError;

/// The map operations the sync needs; implemented by [`crate::datapath::DatapathMaps`] and by
/// a set in tests.
pub trait ServiceCidrMap {
    fn read_service_cidrs(&self) -> Result<Vec<IpNet>, MapWriteError>;
    fn set_service_cidr(&mut self, cidr: IpNet) -> Result<(), MapWriteError>;
    fn remove_service_cidr(&mut self, cidr: IpNet) -> Result<(), MapWriteError>;
}

/// What the map holds, once read.
#[derive(Debug, Default)]
pub struct ServiceCidrs {
    /// `None` until read from the map, and again after a failed write.
    written: Option<BTreeSet<IpNet>>,
}

impl ServiceCidrs {
    /// Brings the map in line with `wanted`; logs the set when it changed.
    pub fn sync(
        &mut self,
        wanted: &BTreeSet<IpNet>,
        map: &mut impl ServiceCidrMap,
    ) -> Result<(), MapWriteError> {
        let mut written = match self.written.take() {
            Some(written) => written,
            None => map.read_service_cidrs()?.into_iter().collect(),
        };
        if written == *wanted {
            self.written = Some(written);
            return Ok(());
        }
        for cidr in wanted.difference(&written.clone()) {
            map.set_service_cidr(*cidr)?;
            written.insert(*cidr);
        }
        for cidr in written.clone().difference(wanted) {
            map.remove_service_cidr(*cidr)?;
            written.remove(cidr);
        }
        match wanted.is_empty() {
            true => info!("service CIDRs: none (no traffic is dropped for them)"),
            false => info!(
                "service CIDRs: {} (new flows to their addresses that no Service holds are \
                 dropped)",
                wanted
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
        self.written = Some(written);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::MapError;

    use super::*;

    /// The map as a set; refuses writes while `broken`.
    #[derive(Default)]
    struct FakeMap {
        cidrs: BTreeSet<IpNet>,
        writes: u32,
        broken: bool,
    }

    impl FakeMap {
        fn write(&mut self) -> Result<(), MapWriteError> {
            self.writes += 1;
            match self.broken {
                true => Err(MapWriteError {
                    map: "LB_SVC_CIDRS",
                    op: "update",
                    source: MapError::KeyNotFound,
                }),
                false => Ok(()),
            }
        }
    }

    impl ServiceCidrMap for FakeMap {
        fn read_service_cidrs(&self) -> Result<Vec<IpNet>, MapWriteError> {
            Ok(self.cidrs.iter().copied().collect())
        }
        fn set_service_cidr(&mut self, cidr: IpNet) -> Result<(), MapWriteError> {
            self.write()?;
            self.cidrs.insert(cidr);
            Ok(())
        }
        fn remove_service_cidr(&mut self, cidr: IpNet) -> Result<(), MapWriteError> {
            self.write()?;
            self.cidrs.remove(&cidr);
            Ok(())
        }
    }

    fn set(cidrs: &[&str]) -> BTreeSet<IpNet> {
        cidrs.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn adopts_the_map_removes_what_an_earlier_agent_left_and_writes_only_changes() {
        let mut map = FakeMap {
            cidrs: set(&["198.19.0.0/16", "198.18.128.0/24"]),
            ..FakeMap::default()
        };
        let mut cidrs = ServiceCidrs::default();
        cidrs.sync(&set(&["198.19.0.0/16"]), &mut map).unwrap();
        assert_eq!(
            (map.cidrs.clone(), map.writes),
            (set(&["198.19.0.0/16"]), 1)
        );
        cidrs.sync(&set(&["198.19.0.0/16"]), &mut map).unwrap();
        assert_eq!(map.writes, 1, "nothing changed");
        cidrs
            .sync(&set(&["198.19.0.0/16", "198.18.200.0/24"]), &mut map)
            .unwrap();
        assert_eq!(map.writes, 2);
        cidrs.sync(&BTreeSet::new(), &mut map).unwrap();
        assert!(map.cidrs.is_empty());
    }

    #[test]
    fn a_failed_write_is_repaired_by_the_next_sync() {
        let mut map = FakeMap {
            broken: true,
            ..FakeMap::default()
        };
        let mut cidrs = ServiceCidrs::default();
        let wanted = set(&["198.19.0.0/16"]);
        assert!(cidrs.sync(&wanted, &mut map).is_err());
        map.broken = false;
        cidrs.sync(&wanted, &mut map).unwrap();
        assert_eq!(map.cidrs, wanted);
    }
}
