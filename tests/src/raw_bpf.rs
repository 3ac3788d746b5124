//! Raw `bpf(2)` calls for the harness's tiny programs, which need no eBPF object: the
//! benchmark's no-ops and the outside namespace's XDP pass-through (`r0 = verdict; exit`), and
//! the packet-counting TC program standing for another tool's ([`crate::counting_program`]).

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// `bpf(2)` commands.
pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_PROG_TEST_RUN: libc::c_long = 10;
pub const BPF_LINK_CREATE: libc::c_long = 28;
/// Program types.
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// The XDP attach type.
pub const BPF_XDP: u32 = 37;
/// Verdicts.
pub const XDP_PASS: u32 = 2;
/// TC's "on to the next program" (`TC_ACT_UNSPEC`, TCX_NEXT: -1), the data path's pass.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    /// An instruction from its opcode, registers, offset and immediate.
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        }
    }
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD` (up to expected_attach_type).
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

/// Loads `r0 = verdict; exit` as a program of `prog_type` named `name` (at most 15 bytes).
pub fn load_verdict_program(
    prog_type: u32,
    verdict: u32,
    expected_attach_type: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let program = [
        // r0 = verdict (BPF_ALU64 | BPF_MOV | BPF_K)
        Insn::new(0xb7, 0, 0, 0, verdict as i32),
        // exit (BPF_JMP | BPF_EXIT)
        Insn::new(0x95, 0, 0, 0, 0),
    ];
    load_program(prog_type, &program, expected_attach_type, name)
}

/// Loads `program` as a GPL program of `prog_type` named `name` (at most 15 bytes).
pub fn load_program(
    prog_type: u32,
    program: &[Insn],
    expected_attach_type: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    let len = name.len().min(15);
    prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type,
        ..ProgLoadAttr::default()
    };
    // SAFETY: the attribute points at `program` and `license`, which outlive the call.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
    // SAFETY: BPF_PROG_LOAD returned a new program descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The leading fields of `union bpf_attr` for `BPF_LINK_CREATE`.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `program` to interface `ifindex` (of the calling thread's network namespace) at
/// `attach_type` through a BPF link, after any programs already there; detached when the link
/// is closed (or the interface goes away).
pub fn link_create(program: &OwnedFd, ifindex: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type,
        flags: 0,
    };
    // SAFETY: the attribute holds plain values only.
    let link = unsafe { bpf(BPF_LINK_CREATE, &mut attr) }?;
    // SAFETY: BPF_LINK_CREATE returned a new link descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(link) })
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c_name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `c_name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// Runs the `bpf(2)` command `cmd` with `attr`; returns the kernel's non-negative result.
///
/// # Safety
/// `attr` must be the leading part of a valid `union bpf_attr` for `cmd`, and every pointer in
/// it must stay valid for the call. A returned descriptor is the caller's to own.
pub unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i32> {
    let result = libc::syscall(
        libc::SYS_bpf,
        cmd,
        (attr as *mut T).cast::<libc::c_void>(),
        size_of::<T>() as libc::c_uint,
    );
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts_match_the_kernel() {
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(size_of::<ProgLoadAttr>(), 72);
    }
}
