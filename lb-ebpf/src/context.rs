//! The one packet interface the load balancer needs, implemented for XDP and TC.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};

use crate::{
    parse::{Endpoint, Ipv4Flow, IPV4_CHECKSUM_OFFSET},
    rewrite::{self, RewriteFailed, Side, Store},
};

/// Packet access shared by both hooks.
pub trait Packet {
    /// Length of the whole frame in bytes (what per-service byte counters add).
    fn frame_len(&self) -> u32;
    /// Copies `N` bytes at `offset`, or returns `None` when the frame is shorter.
    ///
    /// `N` must be at least 2: LLVM turns a 1-byte check `ptr + 1 > end` into `ptr >= end`,
    /// from which the verifier proves no readable byte.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
    /// Replaces `side`'s address and port with `to`, keeping the IPv4 and TCP/UDP checksums
    /// valid.
    fn rewrite(&mut self, flow: &Ipv4Flow, side: Side, to: Endpoint) -> Result<(), RewriteFailed>;
}

/// Reads `N` bytes at `offset` between two packet pointers, checked so the verifier agrees.
#[inline(always)]
fn load_direct<const N: usize>(data: usize, data_end: usize, offset: usize) -> Option<[u8; N]> {
    const { assert!(N >= 2, "see Packet::load") };
    let start = data + offset;
    if start + N > data_end {
        return None;
    }
    // SAFETY: `start..start + N` lies inside the packet; `[u8; N]` has alignment 1.
    Some(unsafe { (start as *const [u8; N]).read() })
}

/// An XDP frame: rewritten in place with checksums computed by the program.
///
/// Meant for external interfaces, whose frames carry complete checksums. Traffic from local
/// sockets on a veth is `CHECKSUM_PARTIAL` (the L4 field holds a pseudo-header sum that only
/// the TC helpers update correctly), so pod-facing interfaces use [`TcPacket`].
pub struct XdpPacket(pub XdpContext);

impl Packet for XdpPacket {
    #[inline(always)]
    fn frame_len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        load_direct(self.0.data(), self.0.data_end(), offset)
    }

    #[inline(always)]
    fn rewrite(&mut self, flow: &Ipv4Flow, side: Side, to: Endpoint) -> Result<(), RewriteFailed> {
        rewrite::in_place(self, flow, side, to)
    }
}

impl Store for XdpPacket {
    #[inline(always)]
    fn store<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> Option<()> {
        let start = self.0.data() + offset;
        if start + N > self.0.data_end() {
            return None;
        }
        // SAFETY: `start..start + N` lies inside the packet; `[u8; N]` has alignment 1.
        unsafe { (start as *mut [u8; N]).write(bytes) };
        Some(())
    }
}

/// A socket buffer at TC ingress: rewritten through the kernel's store and checksum helpers,
/// which also keep `CHECKSUM_PARTIAL` (local veth traffic) and `CHECKSUM_COMPLETE` skbs right.
pub struct TcPacket(pub TcContext);

impl Packet for TcPacket {
    #[inline(always)]
    fn frame_len(&self) -> u32 {
        self.0.len()
    }

    /// Reads the linear part directly; pulls more into it when headers sit in fragments.
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if let Some(bytes) = load_direct(self.0.data(), self.0.data_end(), offset) {
            return Some(bytes);
        }
        let end = (offset + N) as u32;
        if end > self.0.len() {
            return None;
        }
        self.0.pull_data(end).ok()?;
        load_direct(self.0.data(), self.0.data_end(), offset)
    }

    #[inline(always)]
    fn rewrite(&mut self, flow: &Ipv4Flow, side: Side, to: Endpoint) -> Result<(), RewriteFailed> {
        let (addr_offset, port_offset, from) = side.locate(flow);
        let l4_checksum_offset = flow.l4_checksum_offset();
        // A UDP checksum of 0 means none: the helper leaves it, and never writes a new 0.
        let mangled_0 = if flow.is_udp() {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        if from.addr != to.addr {
            let old = u64::from(u32::from_ne_bytes(from.addr));
            let new = u64::from(u32::from_ne_bytes(to.addr));
            let ctx = &self.0;
            ctx.store(addr_offset, &to.addr, 0)
                .and_then(|()| ctx.l3_csum_replace(IPV4_CHECKSUM_OFFSET, old, new, 4))
                .and_then(|()| {
                    let flags = u64::from(BPF_F_PSEUDO_HDR) | mangled_0 | 4;
                    ctx.l4_csum_replace(l4_checksum_offset, old, new, flags)
                })
                .map_err(|_| RewriteFailed)?;
        }
        if from.port != to.port {
            let old = u64::from(u16::from_ne_bytes(from.port));
            let new = u64::from(u16::from_ne_bytes(to.port));
            let ctx = &self.0;
            ctx.store(port_offset, &to.port, 0)
                .and_then(|()| ctx.l4_csum_replace(l4_checksum_offset, old, new, mangled_0 | 2))
                .map_err(|_| RewriteFailed)?;
        }
        Ok(())
    }
}
