//! Kernel data path of the service load balancer: XDP and TC ingress programs that translate
//! Service VIP:port to a backend and the backend's replies back, and a TC egress program that
//! translates the replies the node's own stack sends, driven by the maps in [`maps`] (layouts
//! in `lb-common`).
//!
//! Every hook runs the same pipeline ([`lb::process`], told which hook it runs in); they differ
//! only in how a packet is read and rewritten ([`context`]). Each hook's program handles IPv4
//! and tail-calls its IPv6 twin (the pipeline instantiated for [`family::Ipv6`]) for IPv6
//! frames: one program's verifier budget holds one family's pipeline. Cgroup socket programs translate
//! the node's own sockets (and, when `LB_CONFIG` says so, pods') at `connect()` / `sendmsg()`
//! instead ([`sock`]), with the pipeline's backend selection ([`select`]).
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
#![cfg_attr(
    target_arch = "bpf",
    feature(optimize_attribute, asm_experimental_arch)
)]

mod affinity;
mod checksum;
mod conntrack;
mod context;
mod error;
mod event;
mod family;
mod fragment;
mod icmp_error;
mod icmp_error6;
mod lb;
mod maps;
mod masquerade;
mod pairs;
mod parse;
mod port_reuse;
mod reject;
mod reject_limit;
mod reply_path;
mod rewrite;
mod select;
mod sock;
mod stats;
#[cfg(test)]
mod testing;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_set_retval,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

use lb_common::{maps::ipv6_slot, net::ETHERTYPE_IPV6, Counter};

use crate::{
    context::{Packet, SockCtx, TcPacket, XdpPacket},
    error::Verdict,
    family::{Ipv4, Ipv6},
    lb::{Front, Hook},
    maps::{ipv6_tail_call, KernelMaps},
    sock::SockVerdict,
};

/// TC ingress on pod-facing interfaces (`lb_common::program_names::TC_INGRESS`): traffic from
/// pods, looked up in the internal scope. Rejects go back to the pod through the interface.
/// Packets it lets through (translated or not) go on to the hook's next program with
/// `TC_ACT_UNSPEC` (TCX_NEXT): `TC_ACT_OK` would end the hook there and hide every packet from
/// other tools' programs attached after it, TCX or legacy `tc` filters alike.
#[classifier]
// Speed for IPv4 (the object is built for size: see lb-ebpf's Cargo.toml), inlined into the
// entry the macro wraps it in (LLVM may otherwise call it as a function of its own).
#[cfg_attr(target_arch = "bpf", optimize(speed))]
#[inline(always)]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    let mut pkt = TcPacket(ctx);
    if is_ipv6(&pkt) {
        let slot = ipv6_slot_of(&pkt, ipv6_slot::TC_INGRESS, ipv6_slot::TC_INGRESS_ICMP);
        ipv6_tail_call(&pkt.0, false, slot);
        return ipv6_unavailable(TC_ACT_UNSPEC);
    }
    tc_ingress::<Ipv4>(&mut pkt)
}

/// The IPv6 half of [`lb_tc_ingress`] (`lb_common::program_names::TC_INGRESS6`).
#[classifier]
pub fn lb_tc_ingress6(ctx: TcContext) -> i32 {
    tc_ingress::<Ipv6>(&mut TcPacket(ctx))
}

/// ICMPv6 errors about tracked flows at TC ingress (`lb_common::program_names::TC_ICMP6_INGRESS`),
/// tail-called by [`lb_tc_ingress`] for IPv6 frames whose fixed header is followed by ICMPv6:
/// in a program of their own, as the IPv6 pipeline leaves no room for them in its 512-byte
/// stack.
#[classifier]
pub fn lb_tc_icmp6_ingress(ctx: TcContext) -> i32 {
    tc_icmp6(ctx, Hook::POD_FACING)
}

#[inline(always)]
fn tc_icmp6(ctx: TcContext, hook: Hook) -> i32 {
    match lb::icmp6_errors(&mut TcPacket(ctx), &mut KernelMaps, hook) {
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Pass | Verdict::SendBack | Verdict::Forward => TC_ACT_UNSPEC,
    }
}

