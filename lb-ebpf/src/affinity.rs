//! Session affinity (sessionAffinity: ClientIP): a client's new flows to a service go to the
//! backend its previous new flow got, as long as that was less than the service's timeout ago
//! and the backend still serves the service.
//!
//! An entry remembers the backend and the slot it had. "Still serves the service" is proved
//! with one slot lookup: the slot is within the current backend count and still holds the
//! backend. A backend that stays in the service but moves to another slot (the agent closing
//! a hole left by a removed backend) loses its clients' affinity once; they are rebalanced and
//! stick to their new backend from then on.

use lb_common::{service::service_flags, AffinityKey, AffinityValue, ServiceValue};

const NS_PER_SECOND: u64 = 1_000_000_000;

/// Whether the service keeps clients on one backend.
#[inline(always)]
pub fn enabled(service: &ServiceValue) -> bool {
    service.flags & service_flags::AFFINITY != 0
}

/// The key of `client`'s affinity to a service.
#[inline(always)]
pub fn key(client_addr: [u8; 16], group_id: u32) -> AffinityKey {
    AffinityKey {
        client_addr,
        group_id,
    }
}

/// The slot a remembered choice points at if the choice is still young enough and the slot
/// still exists; the caller checks that the slot still holds the remembered backend.
#[inline(always)]
pub fn live_slot(entry: &AffinityValue, service: &ServiceValue, now_ns: u64) -> Option<u32> {
    // A stamp from the future (another CPU, a moment ago) counts as age 0.
    let age_ns = now_ns.saturating_sub(entry.last_used_ns);
    let young = age_ns < u64::from(service.affinity_timeout_s) * NS_PER_SECOND;
    let in_range = entry.slot >= 1 && entry.slot <= service.backend_count;
    (young && in_range).then_some(entry.slot)
}

/// The entry recording that a client's new flow went to `backend_id` in `slot` now.
#[inline(always)]
pub fn record(backend_id: u32, slot: u32, now_ns: u64) -> AffinityValue {
    AffinityValue {
        backend_id,
        slot,
        last_used_ns: now_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(backend_count: u32, timeout_s: u32) -> ServiceValue {
        ServiceValue {
            group_id: 1,
            backend_count,
            flags: service_flags::AFFINITY,
            affinity_timeout_s: timeout_s,
        }
    }

    #[test]
    fn an_entry_lives_for_the_timeout_since_its_last_use() {
        let svc = service(3, 10);
        let entry = record(7, 2, 5 * NS_PER_SECOND);
        assert_eq!(live_slot(&entry, &svc, 5 * NS_PER_SECOND), Some(2));
        assert_eq!(live_slot(&entry, &svc, 15 * NS_PER_SECOND - 1), Some(2));
        assert_eq!(live_slot(&entry, &svc, 15 * NS_PER_SECOND), None);
        assert_eq!(live_slot(&entry, &svc, 4 * NS_PER_SECOND), Some(2));
    }

    #[test]
    fn the_longest_timeout_does_not_overflow() {
        let svc = service(1, u32::MAX);
        let entry = record(7, 1, 0);
        assert_eq!(
            live_slot(&entry, &svc, u64::from(u32::MAX - 1) * NS_PER_SECOND),
            Some(1)
        );
    }

    #[test]
    fn a_zero_timeout_never_sticks() {
        assert_eq!(live_slot(&record(7, 1, 9), &service(3, 0), 9), None);
    }

    #[test]
    fn a_slot_beyond_the_backend_count_is_gone() {
        let entry = record(7, 3, 0);
        assert_eq!(live_slot(&entry, &service(3, 10), 1), Some(3));
        assert_eq!(live_slot(&entry, &service(2, 10), 1), None);
        assert_eq!(live_slot(&record(7, 0, 0), &service(2, 10), 1), None);
    }

    #[test]
    fn only_flagged_services_have_affinity() {
        assert!(enabled(&service(1, 1)));
        assert!(!enabled(&ServiceValue {
            flags: service_flags::DROP_IF_NO_BACKEND,
            ..service(1, 1)
        }));
    }
}
