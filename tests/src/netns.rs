//! Named network namespaces (`ip netns`) that delete themselves on drop, and running code
//! inside one.
//!
//! [`NetNs::run`] runs a closure on a dedicated thread that has entered the namespace with
//! `setns(CLONE_NEWNET)`, so sockets created in the closure belong to the namespace; they stay
//! there when used later from any other thread.

use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use crate::{cmd, error::io_context, Result};

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Prefix of every name this harness creates, followed by the creating process's pid.
const PREFIX: &str = "lbt-";

/// Returns a name prefix unique to this process and call (`lbt-<pid>-<n>`), for namespaces
/// and bpffs directories, so tests can run in parallel and leftovers of dead runs are
/// recognisable (see [`remove_stale`]).
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` and brings its loopback up.
    pub fn create(name: &str) -> Result<NetNs> {
        cmd::run("ip", &["netns", "add", name])?;
        let netns = NetNs {
            name: name.to_string(),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, usable with `setns` and `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Opens the namespace file (to enter it, see [`enter`]).
    pub fn open(&self) -> Result<File> {
        File::open(self.path())
            .map_err(io_context(format!("cannot open {}", self.path().display())))
    }

    /// Runs `ip -n <name> args...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        cmd::run("ip", &all)
    }

    /// Runs `f` on a thread inside this namespace and returns its result. A panic in `f`
    /// continues in the caller, so assertions inside work as usual.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = self.open()?;
        let name = &self.name;
        let joined = thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter(&file).map_err(io_context(format!("cannot enter netns {name}")))?;
                    Ok(f())
                })
                .join()
        });
        match joined {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The interfaces of this namespace (and `all`) whose `net.ipv4.conf.<iface>.accept_local`
    /// is not 0: what the redirect reply path must not need (the harness never sets it).
    pub fn accept_local_on(&self) -> Result<Vec<String>> {
        self.run(|| {
            let conf = Path::new("/proc/sys/net/ipv4/conf");
            let mut on = Vec::new();
            for entry in fs::read_dir(conf).map_err(io_context(format!("cannot read {conf:?}")))? {
                let dir = entry
                    .map_err(io_context(format!("cannot read {conf:?}")))?
                    .path();
                let path = dir.join("accept_local");
                let value = fs::read_to_string(&path)
                    .map_err(io_context(format!("cannot read {}", path.display())))?;
                if value.trim() != "0" {
                    on.push(
                        dir.file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
            Ok(on)
        })?
    }

    /// Sets the sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`; as with sysctl(8), a `/`
    /// stands for a dot inside a component, e.g. `net.ipv4.conf.eth0/100.rp_filter`) to
    /// `value` in this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path: String = key
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect();
        let path = Path::new("/proc/sys").join(path);
        self.run(|| {
            fs::write(&path, value).map_err(io_context(format!(
                "cannot set {key}={value} in netns {}",
                self.name
            )))
        })?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(err) = cmd::run("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: cannot delete netns {}: {err}", self.name);
        }
    }
}

/// Moves the calling thread into the network namespace `file` refers to.
pub fn enter(file: &File) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `file` keeps open for the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Deletes namespaces left by harness processes that no longer run (killed before their
/// guards could clean up) and returns their names.
pub fn remove_stale() -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_context(format!("cannot list {NETNS_DIR}"))(err)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_is_gone(&name) {
            cmd::run("ip", &["netns", "del", &name])?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Whether `name` was made by [`unique_prefix`] in a process that no longer exists.
pub fn owner_is_gone(name: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    !Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_prefixes_differ_and_name_this_process() {
        let (a, b) = (unique_prefix(), unique_prefix());
        assert_ne!(a, b);
        assert!(
            a.starts_with(&format!("lbt-{}-", std::process::id())),
            "{a}"
        );
        assert!(!owner_is_gone(&a));
        assert!(!owner_is_gone("other-123-node"));
        // pid_max is at most 2^22, so this pid cannot exist.
        assert!(owner_is_gone("lbt-99999999-0-node"));
    }

    #[test]
    fn run_enters_the_namespace_and_drop_deletes_it() {
        crate::require_root!();
        let name = format!("{}-unit", unique_prefix());
        let netns = NetNs::create(&name).unwrap();
        let ours = netns
            .run(|| fs::read_link("/proc/thread-self/ns/net"))
            .unwrap()
            .unwrap();
        let host = fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(ours, host);
        netns.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
        let forward = netns.run(|| fs::read_to_string("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(forward.unwrap().unwrap().trim(), "1");
        drop(netns);
        assert!(!Path::new(NETNS_DIR).join(&name).exists());
    }
}
