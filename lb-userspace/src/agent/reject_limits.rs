//! The rate limits of the ICMP errors the data path rejects packets with (`LB_REJECT_CFG`):
//! flags with the kernel's defaults, which kube-proxy's REJECT is limited by.

use clap::builder::RangedU64ValueParser;
use lb_common::reject_limit::{
    Limit, GLOBAL_BURST, GLOBAL_RATE, PER_SOURCE_BURST, PER_SOURCE_RATE,
};
use lb_common::RejectLimits;

/// A rate in answers per second: 0 (no limit) to 10^9.
fn rate() -> RangedU64ValueParser<u32> {
    RangedU64ValueParser::new().range(0..=1_000_000_000)
}

/// A burst in answers: at least one.
fn burst() -> RangedU64ValueParser<u32> {
    RangedU64ValueParser::new().range(1..=u64::from(u32::MAX))
}

/// `lb-agent run`'s reject rate limit flags. A suppressed reject is dropped and counted
/// (`drop_reject_suppressed`).
#[derive(Clone, Copy, Debug, clap::Args)]
#[command(next_help_heading = "Reject rate limits (as the kernel's ICMP rate limits)")]
pub struct RejectLimitFlags {
    /// Rejects (ICMP port unreachable) answered per second to one client address, 0 for no
    /// limit: the kernel's net.ipv4.icmp_ratelimit (1000 ms).
    #[arg(long, value_name = "PER_SEC", default_value_t = PER_SOURCE_RATE, value_parser = rate())]
    pub reject_rate_per_source: u32,
    /// Rejects one client address may get at once: the kernel's XRLIM_BURST_FACTOR.
    #[arg(long, value_name = "N", default_value_t = PER_SOURCE_BURST, value_parser = burst())]
    pub reject_burst_per_source: u32,
    /// Rejects answered per second by the node in all, 0 for no limit: the kernel's
    /// net.ipv4.icmp_msgs_per_sec.
    #[arg(long, value_name = "PER_SEC", default_value_t = GLOBAL_RATE, value_parser = rate())]
    pub reject_rate_global: u32,
    /// Rejects the node may answer at once: the kernel's net.ipv4.icmp_msgs_burst.
    #[arg(long, value_name = "N", default_value_t = GLOBAL_BURST, value_parser = burst())]
    pub reject_burst_global: u32,
}

impl RejectLimitFlags {
    /// The kernel's defaults.
    pub const KERNEL: RejectLimitFlags = RejectLimitFlags {
        reject_rate_per_source: PER_SOURCE_RATE,
        reject_burst_per_source: PER_SOURCE_BURST,
        reject_rate_global: GLOBAL_RATE,
        reject_burst_global: GLOBAL_BURST,
    };

    /// The value of `LB_REJECT_CFG[0]`.
    pub fn limits(&self) -> RejectLimits {
        RejectLimits {
            per_source: Limit::new(self.reject_rate_per_source, self.reject_burst_per_source),
            global: Limit::new(self.reject_rate_global, self.reject_burst_global),
        }
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        let limit = |rate, burst| match rate {
            0 => "no limit".to_string(),
            rate => format!("{rate}/s, bursts of {burst}"),
        };
        format!(
            "reject rate limits: per client {}; node {}",
            limit(self.reject_rate_per_source, self.reject_burst_per_source),
            limit(self.reject_rate_global, self.reject_burst_global),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: RejectLimitFlags,
    }

    fn parse(args: &[&str]) -> Result<RejectLimitFlags, clap::Error> {
        Cli::try_parse_from([&["lb-agent"], args].concat()).map(|cli| cli.flags)
    }

    #[test]
    fn the_defaults_are_the_kernels() {
        let flags = parse(&[]).unwrap();
        assert_eq!(flags.limits(), RejectLimits::KERNEL);
        assert_eq!(RejectLimitFlags::KERNEL.limits(), RejectLimits::KERNEL);
        assert_eq!(
            flags.describe(),
            "reject rate limits: per client 1/s, bursts of 6; node 1000/s, bursts of 50"
        );
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let flags = parse(&["--reject-rate-per-source", "0", "--reject-rate-global", "0"]);
        let flags = flags.unwrap();
        assert_eq!(flags.limits(), RejectLimits::default());
        assert!(flags
            .describe()
            .ends_with("per client no limit; node no limit"));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        for (flag, value) in [
            ("--reject-burst-per-source", "0"),
            ("--reject-burst-global", "-1"),
            ("--reject-rate-global", "1000000001"),
            ("--reject-rate-per-source", "fast"),
        ] {
            let arg = format!("{flag}={value}");
            let error = parse(&[&arg]).expect_err(flag).to_string();
            assert!(error.contains(flag), "{error}");
        }
    }
}
