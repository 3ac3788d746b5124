//! Typed events for the rare drops an operator should hear about, written in place into the
//! ring buffer `LB_EVENTS` (`lb_common::event`); the agent formats them into its log. Called
//! only from the drop branch of [`crate::lb::process`], never for an ordinary packet.
//!
//! The agent sets `LB_EVENT_LEVEL` at load from `--log-level`; a disabled level costs one
//! comparison with a constant the verifier prunes. Fields are written through the reserved
//! entry's pointer: the XDP program has almost no stack to spare for a copy.

use lb_common::Counter;
#[cfg(not(test))]
use {
    aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::RingBuf, Global},
    core::ptr::addr_of_mut,
    lb_common::event::{drop_level, kind, level, Event, EVENTS_BYTES},
};

#[cfg(not(test))]
#[map]
static LB_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// The most verbose level written (`lb_common::event::LEVEL_GLOBAL`), set by the agent.
#[cfg(not(test))]
#[unsafe(no_mangle)]
static LB_EVENT_LEVEL: Global<u8> = Global::new(level::OFF);

/// Reports the drop of a packet of service `group_id` for `reason`, if its level is enabled
/// and the ring buffer has room (a full ring buffer loses the event, never the packet's
/// verdict).
#[cfg(not(test))]
#[inline(always)]
pub fn dropped(reason: Counter, group_id: u32) {
    let event_level = drop_level(reason);
    if event_level == level::OFF || event_level > LB_EVENT_LEVEL.load() {
        return;
    }
    let Some(mut entry) = LB_EVENTS.reserve::<Event>(0) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to the reserved entry, which holds one Event; every field is
    // written before it is submitted.
    unsafe {
        addr_of_mut!((*event).timestamp_ns).write(bpf_ktime_get_ns());
        addr_of_mut!((*event).group_id).write(group_id);
        addr_of_mut!((*event).reason).write(reason as u32);
        addr_of_mut!((*event).kind).write(kind::DROP);
        addr_of_mut!((*event).level).write(event_level);
        addr_of_mut!((*event)._pad).write([0; 6]);
    }
    entry.submit(0);
}

/// Host tests: no ring buffer.
#[cfg(test)]
#[inline(always)]
pub fn dropped(_reason: Counter, _group_id: u32) {}
