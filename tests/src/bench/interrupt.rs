//! Ctrl-C and SIGTERM stop a benchmark between steps, so its guards still remove every
//! namespace, rule and process (a signal's default action would skip them).

use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{BenchError, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM request a stop instead of killing the process.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Fails once a stop was requested.
pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err(BenchError::Check("interrupted".to_string()));
    }
    Ok(())
}
