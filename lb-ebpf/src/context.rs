//! The one packet interface the load balancer needs, implemented for XDP and TC.

use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_md, BPF_F_MARK_MANGLED_0,
        BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, TC_ACT_SHOT,
    },
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_redirect, bpf_skb_change_tail,
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::{SockAddrContext, TcContext, XdpContext},
    EbpfContext,
};

use lb_common::{event::hook, net::ETH_HLEN};

use crate::{
    family::Family,
    parse::{Flow, FlowEnd},
    reject,
    rewrite::{self, RewriteFailed, Side},
    sock::SockAddr,
};

/// Packet access shared by both hooks.
pub trait Packet {
    /// The `lb_common::event::hook` of this packet kind at ingress.
    const INGRESS_HOOK: u8;
    /// The interface the packet is on.
    fn ifindex(&self) -> u32;
    /// Length of the whole frame in bytes (what per-service byte counters add).
    fn frame_len(&self) -> u32;
    /// Copies `N` bytes at `offset`, or returns `None` when the frame is shorter.
    ///
    /// `N` must be at least 2: LLVM turns a 1-byte check `ptr + 1 > end` into `ptr >= end`,
    /// from which the verifier proves no readable byte.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
    /// Writes `bytes` at `offset`, or returns `None` when that is beyond the packet (or the
    /// write failed).
    fn store<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> Option<()>;
    /// Makes room for a reply that quotes the packet: moves everything from the IPv4 header on
    /// back by `room` bytes, then cuts the frame to `len` bytes. The bytes before the moved
    /// IPv4 header are unspecified afterwards; the caller writes all of them. `len - room`
    /// must not exceed the frame length.
    fn make_reply_room(&mut self, room: u32, len: u32) -> Result<(), RewriteFailed>;
    /// [`reject::quoted_sum6`] of the packet's first `len` bytes after the Ethernet header.
    fn quote_sum(&mut self, len: usize) -> Option<u32>;
    /// Replaces `side`'s address and port with `to`, keeping the IPv4 and TCP/UDP/SCTP
    /// checksums valid.
    fn rewrite<F: Family>(
        &mut self,
        flow: &Flow<F>,
        side: Side,
        to: FlowEnd<F::Addr>,
    ) -> Result<(), RewriteFailed>;
}

/// Reads `N` bytes at `offset` between two packet pointers, checked so the verifier agrees.
#[inline(always)]
pub fn load_direct<const N: usize>(data: usize, data_end: usize, offset: usize) -> Option<[u8; N]> {
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
    const INGRESS_HOOK: u8 = hook::XDP;

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reads the program's own context.
        unsafe { (*self.0.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        load_direct(self.0.data(), self.0.data_end(), offset)
    }

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

    /// Cuts the tail, then grows the head: the IPv4 header stays where it is in memory.
    #[inline(always)]
    fn make_reply_room(&mut self, room: u32, len: u32) -> Result<(), RewriteFailed> {
        let cut = (len - room) as i32 - self.frame_len() as i32;
        // SAFETY: the helpers only move the frame's bounds; every later access re-checks them.
        let failed = unsafe {
            (cut != 0 && bpf_xdp_adjust_tail(self.0.ctx, cut) != 0)
                || bpf_xdp_adjust_head(self.0.ctx, -(room as i32)) != 0
        };
        if failed {
            return Err(RewriteFailed);
        }
        Ok(())
    }

    #[inline(always)]
    fn quote_sum(&mut self, len: usize) -> Option<u32> {
        from_global(lb_quote_sum_xdp(self.0.ctx, len as u32))
    }

    #[inline(always)]
    fn rewrite<F: Family>(
        &mut self,
        flow: &Flow<F>,
        side: Side,
        to: FlowEnd<F::Addr>,
    ) -> Result<(), RewriteFailed> {
        rewrite::in_place(self, flow, side, to)
    }
}

/// A socket buffer at TC ingress or egress: rewritten through the kernel's store and checksum
/// helpers, which also keep `CHECKSUM_PARTIAL` (local veth traffic, and everything the node's
/// own stack sends) and `CHECKSUM_COMPLETE` skbs right.
pub struct TcPacket(pub TcContext);

impl TcPacket {
    /// The linear data's start and end, read afresh with one load instruction each from the
    /// context at the fields' offsets. Written as assembly: plain or volatile reads let LLVM
    /// carry the pointers across branches as 32-bit values it zero-extends with shifts, or
    /// keep `skb + offset` in a register and load through it; the verifier refuses both.
    #[cfg(target_arch = "bpf")]
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        use aya_ebpf::bindings::__sk_buff;
        let (data, data_end): (u64, u64);
        // SAFETY: two 4-byte loads from the program's own context, which the verifier
        // rewrites into reads of the skb's data pointers.
        unsafe {
            core::arch::asm!(
                "{data} = *(u32 *)({skb} + {data_offset})",
                "{data_end} = *(u32 *)({skb} + {data_end_offset})",
                skb = in(reg) self.0.skb.skb,
                data = out(reg) data,
                data_end = out(reg) data_end,
                data_offset = const core::mem::offset_of!(__sk_buff, data),
                data_end_offset = const core::mem::offset_of!(__sk_buff, data_end),
                options(nostack, preserves_flags),
            );
        }
        (data as usize, data_end as usize)
    }

    /// The host build (unit tests, which never run a TC program) reads the fields plainly.
    #[cfg(not(target_arch = "bpf"))]
    fn bounds(&self) -> (usize, usize) {
        let skb = self.0.skb.skb;
        // SAFETY: reads the context's fields.
        unsafe { ((*skb).data as usize, (*skb).data_end as usize) }
    }

    /// Sends the packet back out of the interface it arrived on (towards the pod); returns the
    /// program's return code (`TC_ACT_REDIRECT`, or `TC_ACT_SHOT` if the helper refuses).
    #[inline(always)]
    pub fn redirect_back(&self) -> i32 {
        // SAFETY: reads the program's own context; the helper takes plain integers.
        let verdict = unsafe { bpf_redirect((*self.0.skb.skb).ifindex, 0) };
        i32::try_from(verdict).unwrap_or(TC_ACT_SHOT)
    }
}

