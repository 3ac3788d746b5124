//! Backend slot selection for new flows.

use lb_common::{flow_hash, CtKey};

/// The slot (`1..=backend_count`) a new flow goes to; `backend_count` must not be 0.
#[inline(always)]
pub fn slot(key: &CtKey, backend_count: u32) -> u32 {
    flow_hash(
        &key.src_addr,
        &key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    ) % backend_count
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{ipv4_mapped, IPPROTO_UDP};

    fn key(sport: u16) -> CtKey {
        CtKey {
            src_addr: ipv4_mapped([198, 18, 0, 10]),
            dst_addr: ipv4_mapped([198, 19, 0, 1]),
            src_port: sport.to_be_bytes(),
            dst_port: 53u16.to_be_bytes(),
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        }
    }

    #[test]
    fn slots_are_one_based_and_cover_every_backend() {
        for count in [1u32, 2, 3, 7] {
            let mut seen = vec![0u32; count as usize + 1];
            for sport in 1000..2000 {
                let s = slot(&key(sport), count);
                assert!((1..=count).contains(&s), "slot {s} of {count}");
                seen[s as usize] += 1;
            }
            assert_eq!(seen[0], 0);
            assert!(seen[1..].iter().all(|n| *n > 0), "{seen:?}");
        }
    }

    #[test]
    fn a_flow_always_gets_the_same_slot() {
        assert_eq!(slot(&key(4242), 5), slot(&key(4242), 5));
    }
}
