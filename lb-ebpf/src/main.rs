//! Kernel data path of the service load balancer: XDP and TC ingress programs that translate
//! Service VIP:port to a backend and the backend's replies back, and a TC egress program that
//! translates the replies the node's own stack sends, driven by the maps in [`maps`] (layouts
//! in `lb-common`).
//!
//! Every hook runs the same pipeline ([`lb::process`], told which hook it runs in); they differ
//! only in how a packet is read and rewritten ([`context`]). Cgroup socket programs translate
//! the node's own sockets (and, when `LB_CONFIG` says so, pods') at `connect()` / `sendmsg()`
//! instead ([`sock`]), with the pipeline's backend selection ([`select`]).
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]

mod affinity;
mod checksum;
mod conntrack;
mod context;
mod error;
mod event;
mod fragment;
mod icmp_error;
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

use crate::{
    context::{SockCtx, TcPacket, XdpPacket},
    error::Verdict,
    lb::Hook,
    maps::KernelMaps,
    sock::SockVerdict,
};

/// TC ingress on pod-facing interfaces (`lb_common::program_names::TC_INGRESS`): traffic from
/// pods, looked up in the internal scope. Rejects go back to the pod through the interface.
/// Packets it lets through (translated or not) go on to the hook's next program with
/// `TC_ACT_UNSPEC` (TCX_NEXT): `TC_ACT_OK` would end the hook there and hide every packet from
/// other tools' programs attached after it, TCX or legacy `tc` filters alike.
#[classifier]
#[inline(always)]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    let mut pkt = TcPacket(ctx);
    match lb::process(&mut pkt, &mut KernelMaps, Hook::POD_FACING) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::SendBack => pkt.redirect_back(),
        Verdict::Forward => reply_path::tc_forward(&pkt.0),
    }
}

/// TC egress on pod-facing interfaces and the external interface
/// (`lb_common::program_names::TC_EGRESS`): replies the node's own stack sends for tracked
/// flows (a host-network backend answering a pod or an outside client) are translated back
/// to the frontend the client addressed; everything else goes on untouched.
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    match lb::process(&mut TcPacket(ctx), &mut KernelMaps, Hook::Egress) {
        Verdict::Drop => TC_ACT_SHOT,
        // Egress never answers a packet itself, nor forwards one (the stack routed it).
        Verdict::Pass | Verdict::SendBack | Verdict::Forward => TC_ACT_UNSPEC,
    }
}

/// XDP on the node's external interface (`lb_common::program_names::XDP_INGRESS`): traffic
/// from outside the node, looked up in the external scope. Rejects leave by the same interface.
#[xdp]
#[inline(always)]
pub fn lb_xdp_ingress(ctx: XdpContext) -> u32 {
    let mut pkt = XdpPacket(ctx);
    match lb::process(&mut pkt, &mut KernelMaps, Hook::EXTERNAL) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::SendBack => xdp_action::XDP_TX,
        Verdict::Forward => reply_path::xdp_handoff(&pkt.0),
    }
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
