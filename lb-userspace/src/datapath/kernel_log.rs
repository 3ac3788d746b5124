//! The eBPF programs' log lines (lb-ebpf's `log.rs`: rare drops, written to aya-log's ring
//! buffer `AYA_LOGS`): the level the kernel filters at, fixed when the object is loaded, and
//! the reader that forwards the lines into the agent's `tracing` log.
//!
//! Each loaded object has its own ring buffer (it is not pinned), and after a restart the new
//! object's program is the one swapped into the pinned links, so the new agent reads the
//! lines of the programs that run.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::level_filters::LevelFilter;
use tracing::{debug, error, info, trace, warn};

use super::Datapath;

/// At most this many kernel lines reach the log per second; the rest are counted.
const MAX_LINES_PER_SECOND: u32 = 20;
const SECOND: Duration = Duration::from_secs(1);

/// The most verbose level the programs write lines at (aya-log's `AYA_LOG_LEVEL`); lines
/// above it cost the kernel nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLogLevel(LevelFilter);

impl KernelLogLevel {
    /// No lines at all (nothing reads them).
    pub const OFF: KernelLogLevel = KernelLogLevel(LevelFilter::OFF);

    /// The level for an agent whose log filter enables at most `most_verbose` (for an
    /// `EnvFilter`, its `max_level_hint()`), so the kernel writes every line the agent's log
    /// may show.
    pub fn new(most_verbose: LevelFilter) -> KernelLogLevel {
        KernelLogLevel(most_verbose)
    }

    /// The `AYA_LOG_LEVEL` value: aya-log's level numbers (error 1 to trace 5), 0 for off.
    pub(super) fn global(self) -> &'static u8 {
        static VALUES: [u8; 6] = [
            0,
            aya_log::Level::Error as u8,
            aya_log::Level::Warn as u8,
            aya_log::Level::Info as u8,
            aya_log::Level::Debug as u8,
            aya_log::Level::Trace as u8,
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

/// Why the kernel's lines cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KernelLogError {
    #[error("opening the programs' log ring buffer failed")]
    Open(#[from] aya_log::Error),
    #[error("watching the programs' log ring buffer failed")]
    Watch(#[from] io::Error),
}

/// Forwards the programs' log lines into the agent's log.
pub struct KernelLog {
    ring: AsyncFd<EbpfLogger<Forward>>,
}

impl KernelLog {
    /// Waits until the programs have written lines, then logs them. Cancel-safe: lines not
    /// yet logged stay in the ring buffer.
    pub async fn forward(&mut self) -> io::Result<()> {
        let mut ready = self.ring.readable_mut().await?;
        ready.get_inner_mut().flush();
        ready.clear_ready();
        Ok(())
    }

    /// Logs the lines written so far without waiting (e.g. before exiting).
    pub fn flush(&mut self) {
        self.ring.get_mut().flush();
    }
}

impl Datapath {
    /// Starts reading the programs' log lines. Must run inside a Tokio runtime. Once only:
    /// the ring buffer moves into the returned reader.
    pub fn kernel_log(&mut self) -> Result<KernelLog, KernelLogError> {
        let logger = EbpfLogger::init_with_logger(&mut self.ebpf, Forward::default())?;
        // SAFETY: the logger owns the ring buffer's descriptor for its whole life and its
        // `as_raw_fd` always returns that descriptor.
        let ring = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(KernelLog { ring })
    }
}

/// Hands aya-log's records (the `log` crate's) to `tracing`, as `kernel: <line>` at the
/// line's level, at most [`MAX_LINES_PER_SECOND`].
#[derive(Default)]
struct Forward {
    budget: Mutex<Budget>,
}

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let admitted = self
            .budget
            .lock()
            .map(|mut budget| budget.admit(Instant::now()))
            .unwrap_or(Some(0));
        let Some(skipped) = admitted else { return };
        if skipped > 0 {
            warn!("kernel: {skipped} lines not logged (more than {MAX_LINES_PER_SECOND} a second)");
        }
        let line = record.args();
        match record.level() {
            log::Level::Error => error!("kernel: {line}"),
            log::Level::Warn => warn!("kernel: {line}"),
            log::Level::Info => info!("kernel: {line}"),
            log::Level::Debug => debug!("kernel: {line}"),
            log::Level::Trace => trace!("kernel: {line}"),
        }
    }

    fn flush(&self) {}
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
        assert_eq!(global(LevelFilter::WARN), aya_log::Level::Warn as u8);
        assert_eq!(global(LevelFilter::INFO), aya_log::Level::Info as u8);
        assert_eq!(global(LevelFilter::DEBUG), aya_log::Level::Debug as u8);
        assert_eq!(*KernelLogLevel::OFF.global(), 0);
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
