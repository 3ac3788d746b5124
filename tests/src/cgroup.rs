//! Test cgroups (cgroup v2) that remove themselves on drop, and client processes inside one.
//!
//! The agent's socket programs attach to a test cgroup (`--cgroup-path`), never to the
//! machine's root cgroup; only the test's client processes ([`SockClient`]) are moved into
//! it, so no other process of the machine is translated.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::Duration,
};

use crate::{error::io_context, netns::NetNs, servers::Reply, Error, Result};

/// Where the cgroup v2 root is mounted in hybrid and in unified mode: where test cgroups
/// are made, so where leftovers of killed runs are looked for.
const CGROUP2_ROOTS: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// Attempts at removing a cgroup whose processes are still exiting.
const REMOVE_ATTEMPTS: u32 = 100;
const REMOVE_POLL: Duration = Duration::from_millis(20);

/// A cgroup created for one test under the cgroup v2 root; removed on drop, after its
/// processes (only ever the test's own clients) are killed.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `<root>/<name>`; `root` is the cgroup v2 mount, `name` a harness name
    /// (`lbt-<pid>-<n>`, see [`crate::netns::unique_prefix`]).
    pub fn create(root: &Path, name: &str) -> Result<TestCgroup> {
        let path = root.join(name);
        fs::create_dir(&path).map_err(io_context(format!(
            "cannot create cgroup {}",
            path.display()
        )))?;
        Ok(TestCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The processes in the cgroup.
    pub fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // `cgroup.kill` (Linux 5.14) ends every process in this cgroup: only test clients.
        if !self.procs().is_empty() {
            let _ = fs::write(self.path.join("cgroup.kill"), "1");
        }
        for _ in 0..REMOVE_ATTEMPTS {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(REMOVE_POLL),
            }
        }
        eprintln!("warning: cannot remove cgroup {}", self.path.display());
    }
}

/// A stand-in for a hybrid host's `/sys/fs/cgroup` (as this machine's), for a container's
/// hostPath: a directory whose `unified` is a test cgroup, bind-mounted. Unmounted and removed
/// on drop; a killed run's are removed by [`remove_stale`].
#[derive(Debug)]
pub struct HybridCgroupDir {
    dir: PathBuf,
}

