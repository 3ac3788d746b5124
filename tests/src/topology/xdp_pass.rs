//! A pass-through XDP program for the far end of a veth pair.
//!
//! A veth delivers frames that an XDP program on its peer sends back with `XDP_TX` only if this
//! end's receive path runs in NAPI mode, which takes an XDP program of its own; otherwise they
//! are dropped. A wire has no such condition, so the outside namespace's interface gets this
//! program (`return XDP_PASS`, two instructions loaded with `bpf(2)` directly, see
//! [`crate::raw_bpf`]) to behave like
//! one: the node's XDP rejects then reach the outside client.

use std::{io, os::fd::OwnedFd};

use crate::raw_bpf::{self, BPF_PROG_TYPE_XDP, BPF_XDP, XDP_PASS};

/// The program attached to an interface through a BPF link; detached when dropped (or when
/// the interface goes away).
#[derive(Debug)]
pub struct XdpPass {
    _link: OwnedFd,
}

impl XdpPass {
    /// Attaches the program to interface `iface` of the calling thread's network namespace.
    pub fn attach(iface: &str) -> io::Result<XdpPass> {
        let ifindex = raw_bpf::ifindex(iface)?;
        let program =
            raw_bpf::load_verdict_program(BPF_PROG_TYPE_XDP, XDP_PASS, BPF_XDP, "xdp_pass")?;
        Ok(XdpPass {
            _link: raw_bpf::link_create(&program, ifindex, BPF_XDP)?,
        })
    }
}
