//! `lb-agent monitor` as a process beside a running [`crate::agent::Agent`]: its stdout
//! collected line by line, its stderr kept for failure messages; killed on drop.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{agent::Agent, error::io_context, Error, Result};

const POLL: Duration = Duration::from_millis(20);

/// A running `lb-agent monitor`.
#[derive(Debug)]
pub struct Monitor {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Monitor {
    /// Starts `lb-agent monitor --socket <socket> <args>` (in the test's own namespace: the
    /// socket is a file, reachable from any).
    pub fn start(socket: &Path, args: &[&str]) -> Result<Monitor> {
        let binary = Agent::binary()?;
        let mut child = Command::new(&binary)
            .arg("monitor")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_context(format!(
                "cannot start {} monitor",
                binary.display()
            )))?;
        let (stdout, stderr) = Default::default();
        let readers = vec![
            collect(child.stdout.take(), &stdout),
            collect(child.stderr.take(), &stderr),
        ];
        Ok(Monitor {
            child,
            stdout,
            stderr,
            readers,
        })
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (at most `timeout`) for the process to exit, then returns its status and every
    /// line it printed.
    pub fn wait(mut self, timeout: Duration) -> Result<(ExitStatus, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(io_context("waiting for monitor"))?
            {
                break status;
            }
            if Instant::now() >= deadline {
                let stderr = self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
                return Err(Error::Timeout {
                    what: format!(
                        "lb-agent monitor to exit; it printed {:?}, stderr: {stderr}",
                        self.lines()
                    ),
                    timeout,
                });
            }
            thread::sleep(POLL);
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok((status, self.lines()))
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(
    source: Option<impl Read + Send + 'static>,
    lines: &Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    let lines = lines.clone();
    thread::spawn(move || {
        let Some(source) = source else { return };
        for line in BufReader::new(source).lines() {
            let Ok(line) = line else { return };
            if let Ok(mut lines) = lines.lock() {
                lines.push(line);
            }
        }
    })
}
