//! The eBPF programs' events (lb-ebpf's `event.rs`: typed `lb_common::event::Event`s in the
//! ring buffer `LB_EVENTS`): the level the kernel filters drops at, fixed when the object is
//! loaded, and the reader that formats the drops into the agent's `tracing` log and hands
//! every event to the caller (for `lb-agent monitor`).
//!
//! Each loaded object has its own ring buffer (it is not pinned), and after a restart the new
//! object's program is the one swapped into the pinned links, so the new agent reads the
//! events of the programs that run.

use std::io;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use lb_common::event::{self, level, Event, EVENTS_MAP};
use lb_common::Counter;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::level_filters::LevelFilter;
use tracing::{debug, error, info, trace, warn};

use super::Datapath;

/// At most this many kernel lines reach the log per second; the rest are counted.
const MAX_LINES_PER_SECOND: u32 = 20;
const SECOND: Duration = Duration::from_secs(1);

/// The most verbose level the programs write events at (the object's
/// `lb_common::event::LEVEL_GLOBAL`); events above it cost the kernel nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLogLevel(LevelFilter);

impl KernelLogLevel {
    /// No events at all (nothing reads them).
    pub const OFF: KernelLogLevel = KernelLogLevel(LevelFilter::OFF);

    /// The level for an agent whose log filter enables at most `most_verbose` (for an
    /// `EnvFilter`, its `max_level_hint()`), so the kernel writes every event the agent's log
    /// may show.
    pub fn new(most_verbose: LevelFilter) -> KernelLogLevel {
        KernelLogLevel(most_verbose)
    }

    /// The `LEVEL_GLOBAL` value: error 1 to trace 5, 0 for off.
    pub(super) fn global(self) -> &'static u8 {
        static VALUES: [u8; 6] = [
            level::OFF,
            level::ERROR,
            level::WARN,
            level::INFO,
            level::DEBUG,
            level::TRACE,
        ];
        let index = match self.0.into_level() {
            None => 0,
            Some(tracing::Level::ERROR) => 1,
            Some(tracing::Level::WARN) => 2,
            Some(tracing::Level::INFO) => 3,
            Some(tracing::Level::DEBUG) => 4,
            Some(tracing::Level::TRACE) => 5,
        };
        &VALUES[index]
    }
}

/// Why the kernel's events cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KernelLogError {
    #[error("the object has no ring buffer {EVENTS_MAP}")]
    Missing,
    #[error("opening the programs' ring buffer {EVENTS_MAP} failed")]
    Open(#[from] aya::maps::MapError),
    #[error("watching the programs' ring buffer {EVENTS_MAP} failed")]
    Watch(#[from] io::Error),
}

/// Formats the programs' drops into the agent's log.
pub struct KernelLog {
    ring: AsyncFd<RingBuf<MapData>>,
    budget: Budget,
}

impl KernelLog {
    /// Waits until the programs have written events, then logs them and hands each to
    /// `each`. Cancel-safe: events not yet read stay in the ring buffer.
    pub async fn forward(&mut self, mut each: impl FnMut(&Event)) -> io::Result<()> {
        let mut ready = self.ring.readable_mut().await?;
        let ring = ready.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(event) = read_event(&item) {
                log_event(&event, &mut self.budget);
                each(&event);
            }
        }
        ready.clear_ready();
        Ok(())
    }

    /// Logs the events written so far without waiting (e.g. before exiting).
    pub fn flush(&mut self) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if let Some(event) = read_event(&item) {
                log_event(&event, &mut self.budget);
            }
        }
    }
}

impl Datapath {
    /// The programs' ring buffer, to read without waiting (the per-packet benchmark drains
    /// it); the agent reads it through [`Datapath::kernel_log`]. Once only: the ring buffer
    /// moves out of the object.
    pub fn events(&mut self) -> Result<RingBuf<MapData>, KernelLogError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(KernelLogError::Missing)?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Starts reading the programs' events. Must run inside a Tokio runtime. Once only: the
    /// ring buffer moves into the returned reader.
    pub fn kernel_log(&mut self) -> Result<KernelLog, KernelLogError> {
        let ring = self.events()?;
        // SAFETY: the ring buffer owns its map's descriptor for its whole life and its
        // `as_raw_fd` always returns that descriptor.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(KernelLog {
            ring,
            budget: Budget::default(),
        })
    }
}

/// The event in a ring buffer entry; `None` for an entry of another size.
fn read_event(bytes: &[u8]) -> Option<Event> {
    (bytes.len() == size_of::<Event>())
        // SAFETY: the length is an Event's, Event is Pod, and the read is unaligned.
        .then(|| unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() })
}

/// The line for a drop event: `service <id>: <what happened>`; `None` for another event.
fn drop_line(event: &Event) -> Option<String> {
    if event.kind != event::kind::DROP {
        return None;
    }
    let text = drop_text(event.counter()?)?;
    Some(format!("service {}: {text}", event.group_id))
}

