//! Port reuse for masqueraded flows. Entries do not expire; a masqueraded flow's port stays
//! with it until its reply entry has been idle for `lb_common::conntrack::TCP_REUSE_NS`
//! (`UDP_REUSE_NS` for UDP, `CLOSING_REUSE_NS` once a FIN or RST was seen). Then a new flow
//! that finds the port taken takes it over, and the old flow's entries go. Without this, a
//! backend would be unreachable through masquerading after a port range's worth of flows.

use lb_common::{conntrack::ct_flags, CtKey, CtValue};

use crate::{conntrack, family::Family, maps::MapAccess, parse::Flow};

/// Frees `reply_key`, taken by another masqueraded flow, if that flow's reply entry is
/// [`conntrack::reusable`]: deletes it and the flow's forward entry (unless the client has
/// since started another flow on that tuple, with another port), whose key it builds in
/// `forward` (room off the stack). Returns whether the key is free now.
#[inline(always)]
pub fn take_over<M: MapAccess>(
    maps: &mut M,
    reply_key: &CtKey,
    now_ns: u64,
    forward: &mut CtKey,
) -> bool {
    match maps.peek_conntrack(reply_key) {
        None => return true,
        Some(old)
            if old.flags & ct_flags::SNAT != 0
                && conntrack::reusable(old, reply_key.proto, now_ns) =>
        {
            *forward = old.forward_key(reply_key);
        }
        Some(_) => return false,
    }
    let forward = &*forward;
    let its_own = maps.peek_conntrack(forward).is_some_and(|f| {
        f.flags & ct_flags::SNAT != 0
            && f.snat_port == reply_key.dst_port
            && conntrack::same_addr(&f.snat_addr, &reply_key.dst_addr)
    });
    if its_own {
        maps.remove_conntrack(forward);
    }
    maps.remove_conntrack(reply_key);
    true
}

/// Marks both entries of a TCP or SCTP flow [`ct_flags::CLOSING`] when `flow` (a packet whose
/// entry `entry`, either one of the flow's, was found under `key`) is a FIN or RST, an SCTP
/// ABORT or SHUTDOWN COMPLETE (`Flow::is_connection_end`): the closing
/// state, which the port take-over and the agent's garbage collector read alike.
#[inline(always)]
pub fn note_connection_end<F: Family, M: MapAccess>(
    maps: &mut M,
    flow: &Flow<F>,
    key: &CtKey,
    entry: &CtValue,
) {
    if !flow.is_connection_end() {
        return;
    }
    maps.mark_conntrack(key, ct_flags::CLOSING);
    maps.mark_conntrack(&entry.pair_key(key), ct_flags::CLOSING);
}

#[cfg(test)]
mod tests;
