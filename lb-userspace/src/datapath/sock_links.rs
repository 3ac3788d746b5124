//! The socket programs' attachments to a cgroup v2 directory: one `bpf_link` per hook,
//! pinned as `<links dir>/sock-<hook>` so it outlives the agent. A restarted agent swaps its
//! new program into the pinned link (`BPF_LINK_UPDATE`), as it does for TC and XDP, when the
//! link is attached to the same cgroup; a link on another cgroup (a changed `--cgroup-path`)
//! is unpinned, which detaches it, and the programs are attached anew.
//!
//! aya 0.14 can attach a cgroup `sock_addr` program but neither update nor inspect its link,
//! so those two are raw `bpf()` calls here.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use lb_common::program_names;
use tracing::info;

use super::{pinned_links, DatapathError};

/// The socket programs by hook: the hook names the pin, `sock-<hook>`.
pub(super) const PROGRAMS: [(&str, &str); 4] = [
    ("connect4", program_names::SOCK_CONNECT4),
    ("sendmsg4", program_names::SOCK_SENDMSG4),
    ("recvmsg4", program_names::SOCK_RECVMSG4),
    ("getpeername4", program_names::SOCK_GETPEERNAME4),
];

/// `statfs` magic of a cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `bpf_cmd` numbers (uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_int = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_LINK_UPDATE: libc::c_int = 29;
/// `bpf_link_type` of a cgroup link.
const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// The pin of the link of `hook` in `links_dir`.
pub(super) fn pin_path(links_dir: &Path, hook: &str) -> PathBuf {
    links_dir.join(format!("sock-{hook}"))
}

/// Opens `path` as a cgroup v2 directory, with its cgroup id (its inode number, as the kernel
/// reports it in a cgroup link's info).
pub(super) fn open_cgroup(path: &Path) -> Result<(File, u64), DatapathError> {
    let open_error = |source| DatapathError::OpenCgroup {
        path: path.to_path_buf(),
        source,
    };
    let dir = File::open(path).map_err(open_error)?;
    if !on_cgroup2(&dir).map_err(open_error)? {
        return Err(DatapathError::NotCgroup2(path.to_path_buf()));
    }
    let id = dir.metadata().map_err(open_error)?.ino();
    Ok((dir, id))
}

/// Whether `path` is a directory of a cgroup v2 file system (false if it cannot be opened).
pub fn is_cgroup2(path: &Path) -> bool {
    File::open(path)
        .and_then(|dir| on_cgroup2(&dir))
        .unwrap_or(false)
}

/// Whether the open `file` is on a cgroup v2 file system (`statfs` magic).
fn on_cgroup2(file: &File) -> io::Result<bool> {
    // SAFETY: an all-zero statfs is valid; fstatfs fills it for the open descriptor.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// Swaps `program` into the link pinned at `pin` if that link is attached to the cgroup
/// `cgroup_id`; whether it did. A pin that cannot be reused is removed (which detaches its
/// link once no process holds it).
pub(super) fn reuse(pin: &Path, cgroup_id: u64, program: &CgroupSockAddr) -> bool {
    let link = match obj_get(pin) {
        Ok(link) => link,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(e) => {
            pinned_links::discard(pin, &e);
            return false;
        }
    };
    let fd = link.as_fd();
    let replaced = match link_cgroup(fd) {
        Ok(Some(id)) if id == cgroup_id => program
            .fd()
            .map_err(|e| e.to_string())
            .and_then(|prog| link_update(fd, prog.as_fd()).map_err(|e| e.to_string())),
        Ok(Some(id)) => Err(format!("it is attached to cgroup id {id}, not {cgroup_id}")),
        Ok(None) => Err("it is not a cgroup link".to_string()),
        Err(e) => Err(e.to_string()),
    };
    match replaced {
        Ok(()) => true,
        Err(why) => {
            pinned_links::discard(pin, &why);
            false
        }
    }
}

/// Attaches `program` to `cgroup` with a `bpf_link` and pins the link at `pin`, or without a
/// pin leaves it to the program (detached when the program is dropped). A cgroup link always
/// runs beside the cgroup's other programs (the kernel attaches links as with
/// `BPF_F_ALLOW_MULTI` and refuses any flag), so other tools' programs stay.
pub(super) fn attach(
    program: &mut CgroupSockAddr,
    name: &'static str,
    cgroup: (&File, &Path),
    pin: Option<&Path>,
) -> Result<(), DatapathError> {
    let (dir, path) = cgroup;
    let attach_error = |source| {
        DatapathError::or_permission_denied(
            format!("attaching {name} to cgroup {}", path.display()),
            source,
            |source| DatapathError::AttachCgroup {
                program: name,
                cgroup: path.to_path_buf(),
                source: Box::new(source),
            },
        )
    };
    let id = program
        .attach(dir, CgroupAttachMode::Single)
        .map_err(attach_error)?;
    let Some(pin) = pin else {
        return Ok(());
    };
    let link = program.take_link(id).map_err(attach_error)?;
    let link = FdLink::try_from(link).map_err(|e| DatapathError::AttachCgroup {
        program: name,
        cgroup: path.to_path_buf(),
        source: Box::new(e),
    })?;
    pinned_links::pin(link, pin)
}

/// Removes the socket programs' pins from `links_dir`, which detaches them; the removed pins.
pub(super) fn remove_all(links_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for (hook, _) in PROGRAMS {
        let pin = pin_path(links_dir, hook);
        if fs::symlink_metadata(&pin).is_ok() {
            pinned_links::remove(&pin);
            info!("removed {} (--no-socket-lb)", pin.display());
            removed.push(pin);
        }
    }
    removed
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`).
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct GetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = GetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The cgroup id a link is attached to, `None` for a link of another type.
fn link_cgroup(link: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    /// The head of `struct bpf_link_info` and its `cgroup` member.
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        type_: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        cgroup_id: u64,
        attach_type: u32,
        _rest: [u32; 9],
    }
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = LinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok((info.type_ == BPF_LINK_TYPE_CGROUP).then_some(info.cgroup_id))
}

/// Replaces the program of `link` with `program`, atomically.
fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct UpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = UpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// The `bpf()` system call; its non-negative result.
fn bpf<A>(cmd: libc::c_int, attr: &mut A) -> io::Result<i64> {
    // SAFETY: `attr` is the `union bpf_attr` member of `cmd`, alive for the call; pointers in
    // it point at live buffers of the sizes it gives.
    let result = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result)
}