/// What a drop for `reason` means, for the log.
fn drop_text(reason: Counter) -> Option<&'static str> {
    Some(match reason {
        Counter::DropNoBackend => {
            "dropped a new flow: no backend on this path (a traffic policy Local without a \
             local endpoint)"
        }
        Counter::DropBackendMissing => {
            "dropped a packet: its backend slot or backend entry is missing (maps changed \
             behind the agent, or an update in progress)"
        }
        Counter::DropConntrackFull => {
            "dropped a new flow: the conntrack map refused its entry (full?)"
        }
        Counter::DropRewriteFailed => "dropped a packet: rewriting it failed",
        Counter::DropSnatPortsExhausted => "dropped a new flow: no free masquerading port",
        Counter::DropUnexposedPort => {
            "dropped a new flow to a ClusterIP port no Service exposes: its source gets no ICMP \
             error"
        }
        Counter::DropSourceRange => {
            "dropped a new flow: its source is outside loadBalancerSourceRanges"
        }
        Counter::DropRejectSuppressed => {
            "dropped a new flow instead of rejecting it: its source or the node is over the \
             reject rate limit"
        }
        Counter::DropUnallocatedServiceIp => {
            "dropped a new flow to an address in the service CIDRs that no Service holds"
        }
        Counter::DropRejectSource => {
            "dropped a new flow to a Service without endpoints: its source (zero, loopback, \
             multicast or broadcast) gets no ICMP error"
        }
        _ => return None,
    })
}

/// Logs `event` as `kernel: <line>` at its level, within `budget`.
fn log_event(event: &Event, budget: &mut Budget) {
    let Some(line) = drop_line(event) else { return };
    let Some(skipped) = budget.admit(Instant::now()) else {
        return;
    };
    if skipped > 0 {
        warn!("kernel: {skipped} lines not logged (more than {MAX_LINES_PER_SECOND} a second)");
    }
    match event.level {
        level::ERROR => error!("kernel: {line}"),
        level::WARN => warn!("kernel: {line}"),
        level::INFO => info!("kernel: {line}"),
        level::DEBUG => debug!("kernel: {line}"),
        _ => trace!("kernel: {line}"),
    }
}

/// Lines left to log in the current one-second window.
#[derive(Debug, Default)]
struct Budget {
    window_start: Option<Instant>,
    logged: u32,
    skipped: u64,
}

impl Budget {
    /// Whether a line arriving `now` is logged: `Some(lines skipped before it)` (reported
    /// with the first line of a new window), or `None` when this window's budget is spent.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.window_start {
            Some(start) if now.duration_since(start) < SECOND => {
                if self.logged >= MAX_LINES_PER_SECOND {
                    self.skipped += 1;
                    return None;
                }
                self.logged += 1;
                Some(0)
            }
            _ => {
                self.window_start = Some(now);
                self.logged = 1;
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_logs_the_most_verbose_level_the_agent_shows() {
        let global = |filter| *KernelLogLevel::new(filter).global();
        assert_eq!(global(LevelFilter::OFF), 0);
        assert_eq!(global(LevelFilter::WARN), level::WARN);
        assert_eq!(global(LevelFilter::INFO), level::INFO);
        assert_eq!(global(LevelFilter::DEBUG), level::DEBUG);
        assert_eq!(*KernelLogLevel::OFF.global(), 0);
    }

    #[test]
    fn every_drop_has_a_line_naming_its_service() {
        for reason in Counter::ALL {
            let event = Event {
                timestamp_ns: 0,
                group_id: 7,
                reason: reason as u32,
                kind: event::kind::DROP,
                level: event::drop_level(reason),
                ..Event::ZERO
            };
            let line = drop_line(&event);
            assert_eq!(line.is_some(), event.level != level::OFF, "{reason:?}");
            if let Some(line) = line {
                assert!(line.starts_with("service 7: dropped a "), "{line}");
            }
        }
    }

    #[test]
    fn an_entry_of_another_size_is_no_event() {
        assert_eq!(read_event(&[0; 16]), None);
        let event = read_event(&[0; size_of::<Event>()]).unwrap();
        assert_eq!(drop_line(&event), None, "kind 0 is no drop");
    }

    #[test]
    fn lines_beyond_the_budget_are_counted_and_reported_in_the_next_window() {
        let mut budget = Budget::default();
        let start = Instant::now();
        for _ in 0..MAX_LINES_PER_SECOND {
            assert_eq!(budget.admit(start), Some(0));
        }
        assert_eq!(budget.admit(start + Duration::from_millis(500)), None);
        assert_eq!(budget.admit(start + Duration::from_millis(900)), None);
        assert_eq!(budget.admit(start + SECOND), Some(2));
        assert_eq!(budget.admit(start + SECOND), Some(0));
    }
}
