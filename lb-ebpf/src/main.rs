//! Kernel data path of the service load balancer: XDP and TC ingress programs that translate
//! Service VIP:port to a backend and the backend's replies back, driven by the maps in
//! [`maps`] (layouts in `lb-common`).
//!
//! Both hooks run the same pipeline ([`lb::process`]); they differ only in how a packet is read
//! and rewritten ([`context`]).
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]

mod affinity;
mod checksum;
mod conntrack;
mod context;
mod error;
mod icmp_error;
mod lb;
mod log;
mod maps;
mod masquerade;
mod parse;
mod port_reuse;
mod reject;
mod rewrite;
mod select;
mod stats;
#[cfg(test)]
mod testing;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use lb_common::service::scope;

use crate::{
    context::{TcPacket, XdpPacket},
    error::Verdict,
    maps::KernelMaps,
};

/// TC ingress on pod-facing interfaces (`lb_common::program_names::TC_INGRESS`): traffic from
/// pods, looked up in the internal scope. Rejects go back to the pod through the interface.
/// Packets it lets through (translated or not) go on to the hook's next program with
/// `TC_ACT_UNSPEC` (TCX_NEXT): `TC_ACT_OK` would end the hook there and hide every packet from
/// other tools' programs attached after it, TCX or legacy `tc` filters alike.
#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    let mut pkt = TcPacket(ctx);
    match lb::process(&mut pkt, &mut KernelMaps, scope::INTERNAL) {
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::SendBack => pkt.redirect_back(),
    }
}

/// XDP on the node's external interface (`lb_common::program_names::XDP_INGRESS`): traffic
/// from outside the node, looked up in the external scope. Rejects leave by the same interface.
#[xdp]
pub fn lb_xdp_ingress(ctx: XdpContext) -> u32 {
    match lb::process(&mut XdpPacket(ctx), &mut KernelMaps, scope::EXTERNAL) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::SendBack => xdp_action::XDP_TX,
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