#[inline(always)]
fn tc_ingress<F: Front>(pkt: &mut TcPacket) -> i32 {
    match lb::process::<F, _, _>(pkt, &mut KernelMaps, Hook::POD_FACING) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::SendBack => pkt.redirect_back(),
        Verdict::Forward => reply_path::tc_forward::<F>(&pkt.0),
    }
}

/// TC egress on pod-facing interfaces and the external interface
/// (`lb_common::program_names::TC_EGRESS`): replies the node's own stack sends for tracked
/// flows (a host-network backend answering a pod or an outside client) are translated back
/// to the frontend the client addressed; everything else goes on untouched.
#[classifier]
// Speed for IPv4 (the object is built for size: see lb-ebpf's Cargo.toml), inlined into the
// entry the macro wraps it in (LLVM may otherwise call it as a function of its own).
#[cfg_attr(target_arch = "bpf", optimize(speed))]
#[inline(always)]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    let mut pkt = TcPacket(ctx);
    if is_ipv6(&pkt) {
        let slot = ipv6_slot_of(&pkt, ipv6_slot::TC_EGRESS, ipv6_slot::TC_EGRESS_ICMP);
        ipv6_tail_call(&pkt.0, false, slot);
        return ipv6_unavailable(TC_ACT_UNSPEC);
    }
    tc_egress::<Ipv4>(&mut pkt)
}

/// The IPv6 half of [`lb_tc_egress`] (`lb_common::program_names::TC_EGRESS6`).
#[classifier]
pub fn lb_tc_egress6(ctx: TcContext) -> i32 {
    tc_egress::<Ipv6>(&mut TcPacket(ctx))
}

/// ICMPv6 errors about tracked flows at TC egress (`lb_common::program_names::TC_ICMP6_EGRESS`),
/// tail-called by [`lb_tc_egress`] as [`lb_tc_icmp6_ingress`] is.
#[classifier]
pub fn lb_tc_icmp6_egress(ctx: TcContext) -> i32 {
    tc_icmp6(ctx, Hook::Egress)
}

#[inline(always)]
fn tc_egress<F: Front>(pkt: &mut TcPacket) -> i32 {
    match lb::process::<F, _, _>(pkt, &mut KernelMaps, Hook::Egress) {
        Verdict::Drop => TC_ACT_SHOT,
        // Egress never answers a packet itself, nor forwards one (the stack routed it).
        Verdict::Pass | Verdict::SendBack | Verdict::Forward => TC_ACT_UNSPEC,
    }
}

/// XDP on the node's external interface (`lb_common::program_names::XDP_INGRESS`): traffic
/// from outside the node, looked up in the external scope. Rejects leave by the same interface.
#[xdp]
// Speed for IPv4 (the object is built for size: see lb-ebpf's Cargo.toml), inlined into the
// entry the macro wraps it in (LLVM may otherwise call it as a function of its own).
#[cfg_attr(target_arch = "bpf", optimize(speed))]
#[inline(always)]
pub fn lb_xdp_ingress(ctx: XdpContext) -> u32 {
    let mut pkt = XdpPacket(ctx);
    if is_ipv6(&pkt) {
        let slot = ipv6_slot_of(&pkt, ipv6_slot::XDP, ipv6_slot::XDP_ICMP);
        ipv6_tail_call(&pkt.0, true, slot);
        return ipv6_unavailable(xdp_action::XDP_PASS);
    }
    xdp_ingress::<Ipv4>(&mut pkt)
}

/// The IPv6 half of [`lb_xdp_ingress`] (`lb_common::program_names::XDP_INGRESS6`).
#[xdp]
pub fn lb_xdp_ingress6(ctx: XdpContext) -> u32 {
    xdp_ingress::<Ipv6>(&mut XdpPacket(ctx))
}

