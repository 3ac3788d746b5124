//! Running `iptables-restore`, `nft` and friends inside a namespace, timed from spawn to exit
//! (what kube-proxy pays for each sync), with a bound on how long they may take.

use std::{
    io::{Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::error::{io_context, BenchError, Result};
use crate::netns::NetNs;

/// Longest any one command may run (the largest iptables-restore takes about two minutes).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs `program args...` inside `netns` with `stdin` as its input; returns how long it ran.
pub fn run_in(netns: &NetNs, program: &str, args: &[&str], stdin: &str) -> Result<Duration> {
    run(netns, program, args, Some(stdin)).map(|(_, elapsed)| elapsed)
}

/// Runs `program args...` inside `netns` and returns its stdout and how long it ran.
pub fn output_in(netns: &NetNs, program: &str, args: &[&str]) -> Result<(String, Duration)> {
    run(netns, program, args, None)
}

fn run(
    netns: &NetNs,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(String, Duration)> {
    let line = format!("{program} {} (in {})", args.join(" "), netns.name());
    let namespace = netns.open()?;
    let fd = namespace.as_raw_fd();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only calls setns, which is
    // async-signal-safe; `namespace` stays open in the parent until `spawn` returns.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(io_context(format!("cannot start `{line}`")))?;
    drop(namespace);
    let exited = ExitWatch::new(child.id()).map_err(io_context("pidfd_open"))?;
    let (mut input, mut output, mut errors) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (finished, stdout, stderr) = thread::scope(|scope| {
        if let (Some(mut pipe), Some(text)) = (input.take(), stdin) {
            // A command that fails early closes its stdin; its exit status tells why.
            scope.spawn(move || pipe.write_all(text.as_bytes()));
        }
        let out = scope.spawn(move || read_all(output.as_mut()));
        let err = scope.spawn(move || read_all(errors.as_mut()));
        let finished = exited.wait(COMMAND_TIMEOUT);
        if !finished {
            let _ = child.kill();
        }
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        (finished, stdout, stderr)
    });
    let status = child
        .wait()
        .map_err(io_context(format!("cannot wait for `{line}`")))?;
    let elapsed = started.elapsed();
    if !finished {
        return Err(BenchError::Timeout {
            command: line,
            timeout: COMMAND_TIMEOUT,
        });
    }
    if !status.success() {
        return Err(crate::Error::Command {
            command: line,
            status: status.to_string(),
            stderr: stderr.trim().chars().take(2_000).collect(),
        }
        .into());
    }
    Ok((stdout, elapsed))
}

fn read_all(pipe: Option<&mut impl Read>) -> String {
    let mut text = String::new();
    if let Some(pipe) = pipe {
        let _ = pipe.read_to_string(&mut text);
    }
    text
}

/// A pidfd of a child: waits for its exit without reaping it, so a timed-out child can still
/// be killed safely.
struct ExitWatch(OwnedFd);

impl ExitWatch {
    fn new(pid: u32) -> std::io::Result<ExitWatch> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Ok(ExitWatch(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Whether the process exited within `timeout`.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, millis) };
            if ready > 0 {
                return true;
            }
            if ready == 0 || left.is_zero() {
                return false;
            }
            // EINTR: poll again for the time left.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::unique_prefix;

    #[test]
    fn commands_run_inside_the_namespace_and_failures_carry_stderr() {
        crate::require_root!();
        let netns = NetNs::create(&format!("{}-exec", unique_prefix())).unwrap();
        netns
            .ip(&[
                "link",
                "add",
                "bench-probe",
                "type",
                "veth",
                "peer",
                "name",
                "bench-peer",
            ])
            .unwrap();
        let (links, elapsed) = output_in(&netns, "ip", &["-o", "link"]).unwrap();
        assert!(links.contains("bench-probe"), "{links}");
        assert!(elapsed > Duration::ZERO);
        let echoed = run_in(&netns, "sh", &["-c", "test \"$(cat)\" = hello"], "hello");
        assert!(echoed.is_ok(), "{echoed:?}");
        let err = run_in(&netns, "sh", &["-c", "echo nope >&2; exit 4"], "").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