impl HybridCgroupDir {
    /// `<tmp>/<name>-cgroup` with `cgroup` mounted at its `unified`; `name` a harness name.
    pub fn new(cgroup: &TestCgroup, name: &str) -> Result<HybridCgroupDir> {
        let dir = std::env::temp_dir().join(format!("{name}{HYBRID_SUFFIX}"));
        let unified = dir.join(UNIFIED);
        fs::create_dir_all(&unified)
            .map_err(io_context(format!("cannot create {}", unified.display())))?;
        let hybrid = HybridCgroupDir { dir };
        let (from, to) = (cgroup.path.to_string_lossy(), unified.to_string_lossy());
        crate::cmd::run("mount", &["--bind", &from, &to])?;
        Ok(hybrid)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for HybridCgroupDir {
    fn drop(&mut self) {
        remove_hybrid(&self.dir);
    }
}

/// Unmounts `dir`'s `unified` (if mounted) and removes `dir`.
fn remove_hybrid(dir: &Path) {
    let unified = dir.join(UNIFIED);
    let _ = crate::cmd::run("umount", &[&unified.to_string_lossy()]);
    if let Err(e) = fs::remove_dir(&unified).and_then(|()| fs::remove_dir(dir)) {
        eprintln!("warning: cannot remove {}: {e}", dir.display());
    }
}

/// Suffix of a [`HybridCgroupDir`] and the name of its cgroup v2 directory.
const HYBRID_SUFFIX: &str = "-cgroup";
const UNIFIED: &str = "unified";

/// Removes the (empty) test cgroups and [`HybridCgroupDir`]s of harness processes that no
/// longer run and returns them.
pub fn remove_stale() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(HYBRID_SUFFIX) && crate::netns::owner_is_gone(&name) {
            remove_hybrid(&entry.path());
            removed.push(entry.path());
        }
    }
    for root in CGROUP2_ROOTS {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let stale = crate::netns::owner_is_gone(&entry.file_name().to_string_lossy());
            if stale && fs::remove_dir(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    removed
}

/// A `lb-sock-client` process in a node namespace (and a test cgroup, or not), asked one
/// command at a time; killed on drop.
#[derive(Debug)]
pub struct SockClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// What a client command got: the answer, or the error kind and message.
pub type SockResult = std::result::Result<Reply, String>;

impl SockClient {
    /// Starts `binary` (the `lb-sock-client` built with the tests) inside `node`, in `cgroup`
    /// if given (moved there before it runs any code of its own).
    pub fn start(binary: &Path, node: &NetNs, cgroup: Option<&TestCgroup>) -> Result<SockClient> {
        let netns = node.open()?;
        let procs = cgroup.map(|c| open_procs(c.path())).transpose()?;
        let mut command = Command::new(binary);
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        enter_before_exec(&mut command, netns, procs);
        let mut child = command
            .spawn()
            .map_err(io_context(format!("cannot start {}", binary.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(Error::Io {
                context: "lb-sock-client has no stdin or stdout".into(),
                source: std::io::ErrorKind::BrokenPipe.into(),
            });
        };
        Ok(SockClient {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// The client's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command (see the binary) and returns its answer.
    pub fn ask(&mut self, command: &str) -> SockResult {
        let mut line = String::new();
        let sent = writeln!(self.stdin, "{command}").and_then(|()| self.stdin.flush());
        if let Err(e) = sent.and_then(|()| self.stdout.read_line(&mut line).map(drop)) {
            return Err(format!("client gone: {e}"));
        }
        parse(line.trim_end())
    }
}

impl Drop for SockClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ok <from> <peer> <local port>` or `err <kind> <message>`.
fn parse(line: &str) -> SockResult {
    let mut words = line.splitn(4, ' ');
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("ok"), Some(from), Some(peer), Some(local_port)) => {
            match (peer.parse(), local_port.parse()) {
                (Ok(peer), Ok(local_port)) => Ok(Reply {
                    from: from.to_string(),
                    peer,
                    local_port,
                }),
                _ => Err(format!("bad answer {line:?}")),
            }
        }
        _ => Err(line.strip_prefix("err ").unwrap_or(line).to_string()),
    }
}

/// The `cgroup.procs` of the cgroup directory `cgroup`, open for writing (writing 0 moves the
/// writer into the cgroup).
pub(crate) fn open_procs(cgroup: &Path) -> Result<File> {
    let path = cgroup.join("cgroup.procs");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_context(format!("cannot open {}", path.display())))
}

/// Makes the child enter `netns` and, if given, the cgroup whose `cgroup.procs` is `procs`
/// (writing 0 moves the writer), before exec; it gets SIGKILL when the test thread dies.
pub(crate) fn enter_before_exec(command: &mut Command, netns: File, procs: Option<File>) {
    let netns_fd = netns.as_raw_fd();
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe system
    // calls; both files stay open in the parent until `spawn` returns (the closure owns them).
    unsafe {
        command.pre_exec(move || {
            let _keep_open = (&netns, &procs);
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = procs_fd {
                if libc::write(fd, b"0\n".as_ptr().cast(), 2) != 2 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_into_replies_or_errors() {
        let reply = parse("ok pod-1 198.19.0.10:80 40123").unwrap();
        assert_eq!(reply.from, "pod-1");
        assert_eq!(reply.peer, "198.19.0.10:80".parse().unwrap());
        assert_eq!(reply.local_port, 40123);
        assert!(parse("ok pod-1 198.19.0.10:80").is_err());
        assert_eq!(
            parse("err ConnectionRefused Connection refused (os error 111)"),
            Err("ConnectionRefused Connection refused (os error 111)".to_string())
        );
    }
}
