//! Conntrack keys and entries: a forward entry keyed by the client's packet and a reply entry
//! keyed by the backend's answer (see `lb_common::conntrack`).

use lb_common::{
    conntrack::{ct_flags, CLOSING_REUSE_NS, TCP_REUSE_NS, UDP_REUSE_NS},
    Backend, CtKey, CtValue, IPPROTO_UDP,
};

use crate::{family::Family, parse::Flow};

/// `last_seen_ns` is rewritten at most this often, keeping established flows write-free.
pub const REFRESH_INTERVAL_NS: u64 = 1_000_000_000;

/// The key of a packet as it arrives.
#[inline(always)]
pub fn key_of<F: Family>(flow: &Flow<F>) -> CtKey {
    CtKey {
        src_addr: F::mapped(&flow.src.addr),
        dst_addr: F::mapped(&flow.dst.addr),
        src_port: flow.src.port,
        dst_port: flow.dst.port,
        proto: flow.proto,
        _pad: [0; 3],
    }
}

/// Where a new flow's working values are built: per-CPU map memory (`LB_NEW_FLOW`), not the
/// stack, whose 512 bytes the IPv6 programs would otherwise exceed when they masquerade.
#[derive(Clone, Copy, Debug, Default)]
pub struct NewFlowScratch {
    /// The flow's reply key, source-NATed when masqueraded.
    pub reply_key: CtKey,
    /// The reply entry, then the forward entry (one value serves as both).
    pub entry: CtValue,
    /// The forward key of a flow whose masquerading port a new flow takes over.
    pub taken_key: CtKey,
    /// The backend the new flow goes to.
    pub backend: Backend,
}

/// The key of the packets `backend` sends back to the client of `forward`.
#[inline(always)]
pub fn reply_key(forward: &CtKey, backend_addr: [u8; 16], backend_port: [u8; 2]) -> CtKey {
    CtKey {
        src_addr: backend_addr,
        dst_addr: forward.src_addr,
        src_port: backend_port,
        dst_port: forward.src_port,
        proto: forward.proto,
        _pad: [0; 3],
    }
}

/// Whether `reply` is the reply entry of the flow whose forward key is `key`: it translates
/// back to the frontend `key` addressed and, when masqueraded, to `key`'s client. Addresses
/// compare as two 8-byte words ([`same_addr`]).
#[inline(always)]
pub fn reply_belongs(key: &CtKey, reply: &CtValue) -> bool {
    same_addr(&reply.nat_addr, &key.dst_addr)
        && reply.nat_port == key.dst_port
        && (reply.flags & ct_flags::SNAT == 0
            || reply.snat_port == key.src_port && same_addr(&reply.snat_addr, &key.src_addr))
}

/// Whether `forward` is the forward entry of the flow whose reply key is `reply_key`: it
/// translates to the backend that answers and, when masqueraded, from the node's end the
/// backend answers (compared as in [`reply_belongs`]).
#[inline(always)]
pub fn forward_belongs(reply_key: &CtKey, forward: &CtValue) -> bool {
    same_addr(&forward.nat_addr, &reply_key.src_addr)
        && forward.nat_port == reply_key.src_port
        && (forward.flags & ct_flags::SNAT == 0
            || forward.snat_port == reply_key.dst_port
                && same_addr(&forward.snat_addr, &reply_key.dst_addr))
}

/// The reply entry of the forward entry `entry` under `key`, made anew (it is stored under
/// `entry.reply_key(key)`): translates back to the frontend and, when masqueraded, to the
/// client.
#[inline(always)]
pub fn reply_of(key: &CtKey, entry: &CtValue, now_ns: u64) -> CtValue {
    let mut reply = *entry;
    reply.flags = entry.flags & !ct_flags::DIRECTION | ct_flags::REPLY;
    reply.nat_addr = key.dst_addr;
    reply.nat_port = key.dst_port;
    if entry.flags & ct_flags::SNAT != 0 {
        reply.snat_addr = key.src_addr;
        reply.snat_port = key.src_port;
    }
    reply.last_seen_ns = now_ns;
    reply
}

