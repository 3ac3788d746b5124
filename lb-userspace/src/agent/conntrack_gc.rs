//! Conntrack garbage collection: every `--conntrack-gc-interval` a task walks the conntrack
//! map in batches and deletes the flows idle past the timeout of their state, both entries of
//! a flow together. The entries a walk keeps are what `lbagent_conntrack_entries` reports until
//! the next walk, so the count is at most one interval old and a scrape never reads the map.
//!
//! A flow's state is read from the flags of its two entries (the data path sets them):
//! unanswered (no [`ct_flags::SEEN_REPLY`]), answered, or closing ([`ct_flags::CLOSING`],
//! TCP after a FIN or RST, SCTP after an ABORT or SHUTDOWN COMPLETE; SCTP takes the TCP
//! timeouts). Its idle time is since the later `last_seen_ns` of its entries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lb_common::{conntrack::ct_flags, CtKey, CtValue, IPPROTO_SCTP, IPPROTO_TCP};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::datapath::{DatapathError, DatapathMaps};
use crate::metrics::ConntrackGcMetrics;

/// Idle timeouts per flow state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP, the backend has not answered (SYN sent).
    pub tcp_syn: Duration,
    /// TCP, answered (established).
    pub tcp_established: Duration,
    /// TCP after a FIN or RST either way (closing or closed).
    pub tcp_closing: Duration,
    /// UDP (and other protocols), unanswered.
    pub udp: Duration,
    /// UDP, answered.
    pub udp_stream: Duration,
}

impl Timeouts {
    /// The idle timeout of a flow of `proto` whose entries carry `flags` (both ORed).
    pub fn of(&self, proto: u8, flags: u8) -> Duration {
        let answered = flags & ct_flags::SEEN_REPLY != 0;
        match proto {
            IPPROTO_TCP | IPPROTO_SCTP if flags & ct_flags::CLOSING != 0 => self.tcp_closing,
            IPPROTO_TCP | IPPROTO_SCTP if answered => self.tcp_established,
            IPPROTO_TCP | IPPROTO_SCTP => self.tcp_syn,
            _ if answered => self.udp_stream,
            _ => self.udp,
        }
    }
}

/// The keys of the entries among `entries` whose flow has been idle past its timeout at
/// `now_ns` (`CLOCK_MONOTONIC`, as the programs stamp): both entries of such a flow, judged
/// together; an entry whose pair is missing is judged alone.
pub fn expired(entries: &[(CtKey, CtValue)], now_ns: u64, timeouts: &Timeouts) -> Vec<CtKey> {
    let by_key: HashMap<CtKey, &CtValue> = entries.iter().map(|(k, v)| (*k, v)).collect();
    entries
        .iter()
        .filter(|(key, value)| {
            let pair_key = value.pair_key(key);
            let pair = by_key
                .get(&pair_key)
                .filter(|pair| pair.pair_key(&pair_key) == *key);
            let (last_seen, flags) = match pair {
                Some(pair) => (
                    value.last_seen_ns.max(pair.last_seen_ns),
                    value.flags | pair.flags,
                ),
                None => (value.last_seen_ns, value.flags),
            };
            let timeout = timeouts.of(key.proto, flags).as_nanos();
            u128::from(now_ns.saturating_sub(last_seen)) > timeout
        })
        .map(|(key, _)| *key)
        .collect()
}

/// What one walk did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Collected {
    /// Entries read.
    pub walked: usize,
    /// Entries deleted.
    pub collected: u32,
    pub duration: Duration,
}

/// One walk: reads every entry, deletes the expired ones.
pub fn collect(maps: &mut DatapathMaps, timeouts: &Timeouts) -> Result<Collected, DatapathError> {
    let started = Instant::now();
    let entries = maps.conntrack()?;
    let keys = expired(&entries, monotonic_now_ns(), timeouts);
    let collected = maps.remove_conntrack(&keys)?;
    Ok(Collected {
        walked: entries.len(),
        collected,
        duration: started.elapsed(),
    })
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock the programs stamp with (to the tick).
fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Walks `maps` at once and then every `interval` on a blocking thread, recording each walk in
/// `metrics`, until the returned task is aborted. The first walk at start gives the metrics a
/// count at once and collects what an earlier agent's flows left idle.
pub(super) fn spawn(
    maps: DatapathMaps,
    timeouts: Timeouts,
    interval: Duration,
    metrics: ConntrackGcMetrics,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut maps = Some(maps);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while let Some(mut walking) = maps.take() {
            tick.tick().await;
            let walked = tokio::task::spawn_blocking(move || {
                let result = collect(&mut walking, &timeouts);
                (walking, result)
            })
            .await;
            match walked {
                Ok((back, result)) => {
                    maps = Some(back);
                    match result {
                        Ok(gc) => {
                            debug!(
                                "conntrack gc: {} of {} entries collected in {:?}",
                                gc.collected, gc.walked, gc.duration
                            );
                            metrics.record(gc.walked, gc.collected, gc.duration);
                        }
                        Err(e) => warn!("conntrack gc failed, retrying at the next walk: {e}"),
                    }
                }
                Err(e) => warn!("conntrack gc stopped: {e}"),
            }
        }
    })
}

#[cfg(test)]
mod tests;