impl Packet for TcPacket {
    const INGRESS_HOOK: u8 = hook::TC_INGRESS;

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reads the program's own context.
        unsafe { (*self.0.skb.skb).ifindex }
    }

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        self.0.len()
    }

    /// Reads the linear part directly; pulls more into it when headers sit in fragments.
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let (data, data_end) = self.bounds();
        if let Some(bytes) = load_direct(data, data_end, offset) {
            return Some(bytes);
        }
        let end = (offset + N) as u32;
        if end > self.0.len() {
            return None;
        }
        self.0.pull_data(end).ok()?;
        let (data, data_end) = self.bounds();
        load_direct(data, data_end, offset)
    }

    /// Keeps a `CHECKSUM_COMPLETE` skb's sum right (`BPF_F_RECOMPUTE_CSUM`).
    #[inline(always)]
    fn store<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> Option<()> {
        self.0
            .store(offset, &bytes, u64::from(BPF_F_RECOMPUTE_CSUM))
            .ok()
    }

    /// Cuts the tail, then inserts the room after the Ethernet header, which also moves the
    /// skb's network header to the new bytes. Trimming first keeps a `CHECKSUM_PARTIAL`
    /// skb's checksum field inside the frame, as the kernel requires (the reply quotes the
    /// whole fixed TCP header for that reason).
    #[inline(always)]
    fn make_reply_room(&mut self, room: u32, len: u32) -> Result<(), RewriteFailed> {
        let ctx = &self.0;
        // SAFETY: the helper only resizes the skb; every later access re-checks bounds.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb, len - room, 0) } != 0 {
            return Err(RewriteFailed);
        }
        ctx.adjust_room(room as i32, BPF_ADJ_ROOM_MAC, 0)
            .map_err(|_| RewriteFailed)
    }

    #[inline(always)]
    fn quote_sum(&mut self, len: usize) -> Option<u32> {
        from_global(lb_quote_sum_tc(self.0.skb.skb, len as u32))
    }

    /// IPv4: the address, then the header checksum and the L4 checksum's pseudo-header part;
    /// IPv6 (no header checksum): the address, then the pseudo-header part word by word.
    /// SCTP: the address with the header checksum only, the port with
    /// `rewrite::sctp_port_checksum`.
    #[inline(always)]
    fn rewrite<F: Family>(
        &mut self,
        flow: &Flow<F>,
        side: Side,
        to: FlowEnd<F::Addr>,
    ) -> Result<(), RewriteFailed> {
        let (addr_offset, port_offset, from) = side.locate(flow);
        let l4_checksum_offset = flow.l4_checksum_offset();
        // A UDP checksum of 0 means none: the helper leaves it, and never writes a new 0.
        let mangled_0 = if flow.is_udp() {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        if !F::same(&from.addr, &to.addr) {
            let ctx = &self.0;
            let word = |addr: &F::Addr, i: usize| u64::from(u32::from_ne_bytes(F::word(addr, i)));
            let mut stored = ctx.store(addr_offset, &to.addr, 0).is_ok();
            if let Some(offset) = F::HEADER_CHECKSUM_OFFSET {
                stored = stored
                    && ctx
                        .l3_csum_replace(offset, word(&from.addr, 0), word(&to.addr, 0), 4)
                        .is_ok();
            }
            let flags = u64::from(BPF_F_PSEUDO_HDR) | mangled_0 | 4;
            // SCTP's checksum covers no pseudo-header.
            for i in 0..F::WORDS * usize::from(!flow.is_sctp()) {
                let (old, new) = (word(&from.addr, i), word(&to.addr, i));
                stored = stored
                    && (old == new
                        || ctx
                            .l4_csum_replace(l4_checksum_offset, old, new, flags)
                            .is_ok());
            }
            if !stored {
                return Err(RewriteFailed);
            }
        }
        if from.port != to.port && flow.is_sctp() {
            self.store(port_offset, to.port).ok_or(RewriteFailed)?;
            rewrite::sctp_port_checksum(self, flow, side, from.port, to.port)?;
        } else if from.port != to.port {
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

/// What [`lb_quote_sum_tc`] and [`lb_quote_sum_xdp`] return when the packet is too short (no
/// sum of at most 1232 bytes comes near it).
const NO_SUM: u32 = u32::MAX;

/// The quoted sum of a TC packet (its first `len` bytes pulled into the linear part) as a
/// global function: the verifier checks its 154-step loop once, on its own, instead of on
/// every path that rejects, which took `lb_tc_ingress6` past its 1M-instruction budget. It
/// keeps everything in registers: its stack would add to the calling program's.
#[no_mangle]
#[inline(never)]
pub extern "C" fn lb_quote_sum_tc(skb: *mut __sk_buff, len: u32) -> u32 {
    let pkt = TcPacket(TcContext::new(skb));
    if pkt.0.pull_data(ETH_HLEN as u32 + len).is_err() {
        return NO_SUM;
    }
    let (data, data_end) = pkt.bounds();
    reject::quoted_sum6(data, data_end, len as usize).unwrap_or(NO_SUM)
}

/// [`lb_quote_sum_tc`] for XDP.
#[no_mangle]
#[inline(never)]
pub extern "C" fn lb_quote_sum_xdp(ctx: *mut xdp_md, len: u32) -> u32 {
    let ctx = XdpContext::new(ctx);
    reject::quoted_sum6(ctx.data(), ctx.data_end(), len as usize).unwrap_or(NO_SUM)
}

#[inline(always)]
fn from_global(sum: u32) -> Option<u32> {
    (sum != NO_SUM).then_some(sum)
}

/// The socket call of a cgroup `sock_addr` program (IPv4 hooks).
pub struct SockCtx(pub SockAddrContext);

impl SockAddr for SockCtx {
    #[inline(always)]
    fn addr(&self) -> FlowEnd {
        // SAFETY: the kernel hands the program a valid context; the verifier rewrites these
        // 4-byte loads into reads of the socket call's address.
        let (ip, port) = unsafe { ((*self.0.sock_addr).user_ip4, (*self.0.sock_addr).user_port) };
        FlowEnd {
            // Both in network byte order: the port in the field's first two bytes.
            addr: ip.to_ne_bytes(),
            port: (port as u16).to_ne_bytes(),
        }
    }

    #[inline(always)]
    fn set_addr(&mut self, to: FlowEnd) {
        // SAFETY: as above; the IPv4 hooks may write both fields, with 4-byte stores.
        unsafe {
            (*self.0.sock_addr).user_ip4 = u32::from_ne_bytes(to.addr);
            (*self.0.sock_addr).user_port = u32::from(u16::from_ne_bytes(to.port));
        }
    }

    #[inline(always)]
    fn proto(&self) -> u8 {
        // SAFETY: as above.
        unsafe { (*self.0.sock_addr).protocol as u8 }
    }

    #[inline(always)]
    fn cookie(&mut self) -> u64 {
        // SAFETY: the helper only reads the context's socket.
        unsafe { bpf_get_socket_cookie(self.0.as_ptr()) }
    }

    #[inline(always)]
    fn netns_cookie(&mut self) -> u64 {
        // SAFETY: as above.
        unsafe { bpf_get_netns_cookie(self.0.as_ptr()) }
    }

    #[inline(always)]
    fn source(&mut self, sendmsg: bool) -> [u8; 4] {
        let ctx = self.0.sock_addr;
        // SAFETY: the context is valid; `msg_src_ip4` may be read in sendmsg4 hooks only
        // (`sendmsg` is a constant per hook), and `sk` is never null in `sock_addr` hooks,
        // whose `src_ip4` (the bound address, network byte order) every hook may read.
        unsafe {
            let named = match sendmsg {
                true => (*ctx).msg_src_ip4,
                false => 0,
            };
            match named {
                0 => (*(*ctx).__bindgen_anon_1.sk).src_ip4.to_ne_bytes(),
                named => named.to_ne_bytes(),
            }
        }
    }

    #[inline(always)]
    fn source_port(&mut self) -> [u8; 2] {
        // SAFETY: as above; `src_port` is in host byte order.
        let port = unsafe { (*(*self.0.sock_addr).__bindgen_anon_1.sk).src_port };
        (port as u16).to_be_bytes()
    }
}
