//! Backend selection for new flows (the packet path) and new sockets (the socket path): the
//! client's remembered backend under session affinity, else the slot a hash picks.

use lb_common::{flow_hash, Backend, BackendSlotKey, Counter, CtKey, ServiceValue};

use crate::{affinity, error::Error, family::Family, maps::MapAccess};

/// The selection hash of a new packet flow: its 5-tuple.
#[inline(always)]
pub fn flow(key: &CtKey) -> u32 {
    flow_hash(
        &key.src_addr,
        &key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    )
}

/// The selection hash of a new socket: its cookie, which is unique per socket, so a socket's
/// choice is stable (an unconnected UDP socket keeps its backend from one `sendmsg` to the
/// next, as with Cilium's socket-cookie selection) and sockets spread over the slots.
#[inline(always)]
pub fn socket(cookie: u64) -> u32 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&cookie.to_ne_bytes());
    flow_hash(&bytes, &[0; 16], [0; 2], [0; 2], 0)
}

/// The slot (`1..=backend_count`) `hash` picks; `backend_count` must not be 0.
#[inline(always)]
pub fn slot(hash: u32, backend_count: u32) -> u32 {
    hash % backend_count + 1
}

/// The slot and backend id of `service` (which has at least one slot) for a new flow or
/// socket of `client`: the client's remembered backend when the service has session affinity
/// and the memory still holds, else the slot the selection hash (computed by `hash` only
/// then, which keeps the packet programs' stack small) picks.
/// `None` when that slot is missing (maps changed behind the agent, or an update in progress).
#[inline(always)]
pub fn choose<M: MapAccess>(
    maps: &mut M,
    client: &[u8; 16],
    hash: impl FnOnce() -> u32,
    service: &ServiceValue,
    now: u64,
) -> Option<(u32, u32)> {
    let group_id = service.group_id;
    if affinity::enabled(service) {
        if let Some(entry) = maps.affinity(&affinity::key(*client, group_id)) {
            if let Some(slot) = affinity::live_slot(&entry, service, now) {
                if maps.slot(&BackendSlotKey { group_id, slot }) == Some(entry.backend_id) {
                    return Some((slot, entry.backend_id));
                }
            }
        }
    }
    let slot = slot(hash(), service.backend_count);
    let backend_id = maps.slot(&BackendSlotKey { group_id, slot })?;
    Some((slot, backend_id))
}

/// The backend `backend_id`, of family `F` (a frontend's backends are of its family);
/// `DropBackendMissing` of `group_id` when its entry is missing or of the other family.
#[inline(always)]
pub fn backend<F: Family, M: MapAccess>(
    maps: &mut M,
    backend_id: u32,
    group_id: u32,
) -> Result<Backend, Error> {
    maps.backend(backend_id)
        .filter(|b| F::holds(&b.addr))
        .ok_or(Error::dropped(Counter::DropBackendMissing, group_id))
}

/// Records that `client`'s new flow or socket went to `backend_id` in `slot`, when the
/// service has session affinity.
#[inline(always)]
pub fn remember<M: MapAccess>(
    maps: &mut M,
    client: &[u8; 16],
    service: &ServiceValue,
    (slot, backend_id): (u32, u32),
    now: u64,
) {
    if affinity::enabled(service) {
        let key = affinity::key(*client, service.group_id);
        maps.set_affinity(&key, &affinity::record(backend_id, slot, now));
    }
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

    fn covers_every_slot(hashes: impl Iterator<Item = u32> + Clone) {
        for count in [1u32, 2, 3, 7] {
            let mut seen = vec![0u32; count as usize + 1];
            for hash in hashes.clone() {
                let s = slot(hash, count);
                assert!((1..=count).contains(&s), "slot {s} of {count}");
                seen[s as usize] += 1;
            }
            assert_eq!(seen[0], 0);
            assert!(seen[1..].iter().all(|n| *n > 0), "{seen:?}");
        }
    }

    #[test]
    fn slots_are_one_based_and_cover_every_backend() {
        covers_every_slot((1000..2000).map(|sport| flow(&key(sport))));
    }

    #[test]
    fn consecutive_socket_cookies_cover_every_backend() {
        covers_every_slot((4096..5096u64).map(socket));
    }

    #[test]
    fn a_flow_or_socket_always_gets_the_same_hash() {
        assert_eq!(flow(&key(4242)), flow(&key(4242)));
        assert_eq!(socket(77), socket(77));
        assert_ne!(socket(77), socket(78));
    }
}
