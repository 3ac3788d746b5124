//! The file names of pinned program links: `<iface>-<hook>`, with every `.` of the interface
//! name written as `:`.
//!
//! bpffs refuses names that contain a dot (`EPERM`), so `flannel.1`, `vxlan.calico` or a VLAN
//! interface such as `eth0.100` cannot be pinned under their own names. Linux in turn never
//! allows a `:` in an interface name (`dev_valid_name`: it separates address labels such as
//! `eth0:1`), so writing `.` as `:` is injective over every legal interface name (any bytes
//! but `/`, `:`, NUL and whitespace, at most 15 of them), keeps the names readable, and leaves
//! the name of every pin without a dot exactly as earlier agents wrote it, so those pins are
//! still found and reused.

use std::fmt;

/// Which hook a pinned link attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// TC ingress.
    Tc,
    /// TC egress.
    TcEgress,
    Xdp,
}

impl Hook {
    const ALL: [Hook; 3] = [Hook::Tc, Hook::TcEgress, Hook::Xdp];

    fn as_str(self) -> &'static str {
        match self {
            Hook::Tc => "tc",
            Hook::TcEgress => "tc-egress",
            Hook::Xdp => "xdp",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What bpffs refuses in a name, and its stand-in.
const DOT: char = '.';
/// Never part of a Linux interface name.
const DOT_STAND_IN: char = ':';

/// The link of `hook` on the interface `iface`, as named by its pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub iface: String,
    pub hook: Hook,
}

/// An interface name that cannot be legal on Linux, so it has no pin name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid interface name: Linux interface names never contain ':'")]
pub struct InvalidIfaceName(pub String);

impl LinkPin {
    pub fn new(iface: &str, hook: Hook) -> Self {
        Self {
            iface: iface.to_string(),
            hook,
        }
    }

    /// The pin's file name: `<iface>-<hook>`, each `.` of `iface` written as `:`.
    pub fn file_name(&self) -> Result<String, InvalidIfaceName> {
        if self.iface.contains(DOT_STAND_IN) {
            return Err(InvalidIfaceName(self.iface.clone()));
        }
        Ok(format!(
            "{}-{}",
            self.iface.replace(DOT, &DOT_STAND_IN.to_string()),
            self.hook
        ))
    }

    /// The link a pin's file name stands for; `None` for a name no agent writes.
    pub fn parse(file_name: &str) -> Option<Self> {
        if file_name.contains(DOT) {
            return None;
        }
        Hook::ALL.into_iter().find_map(|hook| {
            let encoded = file_name.strip_suffix(hook.as_str())?.strip_suffix('-')?;
            (!encoded.is_empty()).then(|| Self {
                iface: encoded.replace(DOT_STAND_IN, &DOT.to_string()),
                hook,
            })
        })
    }
}

impl fmt::Display for LinkPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} link of {}", self.hook, self.iface)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Legal interface names: dots anywhere, percent signs, backslashes, dashes, hook-like
    /// endings, non-ASCII, 15 bytes.
    const NAMES: &[&str] = &[
        "eth0",
        "veth1a2b3c",
        "flannel.1",
        "vxlan.calico",
        "eth0.100",
        "eth0.100.200",
        ".hidden",
        "trailing.",
        "a..b",
        "...",
        "a%2eb",
        "a%b",
        "back\\slash",
        "x-tc",
        "x-xdp",
        "x-tc-egress",
        "x.-tc",
        "-",
        "é.1",
        "fifteen.bytes.x",
        "cilium_vxlan",
    ];

    #[test]
    fn names_without_dots_keep_the_pin_names_earlier_agents_wrote() {
        for iface in [
            "eth0",
            "veth1a2b3c",
            "lxc_health",
            "a%b",
            "back\\slash",
            "x-tc",
        ] {
            assert_eq!(
                LinkPin::new(iface, Hook::Tc).file_name().unwrap(),
                format!("{iface}-tc")
            );
            assert_eq!(
                LinkPin::new(iface, Hook::Xdp).file_name().unwrap(),
                format!("{iface}-xdp")
            );
        }
        assert_eq!(
            LinkPin::new("flannel.1", Hook::TcEgress)
                .file_name()
                .unwrap(),
            "flannel:1-tc-egress"
        );
    }

    #[test]
    fn dots_are_written_as_colons_which_bpffs_accepts() {
        let pin = LinkPin::new("flannel.1", Hook::Tc);
        assert_eq!(pin.file_name().unwrap(), "flannel:1-tc");
        assert_eq!(
            LinkPin::new("eth0.100.200", Hook::Xdp).file_name().unwrap(),
            "eth0:100:200-xdp"
        );
        for iface in NAMES {
            for hook in Hook::ALL {
                let name = LinkPin::new(iface, hook).file_name().unwrap();
                assert!(!name.contains('.') && !name.contains('/'), "{name}");
                assert_eq!(name.len(), iface.len() + 1 + hook.as_str().len());
            }
        }
    }

    #[test]
    fn every_name_round_trips() {
        for iface in NAMES {
            for hook in Hook::ALL {
                let pin = LinkPin::new(iface, hook);
                let name = pin.file_name().unwrap();
                assert_eq!(LinkPin::parse(&name), Some(pin), "{name}");
            }
        }
    }

    #[test]
    fn no_two_links_share_a_pin_name() {
        let mut seen = BTreeMap::new();
        for iface in NAMES {
            for hook in Hook::ALL {
                let pin = LinkPin::new(iface, hook);
                let name = pin.file_name().unwrap();
                if let Some(other) = seen.insert(name.clone(), pin.clone()) {
                    panic!("{pin} and {other} are both pinned as {name}");
                }
            }
        }
    }

    #[test]
    fn names_linux_refuses_have_no_pin_name() {
        assert_eq!(
            LinkPin::new("eth0:1", Hook::Tc).file_name(),
            Err(InvalidIfaceName("eth0:1".into()))
        );
    }

    #[test]
    fn other_files_are_not_taken_for_pins() {
        for name in [
            "",
            "-tc",
            "eth0",
            "eth0-tcx",
            "eth0-egress",
            "eth0_tc",
            "lock",
            "eth0.1-tc",
        ] {
            assert_eq!(LinkPin::parse(name), None, "{name}");
        }
    }
}
