//! The redirect reply path (`lb_common::config::reply_path::REDIRECT`): a packet the pipeline
//! says to forward ([`crate::error::Verdict::Forward`]) goes straight to the egress device the
//! FIB names, never through the kernel's routing input, whose martian check drops packets with
//! one of the node's own addresses as their source unless `accept_local` is set.
//!
//! As Cilium's `fib_redirect` (bpf/lib/fib.h): `bpf_fib_lookup`; with a resolved neighbour the
//! MAC addresses are written and `bpf_redirect` sends the packet, with an unresolved one
//! `bpf_redirect_neigh` resolves it (and queues the packet meanwhile). The TTL is decremented
//! (the hop limit for IPv6) as forwarding would. IPv6 builds the lookup's 64 bytes in per-CPU
//! map memory (`maps::fib_scratch`), which the IPv6 programs' stack has no room for, and
//! leaves an unresolved neighbour to `bpf_redirect_neigh`'s own lookup. What the FIB does not
//! forward (no route, forwarding off on the
//! interface, too big for the egress MTU, the destination is local) and a TTL about to expire go
//! to the kernel as before.
//!
//! XDP cannot resolve neighbours, and `XDP_TX` / `XDP_REDIRECT` lose frames on a veth whose
//! peer runs no NAPI (a kind node's `eth0`), so the XDP program marks the packet in its
//! metadata and passes it to the TC program on the same interface ([`tc_handoff`]), which
//! sends it on. Metadata is written only by XDP, so nothing from the wire can ask for it.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_load_bytes,
        bpf_xdp_adjust_meta,
    },
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::net::{
    ETHERTYPE_IPV6, ETH_HLEN, ETH_TYPE_OFFSET, IPV4_TTL, IPV6_DST, IPV6_NEXT_HEADER, IPV6_SRC,
};

use crate::{
    family::Family,
    maps,
    parse::{IPV4_CHECKSUM_OFFSET, IPV4_DST_OFFSET, IPV4_SRC_OFFSET},
};

/// `AF_INET`.
const AF_INET: u8 = 2;
/// `AF_INET6`.
const AF_INET6: u8 = 10;

/// The XDP program's metadata for a packet the TC program is to forward.
const HANDOFF_MARK: [u8; 4] = *b"LBrp";

/// Sends a translated packet of family `F` at TC to its egress device; the program's return
/// code (`TC_ACT_REDIRECT`, or `TC_ACT_UNSPEC` to leave it to the kernel).
#[inline(always)]
pub fn tc_forward<F: Family>(ctx: &TcContext) -> i32 {
    match F::IPV6 {
        true => try_tc_forward6(ctx),
        false => try_tc_forward(ctx),
    }
    .unwrap_or(TC_ACT_UNSPEC)
}

#[inline(always)]
fn try_tc_forward6(ctx: &TcContext) -> Option<i32> {
    let [next_header, hop_limit]: [u8; 2] = ctx.load(ETH_HLEN + IPV6_NEXT_HEADER).ok()?;
    if hop_limit <= 1 {
        return None;
    }
    // SAFETY: per-CPU map memory, used by this run alone until it returns.
    let fib = unsafe { &mut *maps::fib_scratch()? };
    // SAFETY: plain-old-data; all zero is the helper's "nothing set".
    *fib = unsafe { zeroed() };
    fib.family = AF_INET6;
    // SAFETY: reads the program's own context (see `try_tc_forward`).
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the unions' IPv6 members, written whole from the packet.
    let (src, dst) = unsafe {
        (
            &mut fib.__bindgen_anon_3.ipv6_src,
            &mut fib.__bindgen_anon_4.ipv6_dst,
        )
    };
    load_addr6(ctx, ETH_HLEN + IPV6_SRC, src)?;
    load_addr6(ctx, ETH_HLEN + IPV6_DST, dst)?;
    // SAFETY: `fib` is a valid, writable `bpf_fib_lookup` of the size passed.
    let found = unsafe { fib_lookup(ctx.as_ptr(), fib, size_of::<bpf_fib_lookup>() as i32, 0) };
    let resolved = found == i64::from(BPF_FIB_LKUP_RET_SUCCESS);
    if !resolved && found != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return None;
    }
    let hops = [next_header, hop_limit - 1];
    ctx.store(ETH_HLEN + IPV6_NEXT_HEADER, &hops, 0).ok()?;
    let verdict = if resolved {
        to_neighbour(ctx, fib)?
    } else {
        // SAFETY: without parameters the helper looks the next hop up itself.
        unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) }
    };
    Some(i32::try_from(verdict).unwrap_or(TC_ACT_SHOT))
}

/// Copies the IPv6 address at `offset` of the packet into `to` (a constant 16 bytes, which the
/// verifier needs: aya's `load_bytes` passes a length it cannot bound away from 0).
#[inline(always)]
fn load_addr6(ctx: &TcContext, offset: usize, to: &mut [u32; 4]) -> Option<()> {
    // SAFETY: `to` is 16 writable bytes.
    let copied =
        unsafe { bpf_skb_load_bytes(ctx.as_ptr(), offset as u32, to.as_mut_ptr().cast(), 16) };
    (copied == 0).then_some(())
}

