//! BPF_PROG_TEST_RUN through one raw `bpf(2)` helper, and the no-op programs it is compared
//! with, so the data path's programs and the no-ops are measured identically.
//!
//! The no-ops are two instructions (`r0 = verdict; exit`) loaded with a raw BPF_PROG_LOAD:
//! XDP returns XDP_PASS, TC returns TC_ACT_OK.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use serde::Serialize;

/// `bpf(2)` commands.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Program types.
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// The verdicts the no-ops return.
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
/// Room for output frames (no program here grows a frame).
const OUTPUT_ROOM: usize = 2_048;

/// Which hook a program runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    /// Both hooks, in report order.
    pub const ALL: [Hook; 2] = [Hook::Xdp, Hook::Tc];

    /// The verdict meaning "continue as usual" at this hook.
    pub fn pass_verdict(self) -> u32 {
        match self {
            Hook::Xdp => XDP_PASS,
            Hook::Tc => TC_ACT_OK,
        }
    }

    /// Name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Hook::Xdp => "XDP",
            Hook::Tc => "TC",
        }
    }
}

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The program's return value (of the last iteration).
    pub verdict: u32,
    /// The kernel's measured time per iteration (total / repeat), in nanoseconds.
    pub duration_ns: u32,
    /// The packet after the last iteration.
    pub frame: Vec<u8>,
}

/// Runs `program` on `frame` `repeat` times in the kernel. With `repeat > 1` the kernel reuses
/// one packet buffer, so a program that rewrites the packet sees its own output from the
/// second iteration on.
pub fn test_run(program: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<Outcome> {
    let mut out = vec![0u8; frame.len() + OUTPUT_ROOM];
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    out.truncate(attr.data_size_out as usize);
    Ok(Outcome {
        verdict: attr.retval,
        duration_ns: attr.duration,
        frame: out,
    })
}

/// A loaded two-instruction program that passes every packet; unloaded on drop.
#[derive(Debug)]
pub struct NoopProgram {
    fd: OwnedFd,
}

impl NoopProgram {
    /// Loads the no-op for `hook`.
    pub fn load(hook: Hook) -> io::Result<NoopProgram> {
        let (prog_type, verdict) = match hook {
            Hook::Xdp => (BPF_PROG_TYPE_XDP, XDP_PASS),
            Hook::Tc => (BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK),
        };
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
        let mut name = [0u8; 16];
        name[..10].copy_from_slice(b"bench_noop");
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..ProgLoadAttr::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        // SAFETY: BPF_PROG_LOAD returned a new program descriptor that nothing else owns.
        Ok(NoopProgram {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

impl AsFd for NoopProgram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One eBPF instruction.
#[repr(C)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

/// The BPF_PROG_LOAD part of `union bpf_attr` (fields up to expected_attach_type).
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

/// The BPF_PROG_TEST_RUN part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<i32> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `command`, valid and
    // writable for the call; every pointer inside it refers to memory alive for the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as libc::c_uint,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{tcp_flags, Frame};

    #[test]
    fn attribute_layouts_match_the_kernel() {
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(size_of::<ProgLoadAttr>(), 72);
        assert_eq!(size_of::<TestRunAttr>(), 80);
    }

    #[test]
    fn noops_pass_frames_unchanged_and_report_a_duration() {
        crate::require_root!();
        let frame = Frame::tcp(
            "198.18.0.10:40000".parse().unwrap(),
            "198.18.0.11:8080".parse().unwrap(),
            tcp_flags::ACK,
        )
        .to_bytes();
        for hook in Hook::ALL {
            let noop = NoopProgram::load(hook).unwrap();
            let outcome = test_run(noop.as_fd(), &frame, 1_000).unwrap();
            assert_eq!(outcome.verdict, hook.pass_verdict(), "{hook:?}");
            assert_eq!(outcome.frame, frame, "{hook:?}");
            assert!(outcome.duration_ns < 10_000, "{hook:?}: {outcome:?}");
        }
    }
}