/// ICMPv6 errors about tracked flows at XDP (`lb_common::program_names::XDP_ICMP6`),
/// tail-called by [`lb_xdp_ingress`] as [`lb_tc_icmp6_ingress`] is.
#[xdp]
pub fn lb_xdp_icmp6(ctx: XdpContext) -> u32 {
    match lb::icmp6_errors(&mut XdpPacket(ctx), &mut KernelMaps, Hook::EXTERNAL) {
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Pass | Verdict::SendBack | Verdict::Forward => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn xdp_ingress<F: Front>(pkt: &mut XdpPacket) -> u32 {
    match lb::process::<F, _, _>(pkt, &mut KernelMaps, Hook::EXTERNAL) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::SendBack => xdp_action::XDP_TX,
        Verdict::Forward => reply_path::xdp_handoff(&pkt.0),
    }
}

/// Whether the frame is IPv6 (by its EtherType), for the hook's IPv6 program.
#[inline(always)]
fn is_ipv6<P: Packet>(pkt: &P) -> bool {
    pkt.load::<2>(lb_common::net::ETH_TYPE_OFFSET) == Some(ETHERTYPE_IPV6.to_be_bytes())
}

/// The slot of the IPv6 program for an IPv6 frame: `icmp` when its fixed header is followed
/// by ICMPv6 (errors about tracked flows have programs of their own; behind extension
/// headers they are not translated), `pipeline` otherwise.
#[inline(always)]
fn ipv6_slot_of<P: Packet>(pkt: &P, pipeline: u32, icmp: u32) -> u32 {
    let next_header = lb_common::net::ETH_HLEN + lb_common::net::IPV6_NEXT_HEADER;
    match pkt.load::<2>(next_header).map(|[next, _]| next) {
        Some(lb_common::net::IPPROTO_ICMPV6) => icmp,
        _ => pipeline,
    }
}

/// An IPv6 packet whose program is missing from the program array: counted, and `pass`ed.
#[inline(always)]
fn ipv6_unavailable<T>(pass: T) -> T {
    stats::count(&mut KernelMaps, Counter::Ipv6Unavailable);
    pass
}

/// TC ingress on the XDP interface (`lb_common::program_names::TC_XDP_HANDOFF`), attached with
/// the redirect reply path: sends on the packets XDP translated and handed over
/// (`reply_path`); every other packet goes on to the hook's next program.
#[classifier]
pub fn lb_tc_xdp_handoff(ctx: TcContext) -> i32 {
    reply_path::tc_handoff(&ctx)
}

/// cgroup `connect4` (`lb_common::program_names::SOCK_CONNECT4`): a TCP or UDP socket of
/// the node (or of a pod, see [`sock`]) connecting to a Service is connected to a backend
/// instead.
#[cgroup_sock_addr(connect4)]
pub fn lb_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock_verdict(sock::forward(&mut SockCtx(ctx), &mut KernelMaps, false))
}

/// cgroup `sendmsg4` (`lb_common::program_names::SOCK_SENDMSG4`): a datagram of an
/// unconnected UDP socket of the node (or of a pod) sent to a Service goes to a backend
/// instead.
#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_verdict(sock::forward(&mut SockCtx(ctx), &mut KernelMaps, true))
}

/// cgroup `recvmsg4` (`lb_common::program_names::SOCK_RECVMSG4`): a backend's answer to a
/// translated UDP socket comes from the Service address. Must always return 1.
#[cgroup_sock_addr(recvmsg4)]
pub fn lb_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&mut SockCtx(ctx), &mut KernelMaps);
    1
}

/// cgroup `getpeername4` (`lb_common::program_names::SOCK_GETPEERNAME4`): a translated
/// socket's peer is the Service address. Must always return 1.
#[cgroup_sock_addr(getpeername4)]
pub fn lb_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&mut SockCtx(ctx), &mut KernelMaps);
    1
}

/// The return value of `connect4` and `sendmsg4`: 1 lets the call go on; 0 fails it, with
/// the `errno` set by `bpf_set_retval` (kernel 5.18) instead of the default `EPERM`.
#[inline(always)]
fn sock_verdict(verdict: SockVerdict) -> i32 {
    match verdict {
        SockVerdict::Proceed => 1,
        SockVerdict::Refuse(errno) => {
            // SAFETY: no pointers; allowed in connect and sendmsg hooks.
            unsafe { bpf_set_retval(-errno) };
            0
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The program has no panicking paths the verifier would accept; this is never reached.
    loop {}
}

#[cfg(not(test))]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
