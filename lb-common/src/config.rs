//! Node-wide settings: the one-element `LB_CONFIG` array, written by the agent.

/// Default first port masquerading allocates: just above Linux's default ephemeral range
/// (`net.ipv4.ip_local_port_range` = 32768–60999), so a masqueraded flow never takes the
/// tuple of one of the node's own connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Default last port masquerading allocates (inclusive).
pub const SNAT_PORT_MAX: u16 = 65_535;
/// Ports a new masqueraded flow tries before it is dropped (`Counter::DropSnatPortsExhausted`).
pub const SNAT_PORT_ATTEMPTS: u32 = 16;

/// Address hairpin flows are source-NATed to: a pod that reaches a Service and is balanced to
/// itself would otherwise receive a packet from its own address, which its kernel drops as a
/// martian. The pod sees this foreign source instead and answers it through its default
/// route, via the node, whose TC program translates the answer back (the flow's reply entry).
/// Link-local (169.254.0.0/16) and used as Cilium's `IPV4_LOOPBACK`: never routed beyond the
/// node, never configured on an interface. Ports come from `LB_CONFIG`'s range, or
/// [`SNAT_PORT_MIN`]..=[`SNAT_PORT_MAX`] while that is unset (all zero), so hairpin works with
/// masquerading off too.
pub const HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];

/// [`HAIRPIN_ADDR`] for IPv6 hairpin flows: `100::a9fe:2a01`, from the discard-only prefix
/// 100::/64 (RFC 6666), which is never assigned to a host or a cluster network (a link-local
/// address would not do: the pod must answer through its default route, via the node).
pub const HAIRPIN_ADDR6: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 169, 254, 42, 1];

/// Values of [`NodeConfig::reply_path`]: how translated packets that carry one of the node's
/// own addresses as their new source (node port replies, masqueraded flows), and every other
/// translated reply, leave the node.
pub mod reply_path {
    /// Handed back to the kernel, which routes them; its martian check then needs
    /// `net.ipv4.conf.<iface>.accept_local=1` on the interface they arrived on.
    pub const KERNEL: u8 = 0;
    /// Sent to the egress device found with `bpf_fib_lookup` (`bpf_redirect`, or
    /// `bpf_redirect_neigh` when the neighbour is unresolved): they never meet the martian
    /// check. XDP hands its packets to the TC program on the same interface to do it.
    pub const REDIRECT: u8 = 1;
}

/// Value of `LB_CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Address external IPv4 flows to backends on other nodes are masqueraded to: the node's
    /// address on the external interface, network byte order, IPv4-mapped. All zero turns
    /// masquerading of IPv4 flows off (such flows are only DNATed).
    pub snat_addr: [u8; 16],
    /// First port masquerading allocates, network byte order.
    pub snat_port_min: [u8; 2],
    /// Last port masquerading allocates (inclusive), network byte order.
    pub snat_port_max: [u8; 2],
    /// One of [`reply_path`].
    pub reply_path: u8,
    /// 1: the socket programs translate sockets of every network namespace (pods too, at
    /// `connect()`), not only those of `sock_netns_cookie`'s; 0: only those.
    pub sock_all_netns: u8,
    pub _pad: [u8; 2],
    /// Network namespace cookie (`SO_NETNS_COOKIE`) of the node's own sockets: the socket
    /// programs translate sockets in this namespace (host-network processes and pods), and a
    /// pod's only with `sock_all_netns` (else the TC program serves them). 0 until the agent
    /// writes it: no socket is translated, whatever `sock_all_netns` says.
    pub sock_netns_cookie: u64,
    /// [`NodeConfig::snat_addr`] for IPv6 flows: the node's IPv6 address on the external
    /// interface. All zero turns masquerading of IPv6 flows off. The port range is shared.
    pub snat_addr6: [u8; 16],
}

impl NodeConfig {
    /// Masquerading IPv4 flows to `snat_addr` (IPv4-mapped; all zero: not IPv4 flows) with
    /// ports `min..=max`.
    pub const fn masquerading(snat_addr: [u8; 16], min: u16, max: u16) -> Self {
        Self {
            snat_addr,
            snat_addr6: [0; 16],
            snat_port_min: min.to_be_bytes(),
            snat_port_max: max.to_be_bytes(),
            reply_path: reply_path::KERNEL,
            sock_all_netns: 0,
            _pad: [0; 2],
            sock_netns_cookie: 0,
        }
    }

    /// This config masquerading IPv6 flows to `addr` too (all zero: not IPv6 flows).
    pub const fn with_snat_addr6(self, addr: [u8; 16]) -> Self {
        Self {
            snat_addr6: addr,
            ..self
        }
    }

    /// This config with translated replies leaving by `path` (one of [`reply_path`]).
    pub const fn with_reply_path(self, path: u8) -> Self {
        Self {
            reply_path: path,
            ..self
        }
    }

    /// This config with socket-level translation for the namespace whose cookie is
    /// `netns_cookie` (0: none).
    pub const fn with_sock_netns(self, netns_cookie: u64) -> Self {
        Self {
            sock_netns_cookie: netns_cookie,
            ..self
        }
    }

    /// This config with socket-level translation for sockets of every network namespace
    /// (`all`), or only for those of the namespace [`NodeConfig::with_sock_netns`] names.
    pub const fn with_sock_all_netns(self, all: bool) -> Self {
        Self {
            sock_all_netns: all as u8,
            ..self
        }
    }

    /// Whether masquerading is on, for either family.
    pub fn masquerades(&self) -> bool {
        self.snat_addr != [0; 16] || self.snat_addr6 != [0; 16]
    }

    /// First masquerading port, host byte order.
    pub const fn snat_port_min(&self) -> u16 {
        u16::from_be_bytes(self.snat_port_min)
    }

    /// Last masquerading port (inclusive), host byte order.
    pub const fn snat_port_max(&self) -> u16 {
        u16::from_be_bytes(self.snat_port_max)
    }
}

const _: () = assert!(core::mem::size_of::<NodeConfig>() == 48);

#[cfg(feature = "user")]
unsafe impl aya::Pod for NodeConfig {}
