//! Why a packet was not translated, and what happens to it then.

use lb_common::Counter;

/// What the hook does with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the kernel carry on (translated or untouched).
    Pass,
    /// Drop the packet.
    Drop,
    /// Send the packet, rewritten into a reply, back out of the interface it arrived on.
    SendBack,
    /// Hand the translated packet straight to its egress device (`reply_path::REDIRECT`).
    Forward,
}

/// A packet the program did not translate: the counter naming the reason, and the service the
/// packet belonged to (0 if none).
///
/// Deliberately plain fields rather than an enum with payloads: where a variant has no
/// payload LLVM may spill an undefined register for it, which the verifier rejects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    pub reason: Counter,
    pub group_id: u32,
}

impl Error {
    /// A packet that is not ours or not parseable; it passes untouched.
    #[inline(always)]
    pub const fn untouched(reason: Counter) -> Self {
        Error {
            reason,
            group_id: 0,
        }
    }

    /// A packet of a service that cannot be translated; it is dropped rather than leaked to
    /// the VIP. `reason` is one of the `Drop*` counters.
    #[inline(always)]
    pub const fn dropped(reason: Counter, group_id: u32) -> Self {
        Error { reason, group_id }
    }

    #[inline(always)]
    pub fn verdict(self) -> Verdict {
        match self.reason {
            Counter::DropNoBackend
            | Counter::DropBackendMissing
            | Counter::DropConntrackFull
            | Counter::DropRewriteFailed
            | Counter::DropSnatPortsExhausted
            | Counter::DropUnexposedPort
            | Counter::DropSourceRange
            | Counter::DropRejectSuppressed
            | Counter::DropUnallocatedServiceIp
            | Counter::DropRejectSource => Verdict::Drop,
            _ => Verdict::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_drop_counters_drop() {
        for reason in Counter::ALL {
            let dropped = Error::dropped(reason, 1).verdict() == Verdict::Drop;
            assert_eq!(dropped, reason.name().starts_with("drop_"), "{reason:?}");
        }
    }
}
