//! Typed events the data path writes to the ring buffer [`EVENTS_MAP`] for what the kernel
//! has to say, formatted by the agent: into its log (drops) and for `lb-agent monitor`
//! (drops, rejects, new flows, masquerade allocations).
//!
//! Drops have a level; the kernel writes one when its level is at or below the level the
//! agent set in the object's global [`LEVEL_GLOBAL`] at load (from `--log-level`), or when a
//! monitor listens. Rejects, new flows and masquerade allocations are written only while a
//! monitor listens: the agent keeps the number of connected monitor clients in
//! [`crate::maps::MONITOR`], which the kernel reads only on the paths that would write one
//! (never for a packet of an established flow). An event the full ring buffer has no room for
//! is counted as `Counter::EventsLost`; the packet's verdict never depends on it. The cgroup
//! socket programs write theirs (a socket call translated or refused, [`hook::SOCKET`]) only
//! while a monitor listens.

use crate::Counter;

/// The ring buffer's name in the object. Each loaded object has its own (it is not pinned).
pub const EVENTS_MAP: &str = "LB_EVENTS";
/// The ring buffer's size in bytes (a power-of-2 multiple of the page size): 256 KiB, room for
/// about 2,500 events (and their 8-byte headers) between two reads by the agent.
pub const EVENTS_BYTES: u32 = 256 * 1024;
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
    /// A new flow was answered with an ICMP port unreachable, or a socket call failed with
    /// `ECONNREFUSED` ([`super::Event::reason`]: `reject_no_backend` or
    /// `reject_unexposed_port`).
    pub const REJECT: u8 = 2;
    /// A new flow got a backend ([`super::Event::backend_addr`]).
    pub const NEW_FLOW: u8 = 3;
    /// A new flow got a backend and was source-NATed to [`super::Event::nat_addr`] and a
    /// port allocated for it (reason `masqueraded`, or `hairpinned` for a pod balanced to
    /// itself).
    pub const MASQUERADE: u8 = 4;
}

/// Where an [`Event`] happened.
pub mod hook {
    /// XDP on the external interface.
    pub const XDP: u8 = 1;
    /// TC ingress.
    pub const TC_INGRESS: u8 = 2;
    /// TC egress.
    pub const TC_EGRESS: u8 = 3;
    /// A cgroup socket program (`connect4`, `sendmsg4`): a socket call, not a packet
    /// ([`super::Event::ifindex`] 0).
    pub const SOCKET: u8 = 4;
}

/// One event in [`EVENTS_MAP`]: fixed size, written in place by the kernel. Addresses are
/// IPv4-mapped IPv6 addresses (as conntrack keys have them), ports in network byte order; a
/// field an event has nothing for is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` when it happened (monotonic, since boot).
    pub timestamp_ns: u64,
    /// The service's slot group id (0: none known).
    pub group_id: u32,
    /// The [`Counter`] counted for it, as its index.
    pub reason: u32,
    /// The interface the packet was seen on (0 for a socket call).
    pub ifindex: u32,
    /// A [`kind`] constant.
    pub kind: u8,
    /// Its [`level`] (drops; 0 for the others).
    pub level: u8,
    /// A [`hook`] constant.
    pub hook: u8,
    /// The IP protocol (6 TCP, 17 UDP); 0 when the packet was not parsed that far.
    pub proto: u8,
    /// The packet's source and destination as it arrived; a socket call's local address as
    /// bound (zero while the kernel has not picked it) and the destination it asked for.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// The backend a new flow got.
    pub backend_addr: [u8; 16],
    /// The address a masqueraded flow's source was translated to.
    pub nat_addr: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub backend_port: [u8; 2],
    pub nat_port: [u8; 2],
}

const _: () = assert!(size_of::<Event>() == 96);

impl Event {
    /// An event of nothing, every field zero: the kernel fills one in place from it.
    pub const ZERO: Event = Event {
        timestamp_ns: 0,
        group_id: 0,
        reason: 0,
        ifindex: 0,
        kind: 0,
        level: 0,
        hook: 0,
        proto: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        backend_addr: [0; 16],
        nat_addr: [0; 16],
        src_port: [0; 2],
        dst_port: [0; 2],
        backend_port: [0; 2],
        nat_port: [0; 2],
    };

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
            ..Event::ZERO
        };
        assert_eq!(event.counter(), Some(Counter::DropConntrackFull));
        let bogus = Event {
            reason: Counter::COUNT,
            ..event
        };
        assert_eq!(bogus.counter(), None);
    }
}
