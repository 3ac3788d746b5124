//! Typed events the data path writes to the ring buffer [`EVENTS_MAP`] for what the kernel
//! has to say (today: the rare drops an operator should hear about), formatted by the agent.
//!
//! Each event has a level; the kernel writes only events at or below the level the agent set
//! in the object's global [`LEVEL_GLOBAL`] at load (from `--log-level`), so a disabled level
//! costs one comparison with a constant the verifier prunes, and the ordinary path writes
//! nothing.

use crate::Counter;

/// The ring buffer's name in the object. Each loaded object has its own (it is not pinned).
pub const EVENTS_MAP: &str = "LB_EVENTS";
/// The ring buffer's size in bytes (a power-of-2 multiple of the page size): 64 KiB.
pub const EVENTS_BYTES: u32 = 64 * 1024;
/// The object's global (a `u8`) holding the most verbose [`level`] the kernel writes.
pub const LEVEL_GLOBAL: &str = "LB_EVENT_LEVEL";

/// Event levels, as `tracing`'s from error (1) to trace (5); 0 writes nothing.
pub mod level {
    pub const OFF: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const WARN: u8 = 2;
    pub const INFO: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const TRACE: u8 = 5;
}

/// What an [`Event`] reports.
pub mod kind {
    /// A packet was dropped for [`super::Event::reason`].
    pub const DROP: u8 = 1;
}

/// One event in [`EVENTS_MAP`]: fixed size, written in place by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` when it happened (monotonic, since boot).
    pub timestamp_ns: u64,
    /// The service's slot group id (0: none known).
    pub group_id: u32,
    /// The [`Counter`] counted for it, as its index.
    pub reason: u32,
    /// A [`kind`] constant.
    pub kind: u8,
    /// Its [`level`].
    pub level: u8,
    pub _pad: [u8; 6],
}

const _: () = assert!(size_of::<Event>() == 24);

impl Event {
    /// The counter named by [`Event::reason`], if it is one.
    pub fn counter(&self) -> Option<Counter> {
        Counter::ALL.get(self.reason as usize).copied()
    }
}

/// The level a drop for `reason` is reported at, [`level::OFF`] for a counter that is not a
/// drop: trouble (a backend missing mid-update, conntrack refusing the flow, a failed
/// rewrite, masquerading ports exhausted) at warn; the expected drops (no backend with a
/// traffic policy Local, a reject or an unexposed ClusterIP port from a source no ICMP error
/// goes to, a source outside `loadBalancerSourceRanges`, a reject over its rate limit, an
/// unallocated address of the service CIDRs) at debug.
#[inline(always)]
pub const fn drop_level(reason: Counter) -> u8 {
    match reason {
        Counter::DropBackendMissing
        | Counter::DropConntrackFull
        | Counter::DropRewriteFailed
        | Counter::DropSnatPortsExhausted => level::WARN,
        Counter::DropNoBackend
        | Counter::DropUnexposedPort
        | Counter::DropSourceRange
        | Counter::DropRejectSuppressed
        | Counter::DropUnallocatedServiceIp
        | Counter::DropRejectSource => level::DEBUG,
        _ => level::OFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_and_only_a_drop_has_a_level() {
        for reason in Counter::ALL {
            let is_drop = reason.name().starts_with("drop_");
            assert_eq!(drop_level(reason) != level::OFF, is_drop, "{reason:?}");
        }
    }

    #[test]
    fn an_event_names_its_counter_by_index() {
        let event = Event {
            timestamp_ns: 1,
            group_id: 7,
            reason: Counter::DropConntrackFull as u32,
            kind: kind::DROP,
            level: level::WARN,
            _pad: [0; 6],
        };
        assert_eq!(event.counter(), Some(Counter::DropConntrackFull));
        let bogus = Event {
            reason: Counter::COUNT,
            ..event
        };
        assert_eq!(bogus.counter(), None);
    }
}
