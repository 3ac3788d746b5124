//! Rate limits of the ICMP errors the data path answers rejected packets with, as the kernel
//! limits its own (net/ipv4/icmp.c, which kube-proxy's REJECT goes through): a token bucket per
//! client address (`icmp_ratelimit`) and one for the node (`icmp_msgs_per_sec`,
//! `icmp_msgs_burst`).
//!
//! Tokens are kept as time, as the kernel's per-peer bucket does: a bucket gains one
//! nanosecond of credit per nanosecond, up to [`Limit::max_ns`], and an answer costs
//! [`Limit::interval_ns`] of it. The agent does the divisions; the data path only adds,
//! compares and subtracts.

/// The kernel's `icmp_ratelimit`: one ICMP error per second to a destination...
pub const PER_SOURCE_RATE: u32 = 1;
/// ...with bursts of up to `XRLIM_BURST_FACTOR` (6).
pub const PER_SOURCE_BURST: u32 = 6;
/// The kernel's `icmp_msgs_per_sec`: ICMP errors per second from the whole node...
pub const GLOBAL_RATE: u32 = 1000;
/// ...with bursts of up to `icmp_msgs_burst`.
pub const GLOBAL_BURST: u32 = 50;

const NS_PER_SEC: u64 = 1_000_000_000;

/// One token bucket's parameters. All zero: no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    /// Credit one answer costs: 10^9 / rate. 0: every answer is allowed.
    pub interval_ns: u64,
    /// Most credit a bucket holds: burst × `interval_ns`.
    pub max_ns: u64,
}

impl Limit {
    /// `rate` answers per second (0: no limit, and `burst` is ignored) with bursts of
    /// `burst`. A rate beyond 10^9 counts as 10^9.
    pub const fn new(rate: u32, burst: u32) -> Self {
        if rate == 0 {
            return Limit {
                interval_ns: 0,
                max_ns: 0,
            };
        }
        let interval_ns = if rate as u64 >= NS_PER_SEC {
            1
        } else {
            NS_PER_SEC / rate as u64
        };
        Limit {
            interval_ns,
            max_ns: interval_ns * burst as u64,
        }
    }

    /// Whether this limit lets everything through.
    pub const fn is_unlimited(&self) -> bool {
        self.interval_ns == 0
    }
}

/// Value of `LB_REJECT_CFG[0]`, written by the agent. All zero (before the agent writes it):
/// no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectLimits {
    /// Each client address's bucket (`LB_REJECT_SRC`).
    pub per_source: Limit,
    /// The node's bucket (`LB_REJECT_ALL`).
    pub global: Limit,
}

impl RejectLimits {
    /// The kernel's defaults: 1/s with bursts of 6 per client, 1000/s with bursts of 50 in all.
    pub const KERNEL: RejectLimits = RejectLimits {
        per_source: Limit::new(PER_SOURCE_RATE, PER_SOURCE_BURST),
        global: Limit::new(GLOBAL_RATE, GLOBAL_BURST),
    };
}

/// A token bucket's state: the values of `LB_REJECT_SRC` (per client address, IPv4-mapped) and
/// `LB_REJECT_ALL[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Credit left, in nanoseconds.
    pub credit_ns: u64,
    /// `CLOCK_MONOTONIC` when the credit was last topped up.
    pub last_ns: u64,
}

impl TokenBucket {
    /// A bucket first seen at `now_ns`: full, as the kernel starts a new peer's.
    pub const fn full(limit: &Limit, now_ns: u64) -> Self {
        TokenBucket {
            credit_ns: limit.max_ns,
            last_ns: now_ns,
        }
    }

    /// Tops the credit up for the time since it last was (capped at `limit.max_ns`).
    #[inline(always)]
    pub fn refill(&mut self, limit: &Limit, now_ns: u64) {
        // Another CPU may have stamped a slightly later time than this one read.
        let elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed > 0 {
            self.last_ns = now_ns;
            let credit = self.credit_ns.saturating_add(elapsed);
            self.credit_ns = if credit > limit.max_ns {
                limit.max_ns
            } else {
                credit
            };
        }
    }

    /// Whether the bucket holds the credit of one answer.
    #[inline(always)]
    pub fn has_credit(&self, limit: &Limit) -> bool {
        self.credit_ns >= limit.interval_ns
    }

    /// Spends one answer's credit, if there is that much; says whether it did.
    #[inline(always)]
    pub fn take(&mut self, limit: &Limit) -> bool {
        let ok = self.has_credit(limit);
        if ok {
            self.credit_ns -= limit.interval_ns;
        }
        ok
    }
}

const _: () = assert!(core::mem::size_of::<Limit>() == 16);
const _: () = assert!(core::mem::size_of::<RejectLimits>() == 32);
const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);

#[cfg(feature = "user")]
unsafe impl aya::Pod for RejectLimits {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TokenBucket {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_defaults_are_time_per_answer() {
        let limits = RejectLimits::KERNEL;
        assert_eq!(limits.per_source.interval_ns, 1_000_000_000);
        assert_eq!(limits.per_source.max_ns, 6_000_000_000);
        assert_eq!(limits.global.interval_ns, 1_000_000);
        assert_eq!(limits.global.max_ns, 50_000_000);
        assert!(Limit::new(0, 6).is_unlimited());
        assert_eq!(Limit::new(u32::MAX, 2).interval_ns, 1);
    }

    #[test]
    fn a_full_bucket_answers_a_burst_then_one_per_interval() {
        let limit = Limit::new(10, 3);
        let mut bucket = TokenBucket::full(&limit, 1_000);
        assert_eq!((0..5).filter(|_| bucket.take(&limit)).count(), 3);
        bucket.refill(&limit, 1_000 + 99_999_999);
        assert!(!bucket.take(&limit), "a tenth of a second not yet over");
        bucket.refill(&limit, 1_000 + 100_000_000);
        assert!(bucket.take(&limit));
        assert!(!bucket.take(&limit));
        bucket.refill(&limit, 1_000 + 60 * 1_000_000_000);
        assert_eq!(bucket.credit_ns, limit.max_ns, "capped at the burst");
    }

    #[test]
    fn no_limit_always_answers_and_a_clock_behind_changes_nothing() {
        let mut bucket = TokenBucket::default();
        assert!((0..100).all(|_| bucket.take(&Limit::default())));
        let limit = Limit::new(1, 1);
        let mut bucket = TokenBucket::full(&limit, 5_000);
        bucket.refill(&limit, 4_000);
        assert_eq!(bucket, TokenBucket::full(&limit, 5_000));
    }
}
