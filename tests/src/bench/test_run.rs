//! BPF_PROG_TEST_RUN through one raw `bpf(2)` helper, and the no-op programs it is compared
//! with, so the data path's programs and the no-ops are measured identically.
//!
//! The no-ops are two instructions (`r0 = verdict; exit`) loaded with a raw BPF_PROG_LOAD:
//! XDP returns XDP_PASS, TC returns TC_ACT_UNSPEC (the data path's TC pass).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use serde::Serialize;

use crate::raw_bpf::{
    self, BPF_PROG_TEST_RUN, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, TC_ACT_UNSPEC, XDP_PASS,
};
/// Room for output frames (no program here grows a frame).
const OUTPUT_ROOM: usize = 2_048;

/// Which hook a program runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Hook {
    Xdp,
    Tc,
    /// TC egress: replies the node's own stack sends.
    TcEgress,
}

impl Hook {
    /// Every hook, in report order.
    pub const ALL: [Hook; 3] = [Hook::Xdp, Hook::Tc, Hook::TcEgress];

    /// The verdict meaning "continue as usual" at this hook.
    pub fn pass_verdict(self) -> u32 {
        match self {
            Hook::Xdp => XDP_PASS,
            Hook::Tc | Hook::TcEgress => TC_ACT_UNSPEC,
        }
    }

    /// Name in reports (also in plot file names, lower-cased).
    pub fn label(self) -> &'static str {
        match self {
            Hook::Xdp => "XDP",
            Hook::Tc => "TC",
            Hook::TcEgress => "TC-egress",
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
    // SAFETY: `attr` is BPF_PROG_TEST_RUN's part of `union bpf_attr`; its pointers refer to
    // `frame` and `out`, alive for the call.
    unsafe { raw_bpf::bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
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
        let prog_type = match hook {
            Hook::Xdp => BPF_PROG_TYPE_XDP,
            Hook::Tc | Hook::TcEgress => BPF_PROG_TYPE_SCHED_CLS,
        };
        let fd = raw_bpf::load_verdict_program(prog_type, hook.pass_verdict(), 0, "bench_noop")?;
        Ok(NoopProgram { fd })
    }
}

impl AsFd for NoopProgram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::net::tcp_flags;
    use lb_frames::Frame;

    #[test]
    fn attribute_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<TestRunAttr>(), 80);
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