/// The forward entry of the reply entry `entry` under `reply_key`, made anew (it is stored
/// under `entry.forward_key(reply_key)`): translates to the backend (the reply key's source)
/// and, when masqueraded, from the node's address and port (the reply key's destination).
#[inline(always)]
pub fn forward_of(reply_key: &CtKey, entry: &CtValue, now_ns: u64) -> CtValue {
    let mut forward = *entry;
    forward.flags = entry.flags & !ct_flags::DIRECTION | ct_flags::FORWARD;
    forward.nat_addr = reply_key.src_addr;
    forward.nat_port = reply_key.src_port;
    if entry.flags & ct_flags::SNAT != 0 {
        forward.snat_addr = reply_key.dst_addr;
        forward.snat_port = reply_key.dst_port;
    }
    forward.last_seen_ns = now_ns;
    forward
}

/// Whether a masqueraded flow's reply entry has been idle long enough for a new flow to take
/// its key, and with it the port (see `lb_common::conntrack::CLOSING_REUSE_NS`).
#[inline(always)]
pub fn reusable(entry: &CtValue, proto: u8, now_ns: u64) -> bool {
    let idle_for = if entry.flags & ct_flags::CLOSING != 0 {
        CLOSING_REUSE_NS
    } else if proto == IPPROTO_UDP {
        UDP_REUSE_NS
    } else {
        TCP_REUSE_NS
    };
    // Saturating: another CPU may have stamped the entry after this packet read the clock.
    now_ns.saturating_sub(entry.last_seen_ns) > idle_for
}

/// A new flow's reply entry: translates the backend's answers back to the VIP the client
/// addressed in `forward`. Once inserted, [`make_forward`] turns it into the forward entry.
#[inline(always)]
pub fn reply_entry(forward: &CtKey, group_id: u32, backend_id: u32, now_ns: u64) -> CtValue {
    CtValue {
        nat_addr: forward.dst_addr,
        nat_port: forward.dst_port,
        flags: ct_flags::REPLY,
        _pad: 0,
        group_id,
        backend_id,
        _pad2: 0,
        last_seen_ns: now_ns,
        snat_addr: [0; 16],
        snat_port: [0; 2],
        _pad3: [0; 6],
    }
}

/// Turns a new flow's reply entry, stored under `reply_key`, into its forward entry:
/// translate to `backend` and, for a masqueraded flow, from the node's address and port the
/// backend answers (the reply key's destination).
#[inline(always)]
pub fn make_forward(entry: &mut CtValue, backend: &Backend, reply_key: &CtKey) {
    entry.nat_addr = backend.addr;
    entry.nat_port = backend.port;
    if entry.flags & ct_flags::SNAT != 0 {
        entry.flags = ct_flags::FORWARD | ct_flags::SNAT;
        entry.snat_addr = reply_key.dst_addr;
        entry.snat_port = reply_key.dst_port;
    } else {
        entry.flags = ct_flags::FORWARD;
    }
}

/// Whether the backend a forward entry translates to is still the one in the backends map.
#[inline(always)]
pub fn backend_matches(entry: &CtValue, backend: Option<&Backend>) -> bool {
    backend.is_some_and(|b| b.addr == entry.nat_addr && b.port == entry.nat_port)
}

/// A conntrack entry as a packet found it.
#[derive(Clone, Copy)]
pub struct Found {
    /// The entry before the lookup marked it used.
    pub entry: CtValue,
    /// Whether the lookup marked the entry used: it was not, within the refresh interval
    /// (or, torn or stamped by another CPU after the clock was read, it seems to be from the
    /// future). The once-a-second checks of an established flow ride on this write.
    pub refreshed: bool,
}

impl Found {
    /// `entry`, found at `now_ns`.
    #[inline(always)]
    pub fn at(entry: CtValue, now_ns: u64) -> Self {
        Found {
            entry,
            refreshed: now_ns.wrapping_sub(entry.last_seen_ns) >= REFRESH_INTERVAL_NS,
        }
    }
}

