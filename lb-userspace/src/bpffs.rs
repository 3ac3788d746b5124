//! The BPF filesystem that holds the pinned maps.

use std::ffi::CString;
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tracing::info;

use crate::error::PRIVILEGE_HINT;

/// `statfs` magic number of bpffs.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where bpffs is conventionally mounted.
const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

/// Creates `dir` on a bpffs, first mounting bpffs at `/sys/fs/bpf` when `dir` lies under it
/// and no bpffs is mounted there yet.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), BpffsError> {
    let mount_point = Path::new(BPFFS_MOUNT_POINT);
    if dir.starts_with(mount_point) {
        mount_once(mount_point)?;
    }
    fs::create_dir_all(dir).map_err(|e| BpffsError::io("creating", dir, e))?;
    if !is_bpffs(dir)? {
        return Err(BpffsError::NotBpffs {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Mounts bpffs at `mount_point` unless one is mounted there.
///
/// Checking and mounting happen under an exclusive `flock` on the mount point directory, so
/// agents starting at the same moment cannot both see "not mounted" and stack two mounts (the
/// second would hide the first one's pins). An agent that opens the directory after the mount
/// locks the new bpffs root instead, but then its check already sees the mount.
fn mount_once(mount_point: &Path) -> Result<(), BpffsError> {
    let dir = fs::File::open(mount_point).map_err(|e| BpffsError::io("opening", mount_point, e))?;
    // SAFETY: `dir` is an open descriptor for the whole call; the lock ends when it is closed.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(BpffsError::io(
            "locking",
            mount_point,
            io::Error::last_os_error(),
        ));
    }
    if !is_bpffs(mount_point)? {
        mount_bpffs(mount_point)?;
        info!(
            "mounted bpffs at {}: none was mounted",
            mount_point.display()
        );
    }
    Ok(())
}

/// An exclusive hold on a pin directory: one agent per directory. Released when dropped
/// (or when the process dies, however it dies).
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

/// Takes the exclusive `flock` on `dir` if no other process holds it; `Ok(None)` if one does.
pub fn try_lock_dir(dir: &Path) -> Result<Option<DirLock>, BpffsError> {
    let file = fs::File::open(dir).map_err(|e| BpffsError::io("opening", dir, e))?;
    // SAFETY: `file` is an open descriptor; the lock lives as long as it does.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(DirLock { _file: file }));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(BpffsError::io("locking", dir, error))
}

/// Removes `dir` and its parents up to and including `top`, as far as they are empty.
pub fn remove_empty_dirs(dir: &Path, top: &Path) {
    for d in dir.ancestors() {
        if fs::remove_dir(d).is_err() || d == top {
            break;
        }
    }
}

fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let failed = |e| BpffsError::io("statfs", path, e);
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut stat = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stat` is writable memory for one statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    // SAFETY: statfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // f_type's width differs between architectures; the magic fits in 32 bits.
    Ok(stat.f_type as u32 == BPF_FS_MAGIC)
}

fn mount_bpffs(target: &Path) -> Result<(), BpffsError> {
    let failed = |source| BpffsError::Mount {
        path: target.to_path_buf(),
        source,
    };
    let c_target = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    Ok(())
}

/// Preparing the BPF filesystem for pins failed.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("mounting bpffs at {} failed ({PRIVILEGE_HINT})", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("an lb-agent is running with --bpffs-dir {}; stop it first", path.display())]
    InUse { path: PathBuf },
    #[error("{} is not on a BPF filesystem (bpffs); choose a --bpffs-dir under a bpffs mount", path.display())]
    NotBpffs { path: PathBuf },
    #[error("{action} {} {PRIVILEGE_HINT}", path.display())]
    PermissionDenied {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{action} {} failed", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BpffsError {
    /// An I/O error while `action` (e.g. "creating") `path`, with the privilege hint when the
    /// kernel refused it.
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::PermissionDenied => Self::PermissionDenied {
                action,
                path,
                source,
            },
            _ => Self::Io {
                action,
                path,
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_bpffs(dir.path()).unwrap());
        let pins = dir.path().join("lb/maps");
        let err = prepare_pin_dir(&pins).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not on a BPF filesystem (bpffs); choose a --bpffs-dir under a bpffs mount",
                pins.display()
            )
        );
        remove_empty_dirs(&pins, &dir.path().join("lb"));
        assert!(!dir.path().join("lb").exists());
        assert!(dir.path().exists(), "stops at the top directory");
    }

    /// Unmounts everything mounted on a directory, also when the test fails.
    struct Unmount<'a>(&'a Path);

    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let c_path = CString::new(self.0.as_os_str().as_bytes()).unwrap();
            // SAFETY: `c_path` is NUL-terminated; umount2 fails once nothing is mounted there.
            while unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {}
        }
    }

    /// How many bpffs mounts sit on `path` (stacked mounts count separately).
    fn bpffs_mounts_on(path: &Path) -> usize {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        mountinfo
            .lines()
            .filter(|line| {
                let mount_point = line.split(' ').nth(4);
                let fs_type = line.split(" - ").nth(1).and_then(|r| r.split(' ').next());
                mount_point == path.to_str() && fs_type == Some("bpf")
            })
            .count()
    }

    #[test]
    fn agents_starting_together_mount_bpffs_once() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting bpffs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().to_path_buf();
        let _unmount = Unmount(&target);
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (target, start) = (target.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    mount_once(&target)
                })
            })
            .collect();
        for racer in racers {
            racer.join().unwrap().unwrap();
        }
        assert!(is_bpffs(&target).unwrap());
        assert_eq!(bpffs_mounts_on(&target), 1, "no stacked mounts");
    }
}
