//! The capabilities loading and attaching the programs takes, checked before anything is
//! loaded, so a missing one is one line naming it (without `CAP_PERFMON` the kernel's
//! verifier would answer with a page of its log instead).

use std::fs;

use super::AgentError;

/// Where the kernel shows this process's effective capabilities (`CapEff`).
const STATUS: &str = "/proc/self/status";
/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with the names of the capabilities this process lacks; passes if its status cannot
/// be read (the kernel then has the last word).
pub(super) fn check() -> Result<(), AgentError> {
    let Some(effective) = fs::read_to_string(STATUS).ok().and_then(|s| cap_eff(&s)) else {
        return Ok(());
    };
    let missing = missing(effective);
    if missing.is_empty() {
        return Ok(());
    }
    Err(AgentError::MissingCapabilities(missing.join(", ")))
}

/// The `CapEff` mask of a `/proc/<pid>/status` text.
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Which of `CAP_BPF`, `CAP_PERFMON` and `CAP_NET_ADMIN` the mask `effective` lacks;
/// `CAP_SYS_ADMIN` stands in for the first two, as the kernel lets it.
fn missing(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    [
        ("CAP_BPF", has(CAP_BPF) || sys_admin),
        ("CAP_PERFMON", has(CAP_PERFMON) || sys_admin),
        ("CAP_NET_ADMIN", has(CAP_NET_ADMIN)),
    ]
    .into_iter()
    .filter_map(|(name, held)| (!held).then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: u64 = 1 << CAP_BPF | 1 << CAP_PERFMON | 1 << CAP_NET_ADMIN;

    #[test]
    fn names_each_missing_capability() {
        assert!(missing(THREE).is_empty());
        assert!(missing(u64::MAX).is_empty());
        assert_eq!(missing(THREE & !(1 << CAP_PERFMON)), ["CAP_PERFMON"]);
        assert_eq!(missing(0), ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        // CAP_SYS_ADMIN covers BPF and PERFMON, not NET_ADMIN.
        assert_eq!(missing(1 << CAP_SYS_ADMIN), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn reads_the_effective_mask_of_a_status_file() {
        let status = "Name:\tlb-agent\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        assert_eq!(cap_eff(status), Some(THREE));
        assert_eq!(cap_eff("Name:\tx\n"), None);
        assert!(cap_eff(&fs::read_to_string(STATUS).unwrap()).is_some());
    }
}
