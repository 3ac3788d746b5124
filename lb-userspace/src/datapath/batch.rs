//! Reading a hash map a few thousand entries per system call with `BPF_MAP_LOOKUP_BATCH`
//! (kernel 5.6), where aya 0.14's iterator takes two calls per entry: a walk of a full
//! conntrack table (262,144 entries) takes about 70 calls instead of half a million. aya has
//! no batch operations yet; this is the one raw `bpf()` call of the agent.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use aya::Pod;

/// `bpf_cmd` number of `BPF_MAP_LOOKUP_BATCH` (uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;

/// Entries asked for per call. A hash bucket holding more than this fails with ENOSPC, then
/// the call is repeated with room for twice as many.
const BATCH: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map `map` (key type `K`, value type `V`, whose sizes the caller
/// has checked against the map's), in the kernel's bucket order. Entries added or deleted
/// during the walk may or may not be seen, as with any walk of a live map.
pub fn entries<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut found = Vec::new();
    let mut room = BATCH;
    // The hash map's batch token: the next bucket to read.
    let (mut token, mut next_token) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(room);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(room);
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token as *mut u32 as u64
            },
            out_batch: &mut next_token as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: room as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `room` keys and values and at two u32 tokens,
        // all alive for the call; the kernel writes at most `count` entries.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            Some(libc::ENOSPC) if attr.count == 0 => {
                room *= 2;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        let count = (attr.count as usize).min(room);
        // SAFETY: the kernel initialised the first `count` keys and values; K and V are Pod.
        unsafe {
            keys.set_len(count);
            values.set_len(count);
        }
        found.extend(
            keys.into_iter()
                .zip(values)
                // SAFETY: as above.
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
        );
        if error.is_some() {
            // ENOENT: the last bucket was read.
            return Ok(found);
        }
        token = next_token;
        first = false;
    }
}
