//! Raw `bpf(2)` calls for the harness's two-instruction programs (`r0 = verdict; exit`), which
//! need no eBPF object: the benchmark's no-ops and the outside namespace's XDP pass-through.

use std::{
    io,
    mem::size_of,
    os::fd::{FromRawFd, OwnedFd, RawFd},
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
pub const TC_ACT_OK: u32 = 0;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
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
        Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: verdict as i32,
        },
        // exit (BPF_JMP | BPF_EXIT)
        Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
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
