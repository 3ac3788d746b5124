//! Map keys, values and constants shared by the eBPF data path (`lb-ebpf`) and the agent
//! (`lb-userspace`).
//!
//! Every type here is `#[repr(C)]` with explicit padding and a compile-time size check, so the
//! kernel and userspace agree on the bytes. Conventions:
//! - Addresses are 16 bytes in network byte order. IPv4 is stored IPv4-mapped
//!   (`::ffff:a.b.c.d`, see [`ipv4_mapped`]), so every map already has room for IPv6.
//! - Ports are 2 bytes in network byte order (`[u8; 2]`), read and written through accessors.
//! - Ids are dense `u32`s; 0 means "none" and is never allocated.
#![cfg_attr(not(test), no_std)]

pub mod capacity;
pub mod config;
pub mod conntrack;
pub mod counters;
pub mod crc32c;
pub mod event;
pub mod fragment;
pub mod maps;
pub mod names;
pub mod net;
pub mod reject_limit;
pub mod service;
pub mod sock;
pub mod trace;

pub use capacity::{Capacities, Capacity};
pub use config::NodeConfig;
pub use conntrack::{CtKey, CtValue};
pub use counters::{Counter, ServiceStats};
pub use fragment::{FragKey, FragPorts};
pub use names::ServiceName;
pub use reject_limit::{RejectLimits, TokenBucket};
pub use service::{
    AffinityKey, AffinityValue, Backend, BackendSlotKey, ServiceKey, ServiceValue, SourceRange,
};
pub use sock::{SockRevKey, SockRevValue};
pub use trace::TraceRecord;

pub use net::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// TC ingress on pod-facing interfaces.
    pub const TC_INGRESS: &str = "lb_tc_ingress";
    /// TC egress on pod-facing interfaces and the external interface: replies the node's own
    /// stack sends for tracked flows (host-network backends).
    pub const TC_EGRESS: &str = "lb_tc_egress";
    /// XDP on the node's external interface.
    pub const XDP_INGRESS: &str = "lb_xdp_ingress";
    /// The IPv6 half of [`TC_INGRESS`], which tail-calls it (`maps::TC_IPV6`).
    pub const TC_INGRESS6: &str = "lb_tc_ingress6";
    /// The IPv6 half of [`TC_EGRESS`], which tail-calls it (`maps::TC_IPV6`).
    pub const TC_EGRESS6: &str = "lb_tc_egress6";
    /// The IPv6 half of [`XDP_INGRESS`], which tail-calls it (`maps::XDP_IPV6`).
    pub const XDP_INGRESS6: &str = "lb_xdp_ingress6";
    /// ICMPv6 errors about tracked flows, tail-called by [`TC_INGRESS`] (`maps::TC_IPV6`).
    pub const TC_ICMP6_INGRESS: &str = "lb_tc_icmp6_ingress";
    /// ICMPv6 errors about tracked flows, tail-called by [`TC_EGRESS`] (`maps::TC_IPV6`).
    pub const TC_ICMP6_EGRESS: &str = "lb_tc_icmp6_egress";
    /// ICMPv6 errors about tracked flows, tail-called by [`XDP_INGRESS`] (`maps::XDP_IPV6`).
    pub const XDP_ICMP6: &str = "lb_xdp_icmp6";
    /// TC ingress on the XDP interface: sends on what XDP handed over for the redirect reply
    /// path (`config::reply_path::REDIRECT`).
    pub const TC_XDP_HANDOFF: &str = "lb_tc_xdp_handoff";
    /// cgroup `connect4`: TCP and UDP sockets connecting to a Service.
    pub const SOCK_CONNECT4: &str = "lb_sock_connect4";
    /// cgroup `sendmsg4`: unconnected UDP datagrams sent to a Service.
    pub const SOCK_SENDMSG4: &str = "lb_sock_sendmsg4";
    /// cgroup `recvmsg4`: UDP answers, shown as coming from the Service.
    pub const SOCK_RECVMSG4: &str = "lb_sock_recvmsg4";
    /// cgroup `getpeername4`: a translated socket's peer is the Service.
    pub const SOCK_GETPEERNAME4: &str = "lb_sock_getpeername4";
}

/// Returns the IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address, as stored in maps.
#[inline(always)]
pub const fn ipv4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Returns the IPv4 address inside an IPv4-mapped address, or `None` for real IPv6.
#[inline(always)]
pub fn ipv4_unmapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    if addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

/// Hashes a flow's 5-tuple to choose a backend slot (`hash % backend_count + 1`).
///
/// Deterministic, so one flow always maps to the same slot for a given backend set and host
/// tests can predict the choice. Mixes with the murmur3 finalizer.
#[inline(always)]
pub fn flow_hash(src: &[u8; 16], dst: &[u8; 16], sport: [u8; 2], dport: [u8; 2], proto: u8) -> u32 {
    let word = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let mut h: u32 = 0x9e37_79b9 ^ proto as u32;
    let mut i = 0;
    while i < 16 {
        h = mix(h ^ word(src, i));
        h = mix(h ^ word(dst, i));
        i += 4;
    }
    mix(h ^ u32::from_ne_bytes([sport[0], sport[1], dport[0], dport[1]]))
}

#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapping_round_trips() {
        let m = ipv4_mapped([198, 18, 0, 1]);
        assert_eq!(&m[10..], &[0xff, 0xff, 198, 18, 0, 1]);
        assert_eq!(ipv4_unmapped(&m), Some([198, 18, 0, 1]));
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        assert_eq!(ipv4_unmapped(&v6), None);
    }

    #[test]
    fn flow_hash_spreads_source_ports_evenly() {
        let src = ipv4_mapped([198, 18, 0, 10]);
        let dst = ipv4_mapped([198, 19, 0, 1]);
        let mut hits = [0u32; 3];
        for sport in 30_000u16..36_000 {
            let h = flow_hash(
                &src,
                &dst,
                sport.to_be_bytes(),
                80u16.to_be_bytes(),
                IPPROTO_TCP,
            );
            hits[(h % 3) as usize] += 1;
        }
        for n in hits {
            assert!((1800..2200).contains(&n), "uneven spread: {hits:?}");
        }
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let a = ipv4_mapped([198, 18, 0, 10]);
        let b = ipv4_mapped([198, 18, 0, 11]);
        let p = 80u16.to_be_bytes();
        let q = 81u16.to_be_bytes();
        let base = flow_hash(&a, &b, p, q, IPPROTO_TCP);
        assert_ne!(base, flow_hash(&b, &b, p, q, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, &a, p, q, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, &b, q, q, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, &b, p, p, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, &b, p, q, IPPROTO_UDP));
    }
}
