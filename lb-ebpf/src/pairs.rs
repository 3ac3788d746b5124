//! Pairs: a flow's forward and reply entries live and die together.
//!
//! LRU eviction (or anyone deleting entries) can remove one entry of a flow and leave the
//! other. Each entry holds everything needed to make the other anew, so a packet that finds
//! one entry checks for the other and re-creates it when it is missing:
//! - the forward side checks its reply entry on every packet until the backend has answered
//!   ([`ct_flags::SEEN_REPLY`]: exactly the flows whose unused reply entry LRU evicts first),
//!   then once a second, with the refresh of `last_seen_ns` that writes anyway. A reply key
//!   held by another flow (a masquerading port taken over) restarts the flow instead.
//! - the reply side does the same for the forward entry, and marks both entries
//!   [`ct_flags::SEEN_REPLY`] on the first reply. A restored forward entry keeps the
//!   client's next packets on the backend that answered instead of starting a new flow.
//!
//! Between two checks of an answered flow (at most a second of traffic) an evicted entry is
//! missed: replies pass untranslated, or the client's packets start a new flow.

use lb_common::{conntrack::ct_flags, Counter, CtKey};

use crate::{
    conntrack::{self, Found},
    maps::MapAccess,
    rewrite::Side,
    stats,
};

/// Checks the other entry of a flow whose entry was found (`found`) under `key`, on `side` of
/// the packet (see [`forward_whole`] and [`reply_whole`]). Returns `false` when the flow has
/// to start over.
#[inline(always)]
pub fn whole<M: MapAccess>(maps: &mut M, key: &CtKey, found: &Found, side: Side) -> bool {
    match side {
        Side::Destination => forward_whole(maps, key, found),
        Side::Source => {
            reply_whole(maps, key, found);
            true
        }
    }
}

/// Checks a forward entry, found under `key`, against its reply entry and re-creates that if
/// it is missing. Returns `false` when the flow has to start over: its reply key is held by
/// another flow (or refused by the map).
#[inline(always)]
pub fn forward_whole<M: MapAccess>(maps: &mut M, key: &CtKey, found: &Found) -> bool {
    let entry = &found.entry;
    if entry.flags & ct_flags::SEEN_REPLY != 0 && !found.refreshed {
        return true;
    }
    let reply_key = entry.reply_key(key);
    // A `match`, not `Option::map`: closures are outlined at opt-level "s", and the call's
    // stack frame would add to the program's.
    match maps.peek_conntrack(&reply_key) {
        Some(reply) => conntrack::reply_belongs(key, reply),
        None => {
            let reply = conntrack::reply_of(key, entry, maps.now_ns());
            let restored = maps.insert_conntrack_new(&reply_key, &reply).is_ok();
            if restored {
                stats::count(maps, Counter::ConntrackRepaired);
            }
            restored
        }
    }
}

/// Checks a reply entry, found under `reply_key`, against its forward entry: re-creates that
/// if it is missing (unless the client has started another flow on the tuple meanwhile) and,
/// on the flow's first reply, marks both [`ct_flags::SEEN_REPLY`]. The reply is translated
/// either way: its entry is right.
#[inline(always)]
pub fn reply_whole<M: MapAccess>(maps: &mut M, reply_key: &CtKey, found: &Found) {
    let entry = &found.entry;
    let first = entry.flags & ct_flags::SEEN_REPLY == 0;
    if !first && !found.refreshed {
        return;
    }
    let key = entry.forward_key(reply_key);
    match maps.peek_conntrack(&key) {
        None => {
            let mut forward = conntrack::forward_of(reply_key, entry, maps.now_ns());
            forward.flags |= ct_flags::SEEN_REPLY;
            if maps.insert_conntrack_new(&key, &forward).is_ok() {
                stats::count(maps, Counter::ConntrackRepaired);
            }
        }
        Some(forward) if first && conntrack::forward_belongs(reply_key, forward) => {
            maps.mark_conntrack(&key, ct_flags::SEEN_REPLY)
        }
        Some(_) => {}
    }
    if first {
        maps.mark_conntrack(reply_key, ct_flags::SEEN_REPLY);
    }
}

#[cfg(test)]
mod tests;
