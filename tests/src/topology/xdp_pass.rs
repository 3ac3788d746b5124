//! A pass-through XDP program for the far end of a veth pair.
//!
//! A veth delivers frames that an XDP program on its peer sends back with `XDP_TX` only if this
//! end's receive path runs in NAPI mode, which takes an XDP program of its own; otherwise they
//! are dropped. A wire has no such condition, so the outside namespace's interface gets this
//! program (`return XDP_PASS`, two instructions loaded with `bpf(2)` directly, see
//! [`crate::raw_bpf`]) to behave like
//! one: the node's XDP rejects then reach the outside client.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::raw_bpf::{self, BPF_LINK_CREATE, BPF_PROG_TYPE_XDP, BPF_XDP, XDP_PASS};

/// The leading fields of `union bpf_attr` for `BPF_LINK_CREATE`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// The program attached to an interface through a BPF link; detached when dropped (or when
/// the interface goes away).
#[derive(Debug)]
pub struct XdpPass {
    _link: OwnedFd,
}

impl XdpPass {
    /// Attaches the program to interface `iface` of the calling thread's network namespace.
    pub fn attach(iface: &str) -> io::Result<XdpPass> {
        let name = CString::new(iface).map_err(io::Error::other)?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let program =
            raw_bpf::load_verdict_program(BPF_PROG_TYPE_XDP, XDP_PASS, BPF_XDP, "xdp_pass")?;
        let mut link = LinkCreateAttr {
            prog_fd: program.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: 0,
        };
        // SAFETY: the attribute holds plain values only.
        let link = unsafe { raw_bpf::bpf(BPF_LINK_CREATE, &mut link) }?;
        // SAFETY: BPF_LINK_CREATE returned a new link descriptor that nothing else owns.
        Ok(XdpPass {
            _link: unsafe { OwnedFd::from_raw_fd(link) },
        })
    }
}
