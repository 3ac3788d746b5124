//! Rate limits of rejects, as the kernel limits the ICMP errors it sends itself (and so
//! kube-proxy's REJECT): without them spoofed packets to a Service without endpoints would be
//! reflected at line rate. A reject is answered only while both the client's token bucket
//! (`LB_REJECT_SRC`, the kernel's per-peer `icmp_ratelimit`) and the node's (`LB_REJECT_ALL`,
//! `icmp_msgs_per_sec`/`icmp_msgs_burst`) have credit; otherwise the packet is dropped
//! (`Counter::DropRejectSuppressed`). Parameters and bucket arithmetic: `lb_common::reject_limit`.
//!
//! The node's bucket is one element shared by every CPU, updated without a lock: a per-CPU
//! bucket would need the rate split by CPU count and would then let a flood that RSS steers to
//! one queue through at a fraction of the configured rate. CPUs racing on the shared bucket
//! can each spend the same credit (a lost update), so the node may answer up to one extra
//! reject per CPU that raced, never fewer than configured; the kernel's own global bucket is
//! approximate in the same way. A client's bucket is updated alike.
//!
//! The socket programs (`sock`) are not limited: they fail `connect()` with `ECONNREFUSED` in
//! the caller's own process and send no packet, so there is nothing to reflect.

use lb_common::{reject_limit::Limit, TokenBucket};

use crate::maps::MapAccess;

/// Whether a reject may be answered to `client` (IPv4-mapped) now; if so, spends one answer
/// of its bucket and of the node's. As the kernel (`icmp_global_allow`, then
/// `icmpv4_xrlim_allow`, then `icmp_global_consume`), the node's credit is checked first and
/// spent last, so a client over its own limit costs the others nothing.
#[inline(always)]
pub fn allow<M: MapAccess>(maps: &mut M, client: &[u8; 16]) -> bool {
    let limits = maps.reject_limits();
    let now = maps.now_ns();
    let global = &limits.global;
    if !global.is_unlimited() {
        let Some(bucket) = maps.global_reject_bucket() else {
            return false;
        };
        bucket.refill(global, now);
        if !bucket.has_credit(global) {
            return false;
        }
    }
    if !take_per_source(maps, &limits.per_source, client, now) {
        return false;
    }
    if !global.is_unlimited() {
        if let Some(bucket) = maps.global_reject_bucket() {
            bucket.take(global);
        }
    }
    true
}

/// Spends one answer of `client`'s bucket, which a client first seen gets full.
#[inline(always)]
fn take_per_source<M: MapAccess>(maps: &mut M, limit: &Limit, client: &[u8; 16], now: u64) -> bool {
    if limit.is_unlimited() {
        return true;
    }
    if let Some(bucket) = maps.reject_bucket(client) {
        bucket.refill(limit, now);
        return bucket.take(limit);
    }
    let mut bucket = TokenBucket::full(limit, now);
    let allowed = bucket.take(limit);
    maps.set_reject_bucket(client, &bucket);
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeMaps;
    use lb_common::{ipv4_mapped, RejectLimits};

    const A: [u8; 16] = ipv4_mapped([198, 18, 0, 10]);
    const B: [u8; 16] = ipv4_mapped([198, 18, 0, 11]);
    const SECOND: u64 = 1_000_000_000;

    fn maps(per_source: Limit, global: Limit) -> FakeMaps {
        FakeMaps {
            reject_limits: RejectLimits { per_source, global },
            now_ns: 5 * SECOND,
            ..FakeMaps::default()
        }
    }

    fn answered(maps: &mut FakeMaps, client: &[u8; 16], tries: usize) -> usize {
        (0..tries).filter(|_| allow(maps, client)).count()
    }

    #[test]
    fn each_client_gets_its_burst_then_its_rate() {
        let mut maps = maps(Limit::new(1, 6), Limit::default());
        assert_eq!(answered(&mut maps, &A, 10), 6);
        assert_eq!(
            answered(&mut maps, &B, 10),
            6,
            "another client has its own bucket"
        );
        maps.now_ns += 2 * SECOND;
        assert_eq!(answered(&mut maps, &A, 10), 2);
    }

    #[test]
    fn the_node_limit_is_shared_by_every_client() {
        let mut maps = maps(Limit::default(), Limit::new(1000, 3));
        assert_eq!(answered(&mut maps, &A, 2), 2);
        assert_eq!(answered(&mut maps, &B, 5), 1);
        maps.now_ns += SECOND / 1000;
        assert_eq!(answered(&mut maps, &B, 5), 1);
    }

    #[test]
    fn a_client_over_its_limit_does_not_spend_the_node_credit() {
        let mut maps = maps(Limit::new(1, 1), Limit::new(1, 2));
        assert_eq!(answered(&mut maps, &A, 5), 1);
        assert_eq!(
            answered(&mut maps, &B, 5),
            1,
            "the node's second answer is B's"
        );
        assert!(!allow(&mut maps, &ipv4_mapped([198, 18, 0, 12])));
    }

    #[test]
    fn without_limits_everything_is_answered_and_nothing_is_tracked() {
        let mut maps = maps(Limit::default(), Limit::default());
        assert_eq!(answered(&mut maps, &A, 100), 100);
        assert!(maps.reject_buckets.is_empty());
    }
}
