//! Conntrack entries: two per translated flow, both in one LRU hash.
//!
//! The forward entry is keyed by the packet as the client sends it (client -> VIP) and holds
//! the backend to translate to; the reply entry is keyed by the packet as the backend sends it
//! (backend -> client) and holds the VIP to translate back to. Either way a packet needs one
//! lookup with its own tuple, and the map's LRU eviction bounds its size.

/// Key of the conntrack map: a packet's 5-tuple as it arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address, network byte order, IPv4-mapped for IPv4.
    pub src_addr: [u8; 16],
    /// Destination address, network byte order, IPv4-mapped for IPv4.
    pub dst_addr: [u8; 16],
    /// Source port, network byte order.
    pub src_port: [u8; 2],
    /// Destination port, network byte order.
    pub dst_port: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Direction flags of a conntrack entry ([`CtValue::flags`]).
pub mod ct_flags {
    /// Client -> VIP: rewrite the destination to `nat_addr:nat_port` (the backend).
    pub const FORWARD: u8 = 1;
    /// Backend -> client: rewrite the source to `nat_addr:nat_port` (the VIP).
    pub const REPLY: u8 = 2;
    /// The flow is also masqueraded (source NAT to the node, for an external flow to a
    /// backend on another node): a forward entry also rewrites the source to
    /// `snat_addr:snat_port` (the node's address and an allocated port); a reply entry also
    /// rewrites the destination to `snat_addr:snat_port` (the original client).
    pub const SNAT: u8 = 4;
    /// On both entries of a TCP flow once a FIN or RST was seen in either direction (the
    /// closing state): a new SYN on the tuple starts a new flow, the agent's garbage
    /// collector gives it the short close timeout, and after
    /// [`CLOSING_REUSE_NS`](super::CLOSING_REUSE_NS) idle a masqueraded flow's port may go to
    /// a new flow.
    pub const CLOSING: u8 = 8;
    /// On both entries once the backend has answered (the reply entry translated a packet).
    /// Until then the forward entry checks on every packet that its reply entry is there;
    /// after, once a second (see `lb-ebpf`'s `pairs`).
    pub const SEEN_REPLY: u8 = 16;
    /// The direction bits.
    pub const DIRECTION: u8 = FORWARD | REPLY;
}

/// A masqueraded flow holds its port against a new flow that wants it until its reply entry
/// has been idle this long: after a FIN or RST (Cilium's close timeout)...
pub const CLOSING_REUSE_NS: u64 = 10 * SECOND_NS;
/// ...for UDP (Cilium's non-TCP lifetime)...
pub const UDP_REUSE_NS: u64 = 60 * SECOND_NS;
/// ...and for TCP without a FIN or RST (Cilium's TCP lifetime). Entries are not otherwise
/// expired: LRU eviction bounds the map.
pub const TCP_REUSE_NS: u64 = 6 * 60 * 60 * SECOND_NS;
const SECOND_NS: u64 = 1_000_000_000;

/// Value of the conntrack map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// Address to translate to (backend for forward, VIP for reply), network byte order.
    pub nat_addr: [u8; 16],
    /// Port to translate to, network byte order.
    pub nat_port: [u8; 2],
    /// [`ct_flags::FORWARD`] or [`ct_flags::REPLY`], plus [`ct_flags::SNAT`] when masqueraded,
    /// [`ct_flags::CLOSING`] when such a TCP flow is ending and [`ct_flags::SEEN_REPLY`] once
    /// the backend answered.
    pub flags: u8,
    pub _pad: u8,
    /// Service the flow belongs to (per-service counters).
    pub group_id: u32,
    /// Backend chosen for the flow; an established flow keeps it when the backend set changes.
    pub backend_id: u32,
    pub _pad2: u32,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC, to the timer tick) when the flow was last
    /// refreshed; refreshed at most once a second to keep the fast path free of writes.
    pub last_seen_ns: u64,
    /// With [`ct_flags::SNAT`]: the other end's translation (forward: the node's address as
    /// the new source; reply: the original client as the new destination), network byte
    /// order, IPv4-mapped for IPv4. All zero otherwise.
    pub snat_addr: [u8; 16],
    /// With [`ct_flags::SNAT`]: the port paired with `snat_addr`, network byte order.
    pub snat_port: [u8; 2],
    pub _pad3: [u8; 6],
}

impl CtValue {
    /// The key of the other entry of this entry's flow, this entry being stored under `key`:
    /// [`CtValue::reply_key`] of a forward entry, [`CtValue::forward_key`] of a reply entry.
    /// The programs and the agent's garbage collector both derive the other key with these.
    #[inline(always)]
    pub fn pair_key(&self, key: &CtKey) -> CtKey {
        if self.flags & ct_flags::DIRECTION == ct_flags::FORWARD {
            self.reply_key(key)
        } else {
            self.forward_key(key)
        }
    }

    /// The reply key of this forward entry, stored under `forward_key`: the backend's answer
    /// to the client, or to the node's address and port when the flow is masqueraded.
    #[inline(always)]
    pub fn reply_key(&self, forward_key: &CtKey) -> CtKey {
        let mut key = CtKey {
            src_addr: self.nat_addr,
            dst_addr: forward_key.src_addr,
            src_port: self.nat_port,
            dst_port: forward_key.src_port,
            proto: forward_key.proto,
            _pad: [0; 3],
        };
        if self.flags & ct_flags::SNAT != 0 {
            key.dst_addr = self.snat_addr;
            key.dst_port = self.snat_port;
        }
        key
    }

    /// The forward key of this reply entry, stored under `reply_key`: the original client
    /// (the reply key's destination, or the entry's SNAT end when masqueraded) to the
    /// frontend it addressed.
    #[inline(always)]
    pub fn forward_key(&self, reply_key: &CtKey) -> CtKey {
        let (src_addr, src_port) = if self.flags & ct_flags::SNAT != 0 {
            (self.snat_addr, self.snat_port)
        } else {
            (reply_key.dst_addr, reply_key.dst_port)
        };
        CtKey {
            src_addr,
            dst_addr: self.nat_addr,
            src_port,
            dst_port: self.nat_port,
            proto: reply_key.proto,
            _pad: [0; 3],
        }
    }

    /// Port to translate to, in host byte order.
    pub const fn nat_port(&self) -> u16 {
        u16::from_be_bytes(self.nat_port)
    }

    /// Port paired with `snat_addr`, in host byte order.
    pub const fn snat_port(&self) -> u16 {
        u16::from_be_bytes(self.snat_port)
    }
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 40);
const _: () = assert!(core::mem::size_of::<CtValue>() == 64);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
}