/// Whether two map addresses are equal, compared as two 8-byte words: byte-wise 16-byte
/// compares here crash LLVM's BPF backend (bpf-linker SIGILL in post-RA pseudo instruction
/// expansion).
#[inline(always)]
pub fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let half = |x: &[u8; 16], at: usize| {
        u64::from_ne_bytes([
            x[at],
            x[at + 1],
            x[at + 2],
            x[at + 3],
            x[at + 4],
            x[at + 5],
            x[at + 6],
            x[at + 7],
        ])
    };
    half(a, 0) == half(b, 0) && half(a, 8) == half(b, 8)
}

/// The IPv4 address inside an IPv4-mapped map address (entries hold only those).
#[inline(always)]
pub fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{FlowEnd, Ipv4Flow};
    use lb_common::{ipv4_mapped, net::tcp_flags, IPPROTO_TCP};

    fn flow() -> Ipv4Flow {
        Ipv4Flow {
            l4_offset: 34,
            proto: IPPROTO_TCP,
            src: FlowEnd {
                addr: [198, 18, 0, 10],
                port: 40000u16.to_be_bytes(),
            },
            dst: FlowEnd {
                addr: [198, 19, 0, 1],
                port: 80u16.to_be_bytes(),
            },
            tcp_flags: tcp_flags::SYN,
            l4_len: 20,
        }
    }

    /// A new flow's reply key and entry, and the forward entry made from the entry.
    fn entries(backend: &Backend, now_ns: u64) -> (CtKey, CtValue, CtValue) {
        let fwd = key_of(&flow());
        let reply_key = reply_key(&fwd, backend.addr, backend.port);
        let reply = reply_entry(&fwd, 7, 3, now_ns);
        let mut forward = reply;
        make_forward(&mut forward, backend, &reply_key);
        (reply_key, reply, forward)
    }

    #[test]
    fn a_new_flow_translates_to_the_backend_and_its_answers_back_to_the_vip() {
        let backend = Backend::new(ipv4_mapped([198, 18, 1, 2]), 8080);
        let (rk, r, f) = entries(&backend, 42);
        assert_eq!(
            (f.nat_addr, f.nat_port(), f.flags),
            (backend.addr, 8080, ct_flags::FORWARD)
        );
        assert_eq!(rk.src_addr, backend.addr);
        assert_eq!(rk.src_port, 8080u16.to_be_bytes());
        assert_eq!(rk.dst_addr, ipv4_mapped([198, 18, 0, 10]));
        assert_eq!(rk.dst_port, 40000u16.to_be_bytes());
        assert_eq!(rk.proto, IPPROTO_TCP);
        assert_eq!(
            (r.nat_addr, r.nat_port(), r.flags),
            (ipv4_mapped([198, 19, 0, 1]), 80, ct_flags::REPLY)
        );
        for v in [f, r] {
            assert_eq!((v.group_id, v.backend_id, v.last_seen_ns), (7, 3, 42));
            assert_eq!((v.snat_addr, v.snat_port()), ([0; 16], 0));
        }
        assert_eq!(f.pair_key(&key_of(&flow())), rk);
    }

    #[test]
    fn a_masqueraded_forward_entry_comes_from_the_node_end_of_the_reply_key() {
        let backend = Backend::new(ipv4_mapped([198, 18, 1, 2]), 8080);
        let fwd = key_of(&flow());
        let mut rk = reply_key(&fwd, backend.addr, backend.port);
        rk.dst_addr = ipv4_mapped([198, 18, 0, 2]);
        rk.dst_port = 61_234u16.to_be_bytes();
        let mut e = reply_entry(&fwd, 7, 3, 42);
        e.flags |= ct_flags::SNAT;
        make_forward(&mut e, &backend, &rk);
        assert_eq!(e.flags, ct_flags::FORWARD | ct_flags::SNAT);
        assert_eq!((e.nat_addr, e.nat_port()), (backend.addr, 8080));
        assert_eq!((e.snat_addr, e.snat_port()), (rk.dst_addr, 61_234));
        assert_eq!(e.pair_key(&fwd), rk);
    }

    #[test]
    fn either_entry_of_a_flow_is_made_anew_from_the_other() {
        let backend = Backend::new(ipv4_mapped([198, 18, 1, 2]), 8080);
        let fwd = key_of(&flow());
        let (rk, r, f) = entries(&backend, 42);
        assert_eq!(reply_of(&fwd, &f, 42), r);
        assert_eq!(r.pair_key(&rk), fwd);
        assert_eq!(forward_of(&rk, &r, 42), f);
        let (mut f, mut r) = (f, r);
        f.flags |= ct_flags::SEEN_REPLY;
        r.flags |= ct_flags::SEEN_REPLY;
        assert_eq!(reply_of(&fwd, &f, 42), r);
        assert_eq!(forward_of(&rk, &r, 42), f);
        assert_eq!(reply_of(&fwd, &f, 99).last_seen_ns, 99);
        assert!(reply_belongs(&fwd, &r) && forward_belongs(&rk, &f));
        assert_eq!((f.pair_key(&fwd), r.pair_key(&rk)), (rk, fwd));
        let other = Backend::new(ipv4_mapped([198, 18, 1, 3]), 8080);
        let (_, other_r, other_f) = entries(&other, 42);
        assert!(reply_belongs(&fwd, &other_r) && !forward_belongs(&rk, &other_f));
        let mut elsewhere = r;
        elsewhere.nat_port = 81u16.to_be_bytes();
        assert!(!reply_belongs(&fwd, &elsewhere));
    }

    #[test]
    fn a_masqueraded_flow_is_made_anew_with_its_node_port_and_client() {
        let backend = Backend::new(ipv4_mapped([198, 18, 1, 2]), 8080);
        let fwd = key_of(&flow());
        let mut rk = reply_key(&fwd, backend.addr, backend.port);
        rk.dst_addr = ipv4_mapped([198, 18, 0, 2]);
        rk.dst_port = 61_234u16.to_be_bytes();
        let mut r = reply_entry(&fwd, 7, 3, 42);
        r.flags |= ct_flags::SNAT | ct_flags::CLOSING;
        r.snat_addr = fwd.src_addr;
        r.snat_port = fwd.src_port;
        let mut f = r;
        make_forward(&mut f, &backend, &rk);
        f.flags |= ct_flags::CLOSING;
        assert_eq!((f.pair_key(&fwd), r.pair_key(&rk)), (rk, fwd));
        assert_eq!(reply_of(&fwd, &f, 42), r);
        assert_eq!(forward_of(&rk, &r, 42), f);
        assert!(reply_belongs(&fwd, &r) && forward_belongs(&rk, &f));
        let mut other_client = fwd;
        other_client.src_port = 40001u16.to_be_bytes();
        assert!(!reply_belongs(&other_client, &r));
        let mut other_port = rk;
        other_port.dst_port = 61_235u16.to_be_bytes();
        assert!(!forward_belongs(&other_port, &f));
    }

    #[test]
    fn a_lookup_refreshes_at_most_once_a_second() {
        let backend = Backend::new(ipv4_mapped([198, 18, 1, 2]), 8080);
        let (_, _, e) = entries(&backend, 5_000_000_000);
        assert!(!Found::at(e, 5_999_999_999).refreshed);
        assert!(Found::at(e, 6_000_000_000).refreshed);
        assert!(
            Found::at(e, 4_999_999_999).refreshed,
            "stamped after the clock was read"
        );
    }

    #[test]
    fn backend_must_match_address_and_port() {
        let backend = Backend::new(ipv4_mapped([198, 18, 1, 2]), 8080);
        let (_, _, e) = entries(&backend, 0);
        assert!(backend_matches(&e, Some(&backend)));
        assert!(!backend_matches(&e, None));
        let moved = Backend::new(ipv4_mapped([198, 18, 1, 3]), 8080);
        assert!(!backend_matches(&e, Some(&moved)));
        let other_port = Backend::new(backend.addr, 8081);
        assert!(!backend_matches(&e, Some(&other_port)));
    }
}
