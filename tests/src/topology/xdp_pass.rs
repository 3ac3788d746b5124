//! A pass-through XDP program for the far end of a veth pair.
//!
//! A veth delivers frames that an XDP program on its peer sends back with `XDP_TX` only if this
//! end's receive path runs in NAPI mode, which takes an XDP program of its own; otherwise they
//! are dropped. A wire has no such condition, so the outside namespace's interface gets this
//! program (`return XDP_PASS`, two instructions loaded with `bpf(2)` directly) to behave like
//! one: the node's XDP rejects then reach the outside client.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// `r0 = XDP_PASS (2); exit`, as `struct bpf_insn`s.
const PROGRAM: [u64; 2] = [
    u64::from_le_bytes([0xb7, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]),
    u64::from_le_bytes([0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
];

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

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
        let license = c"GPL";
        let mut prog_name = [0u8; 16];
        prog_name[..8].copy_from_slice(b"xdp_pass");
        let load = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: PROGRAM.len() as u32,
            insns: PROGRAM.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            expected_attach_type: BPF_XDP,
            ..ProgLoadAttr::default()
        };
        // SAFETY: the attribute points at `PROGRAM` and `license`, which outlive the call.
        let program = unsafe { bpf(BPF_PROG_LOAD, &load) }?;
        let link = LinkCreateAttr {
            prog_fd: program.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: 0,
        };
        // SAFETY: the attribute holds plain values only.
        let link = unsafe { bpf(BPF_LINK_CREATE, &link) }?;
        Ok(XdpPass { _link: link })
    }
}

/// Runs the `bpf(2)` command `cmd` with `attr` and returns the descriptor it creates.
///
/// # Safety
/// `attr` must be the leading part of a valid `union bpf_attr` for `cmd`, and every pointer in
/// it must stay valid for the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    let fd = libc::syscall(
        libc::SYS_bpf,
        cmd,
        attr as *const T,
        std::mem::size_of::<T>() as libc::c_uint,
    );
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(OwnedFd::from_raw_fd(fd as RawFd))
}
