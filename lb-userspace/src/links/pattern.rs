//! `--iface-pattern`: shell-style globs (`*`, `?`) naming the pod-facing interfaces.

use std::fmt;
use std::str::FromStr;

/// Host-side interface names common CNIs give pod veths: plain veth pairs (bridge, ptp and
/// kindnet), Calico, Cilium, generic CNI tools, AWS VPC CNI, GKE and Azure; and the overlay
/// devices through which other nodes' pods answer: flannel's `flannel.1` (`flannel-v6.1`),
/// Calico's `vxlan.calico` (`vxlan-v6.calico`), Weave's `vxlan-6784`, Cilium's
/// `cilium_vxlan` and `cilium_geneve`. Layer-3 tunnels that match (flannel's WireGuard
/// `flannel-wg`) are skipped: the TC program reads Ethernet frames.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "veth*",
    "cali*",
    "lxc*",
    "cni*",
    "eni*",
    "gke*",
    "azv*",
    "flannel*",
    "vxlan*",
    "cilium_vxlan",
    "cilium_geneve",
];

/// Longest interface name Linux allows (`IFNAMSIZ` - 1).
const MAX_IFACE_NAME: usize = 15;

/// A list of interface name globs; a name matching any of them is pod-facing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfacePatterns(Vec<String>);

/// A pattern that can never match an interface name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("an interface pattern must not be empty")]
    Empty,
    #[error(
        "interface pattern {0:?} cannot match: interface names have no '/', ':' or whitespace"
    )]
    ImpossibleCharacter(String),
}

impl IfacePatterns {
    /// Patterns from `--iface-pattern` values, or [`DEFAULT_PATTERNS`] when there are none.
    pub fn new(patterns: Vec<IfacePattern>) -> Self {
        if patterns.is_empty() {
            return Self::default();
        }
        Self(patterns.into_iter().map(|p| p.0).collect())
    }

    /// Whether `name` matches one of the patterns.
    pub fn matches(&self, name: &str) -> bool {
        name.len() <= MAX_IFACE_NAME && self.0.iter().any(|p| glob(p.as_bytes(), name.as_bytes()))
    }
}

impl Default for IfacePatterns {
    fn default() -> Self {
        Self(DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect())
    }
}

impl fmt::Display for IfacePatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// One validated `--iface-pattern`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfacePattern(String);

impl FromStr for IfacePattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()) {
            return Err(PatternError::ImpossibleCharacter(text.to_string()));
        }
        Ok(Self(text.to_string()))
    }
}

/// Shell-style matching: `*` any run of characters, `?` one character.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was and the name position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if *c == b'?' || *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> IfacePatterns {
        IfacePatterns::new(list.iter().map(|p| p.parse().unwrap()).collect())
    }

    #[test]
    fn the_defaults_match_cni_veths_and_overlays_but_not_the_node_or_bridges() {
        let defaults = IfacePatterns::default();
        for pod in [
            "veth1a2b3c4d",
            "cali12345678901",
            "lxc0a1b2c",
            "cni-abc",
            "eni1234",
            "flannel.1",
            "flannel-v6.1",
            "vxlan.calico",
            "vxlan-v6.calico",
            "vxlan-6784",
            "cilium_vxlan",
            "cilium_geneve",
        ] {
            assert!(defaults.matches(pod), "{pod}");
        }
        for node in [
            "lo",
            "eth0",
            "ens3",
            "enp0s31f6",
            "docker0",
            "br-1234",
            "wlan0",
            "cilium_host",
            "kube-ipvs0",
            "nodelocaldns",
        ] {
            assert!(!defaults.matches(node), "{node}");
        }
    }

    #[test]
    fn globs_take_stars_and_question_marks_anywhere() {
        let p = patterns(&["lbt*-h?", "exact"]);
        assert!(p.matches("lbt123-h0"));
        assert!(p.matches("lbt-hx"));
        assert!(!p.matches("lbt123-h10"));
        assert!(p.matches("exact"));
        assert!(!p.matches("exactly"));
        assert!(!p.matches("xexact"));
        assert!(patterns(&["*a*b*"]).matches("xxaxxbxx"));
        assert!(!patterns(&["*a*b"]).matches("xxaxxbxx"));
        assert!(!p.matches("lbt123456789-h01"), "longer than Linux allows");
    }

    #[test]
    fn no_patterns_means_the_defaults_and_bad_ones_are_refused() {
        assert_eq!(IfacePatterns::new(Vec::new()), IfacePatterns::default());
        assert_eq!("".parse::<IfacePattern>(), Err(PatternError::Empty));
        assert!(matches!(
            "veth/*".parse::<IfacePattern>(),
            Err(PatternError::ImpossibleCharacter(_))
        ));
    }
}