#[inline(always)]
fn try_tc_forward(ctx: &TcContext) -> Option<i32> {
    let ttl_proto: [u8; 2] = ctx.load(ETH_HLEN + IPV4_TTL).ok()?;
    if ttl_proto[0] <= 1 {
        return None;
    }
    let src: [u8; 4] = ctx.load(IPV4_SRC_OFFSET).ok()?;
    let dst: [u8; 4] = ctx.load(IPV4_DST_OFFSET).ok()?;
    // SAFETY: plain-old-data; all zero is the helper's "nothing set".
    let mut fib: bpf_fib_lookup = unsafe { zeroed() };
    fib.family = AF_INET;
    // SAFETY: reads the program's own context. At TC ingress the skb's device is the one it
    // arrived on (BPF_PROG_TEST_RUN: the loopback device of the caller's namespace).
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: `fib` is a valid, writable `bpf_fib_lookup` of the size passed.
    let found = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let resolved = found == i64::from(BPF_FIB_LKUP_RET_SUCCESS);
    if !resolved && found != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return None;
    }
    let ttl = [ttl_proto[0] - 1, ttl_proto[1]];
    ctx.store(ETH_HLEN + IPV4_TTL, &ttl, 0).ok()?;
    let (old, new) = (u16::from_ne_bytes(ttl_proto), u16::from_ne_bytes(ttl));
    ctx.l3_csum_replace(IPV4_CHECKSUM_OFFSET, u64::from(old), u64::from(new), 2)
        .ok()?;
    let verdict = if resolved {
        to_neighbour(ctx, &fib)?
    } else {
        // SAFETY: plain-old-data; the union's IPv4 member is set below.
        let mut next_hop: bpf_redir_neigh = unsafe { zeroed() };
        next_hop.nh_family = u32::from(AF_INET);
        // SAFETY: the lookup left the next hop (gateway or destination) in `ipv4_dst`.
        next_hop.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
        // SAFETY: `next_hop` is valid for the size passed.
        unsafe {
            bpf_redirect_neigh(
                fib.ifindex,
                &mut next_hop,
                size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        }
    };
    Some(i32::try_from(verdict).unwrap_or(TC_ACT_SHOT))
}

/// Writes the resolved neighbour's and the egress device's MAC addresses the lookup `fib` found
/// and redirects the packet to that device; the helper's return code.
#[inline(always)]
fn to_neighbour(ctx: &TcContext, fib: &bpf_fib_lookup) -> Option<i64> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&fib.dmac);
    macs[6..].copy_from_slice(&fib.smac);
    ctx.store(0, &macs, 0).ok()?;
    // SAFETY: plain integers.
    Some(unsafe { bpf_redirect(fib.ifindex, 0) })
}

/// Passes a translated packet from XDP to the TC program on the same interface, marked so
/// that [`tc_handoff`] forwards it. Without room for the mark (a driver without XDP metadata)
/// it goes to the kernel unmarked, as on the kernel reply path.
#[inline(always)]
pub fn xdp_handoff(ctx: &XdpContext) -> u32 {
    // SAFETY: the helper only moves the metadata's start; it is re-checked below.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(HANDOFF_MARK.len() as i32)) } == 0 {
        let (meta, data) = (ctx.metadata(), ctx.data());
        if meta + HANDOFF_MARK.len() <= data {
            // SAFETY: the four bytes lie inside the metadata; `[u8; 4]` has alignment 1.
            unsafe { (meta as *mut [u8; 4]).write(HANDOFF_MARK) };
        }
    }
    xdp_action::XDP_PASS
}

/// TC ingress on the XDP interface: forwards what [`xdp_handoff`] marked; everything else
/// goes on to the hook's next program.
#[inline(always)]
pub fn tc_handoff(ctx: &TcContext) -> i32 {
    // SAFETY: reads the program's own context; volatile for the reason `TcPacket::bounds` gives.
    let (meta, data) = unsafe {
        let skb = ctx.skb.skb;
        (
            core::ptr::read_volatile(&(*skb).data_meta) as usize,
            core::ptr::read_volatile(&(*skb).data) as usize,
        )
    };
    if meta + HANDOFF_MARK.len() > data {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: the four bytes lie inside the metadata; `[u8; 4]` has alignment 1.
    if unsafe { (meta as *const [u8; 4]).read() } != HANDOFF_MARK {
        return TC_ACT_UNSPEC;
    }
    match ctx.load::<[u8; 2]>(ETH_TYPE_OFFSET) {
        Ok(ethertype) if ethertype == ETHERTYPE_IPV6.to_be_bytes() => try_tc_forward6(ctx),
        _ => try_tc_forward(ctx),
    }
    .unwrap_or(TC_ACT_UNSPEC)
}
