//! A packet-counting TC program standing for another tool's program on the agent's hook (a
//! CNI's, a monitoring agent's). It adds one to a one-element array map per packet and hands
//! the packet on (`TCX_NEXT`, which is `TC_ACT_UNSPEC` for a legacy filter), as a cooperative
//! program does. Loaded with raw `bpf(2)` calls ([`crate::raw_bpf`]); attached as a TCX link,
//! or pinned for a legacy `tc ... bpf object-pinned` filter.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use crate::raw_bpf::{self, Insn, BPF_PROG_TYPE_SCHED_CLS};

/// `bpf(2)` commands.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_PIN: libc::c_long = 6;
/// `BPF_MAP_TYPE_ARRAY`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// The TCX ingress attach type.
pub const BPF_TCX_INGRESS: u32 = 46;
/// `TCX_NEXT` / `TC_ACT_UNSPEC`: let the next program (or legacy filter) see the packet.
const TCX_NEXT: i32 = -1;
/// `src_reg` of a 64-bit immediate load that takes a map descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// The `bpf_map_lookup_elem` helper.
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

/// `union bpf_attr` for `BPF_MAP_LOOKUP_ELEM`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_OBJ_PIN`.
#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The loaded program and its counter; both go when this is dropped and nothing else (a
/// link, a tc filter) holds them.
#[derive(Debug)]
pub struct CountingProgram {
    program: OwnedFd,
    counter: OwnedFd,
}

impl CountingProgram {
    /// Loads the program as a TC classifier named `name` (at most 15 bytes).
    pub fn load(name: &str) -> io::Result<CountingProgram> {
        let mut create = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
        };
        // SAFETY: the attribute holds plain values only.
        let counter = unsafe { raw_bpf::bpf(BPF_MAP_CREATE, &mut create) }?;
        // SAFETY: BPF_MAP_CREATE returned a new map descriptor that nothing else owns.
        let counter = unsafe { OwnedFd::from_raw_fd(counter) };
        let program = [
            // r1 = the counter map (BPF_LD | BPF_IMM | BPF_DW, two instructions)
            Insn::new(0x18, 1, BPF_PSEUDO_MAP_FD, 0, counter.as_raw_fd()),
            Insn::new(0, 0, 0, 0, 0),
            // *(u32 *)(r10 - 4) = 0: the key (BPF_ST | BPF_MEM | BPF_W)
            Insn::new(0x62, 10, 0, -4, 0),
            // r2 = r10 - 4 (BPF_ALU64 | BPF_MOV | BPF_X, then BPF_ALU64 | BPF_ADD | BPF_K)
            Insn::new(0xbf, 2, 10, 0, 0),
            Insn::new(0x07, 2, 0, 0, -4),
            // r0 = bpf_map_lookup_elem(r1, r2) (BPF_JMP | BPF_CALL)
            Insn::new(0x85, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
            // if r0 == 0 skip the increment (BPF_JMP | BPF_JEQ | BPF_K)
            Insn::new(0x15, 0, 0, 2, 0),
            // r1 = 1; lock *(u64 *)(r0 + 0) += r1 (BPF_STX | BPF_ATOMIC | BPF_DW, BPF_ADD)
            Insn::new(0xb7, 1, 0, 0, 1),
            Insn::new(0xdb, 0, 1, 0, 0),
            // return TCX_NEXT
            Insn::new(0xb7, 0, 0, 0, TCX_NEXT),
            Insn::new(0x95, 0, 0, 0, 0),
        ];
        let program = raw_bpf::load_program(BPF_PROG_TYPE_SCHED_CLS, &program, 0, name)?;
        Ok(CountingProgram { program, counter })
    }

    /// Packets the program has seen.
    pub fn count(&self) -> io::Result<u64> {
        let key = 0u32;
        let mut value = 0u64;
        let mut attr = MapElemAttr {
            map_fd: self.counter.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &mut value as *mut u64 as u64,
            flags: 0,
        };
        // SAFETY: the attribute points at `key` and `value`, which outlive the call.
        unsafe { raw_bpf::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }?;
        Ok(value)
    }

    /// Attaches the program to `iface`'s TCX ingress (in the calling thread's network
    /// namespace) after the programs already there; detached when the returned link is closed.
    pub fn attach_tcx_ingress(&self, iface: &str) -> io::Result<OwnedFd> {
        raw_bpf::link_create(&self.program, raw_bpf::ifindex(iface)?, BPF_TCX_INGRESS)
    }

    /// Pins the program at `path` on a bpffs (for `tc filter ... bpf object-pinned <path>`).
    pub fn pin(&self, path: &Path) -> io::Result<()> {
        let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut attr = ObjPinAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd: self.program.as_raw_fd() as u32,
            file_flags: 0,
        };
        // SAFETY: the attribute points at `path`, which outlives the call.
        unsafe { raw_bpf::bpf(BPF_OBJ_PIN, &mut attr) }.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<MapElemAttr>(), 32);
        assert_eq!(std::mem::size_of::<ObjPinAttr>(), 16);
    }

    #[test]
    fn the_program_loads_and_starts_at_zero() {
        crate::require_root!();
        let program = CountingProgram::load("count_test").unwrap();
        assert_eq!(program.count().unwrap(), 0);
    }
}
