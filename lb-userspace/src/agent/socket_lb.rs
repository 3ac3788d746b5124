//! Where the socket programs attach: the root of the cgroup v2 hierarchy (every process of
//! the node) unless `--cgroup-path` names another cgroup (or a hybrid host's `/sys/fs/cgroup`,
//! whose `unified/` is used); and which sockets they translate: those of the agent's own
//! network namespace, the node's, and with `--socket-lb-pods` those of every namespace (pods).

use std::fs;
use std::io;
use std::mem::size_of;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tracing::info;

use super::AgentError;
use crate::datapath::is_cgroup2;

/// Where the kernel lists the mounts this process sees.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where a hybrid host mounts cgroup v2 inside its `/sys/fs/cgroup`.
const HYBRID_CGROUP2_DIR: &str = "unified";
/// `SO_NETNS_COOKIE` (kernel 5.14), missing from older libc crates.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Whether and where the socket programs attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketLb {
    /// `--no-socket-lb`: no socket-level translation; pins left by an earlier agent go.
    Off,
    /// To this cgroup v2 directory (`path`, `--cgroup-path`), or to the hierarchy's root;
    /// `pods` (`--socket-lb-pods`): sockets of every network namespace, not only the node's.
    Cgroup { path: Option<PathBuf>, pods: bool },
}

/// What the socket programs need: their cgroup and the namespaces whose sockets they
/// translate (the node's, whose cookie this is, and with `pods` every other one).
pub(super) struct Sockets {
    pub cgroup: PathBuf,
    pub netns_cookie: u64,
    pub pods: bool,
}

/// Resolves `setting`: `None` when socket-level translation is off.
pub(super) fn prepare(setting: &SocketLb) -> Result<Option<Sockets>, AgentError> {
    let (path, pods) = match setting {
        SocketLb::Off => {
            info!("socket-level translation off (--no-socket-lb): the node's own processes do not reach Services");
            return Ok(None);
        }
        SocketLb::Cgroup { path, pods } => (path, *pods),
    };
    let cgroup = match path {
        Some(path) => cgroup2_in(path),
        None => {
            let mountinfo = fs::read_to_string(MOUNTINFO)
                .map_err(|e| AgentError::Cgroup2Mount(format!("reading {MOUNTINFO}: {e}")))?;
            cgroup2_root(&mountinfo).ok_or_else(|| {
                AgentError::Cgroup2Mount(format!("{MOUNTINFO} lists no cgroup2 mount"))
            })?
        }
    };
    let netns_cookie = netns_cookie().map_err(AgentError::NetnsCookie)?;
    if pods {
        info!("socket-level translation for pods too (--socket-lb-pods): sockets of every network namespace are connected to backends at connect()");
    }
    Ok(Some(Sockets {
        cgroup,
        netns_cookie,
        pods,
    }))
}

/// `path` when it is a cgroup v2 directory, else its `unified` subdirectory when that is one:
/// a hybrid host's `/sys/fs/cgroup` (e.g. the node's, mounted into the DaemonSet's container)
/// holds the v2 hierarchy there, a unified host's is cgroup v2 itself. Else `path`, which
/// attaching refuses with one line.
fn cgroup2_in(path: &Path) -> PathBuf {
    if is_cgroup2(path) {
        return path.to_path_buf();
    }
    let unified = path.join(HYBRID_CGROUP2_DIR);
    if is_cgroup2(&unified) {
        info!(
            "{} is not cgroup v2 but holds it at {} (a hybrid host's cgroups)",
            path.display(),
            unified.display()
        );
        return unified;
    }
    path.to_path_buf()
}

/// The mount point of the cgroup v2 hierarchy's root in a `/proc/self/mountinfo` text: the
/// first `cgroup2` mount of its root (`/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` in hybrid mode).
pub fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional...] - fstype source ...`
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split(' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        (root == "/").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cookie of this process's network namespace (of the calling thread's, which may have
/// entered another).
pub fn netns_cookie() -> io::Result<u64> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given, for the call.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 24 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    const UNIFIED: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_the_cgroup2_root_in_hybrid_and_unified_mode() {
        assert_eq!(
            cgroup2_root(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_root(UNIFIED), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn skips_cgroup1_and_mounts_of_a_sub_cgroup() {
        let legacy = HYBRID.replace("cgroup2 cgroup2", "cgroup cgroup");
        assert_eq!(cgroup2_root(&legacy), None);
        let bind = "40 33 0:29 /kubepods /mnt/pods rw - cgroup2 cgroup2 rw\n\
                    41 33 0:29 / /run/lb\\040agent/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root(bind),
            Some(PathBuf::from("/run/lb agent/cgroup"))
        );
    }

    #[test]
    fn a_hybrid_cgroup_dir_resolves_to_its_unified_hierarchy() {
        // This machine's: whichever of the two mount points is cgroup v2 is found from both.
        let root = cgroup2_root(&fs::read_to_string(MOUNTINFO).unwrap()).unwrap();
        assert_eq!(cgroup2_in(&root), root);
        if root.ends_with(HYBRID_CGROUP2_DIR) {
            assert_eq!(cgroup2_in(root.parent().unwrap()), root);
        }
        let plain = tempfile::tempdir().unwrap();
        assert_eq!(cgroup2_in(plain.path()), plain.path());
    }

    #[test]
    fn reads_this_machines_mounts_and_namespace() {
        // Whatever the machine has, parsing its real file must not fail, and every Linux
        // since 5.14 gives a socket's namespace a cookie.
        let _ = cgroup2_root(&fs::read_to_string(MOUNTINFO).unwrap());
        assert_ne!(netns_cookie().unwrap(), 0);
    }
}
