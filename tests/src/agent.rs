//! The real `lb-agent` binary, running inside a node namespace.
//!
//! The process enters the namespace with `setns` before exec (not `ip netns exec`, which would
//! also give it a private mount namespace and hide its bpffs pins from `lb-agent inspect`).
//! Its stdout and stderr are collected into one log. On drop it gets SIGTERM (a clean exit
//! leaves its pins), then SIGKILL after a grace period, and its bpffs directory is removed
//! (which detaches its pinned programs) unless [`Agent::kill`] or [`Agent::stop_keeping_pins`]
//! kept them for a restart or for `lb-agent cleanup`.

use std::{
    env,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Read},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{cmd, error::io_context, monitor::Monitor, netns::NetNs, Error, Result};

/// Where per-run bpffs directories go (the agent mounts bpffs here if needed).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Log text the agent prints each time its maps hold its source's state (first after
/// start-up, again after every change it applies).
pub const READY_MARKER: &str = "ready: programmed";
/// Log text the agent prints once its metrics and health ports are open.
pub const SERVING_MARKER: &str = "serving /metrics on";
/// How long the agent may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Environment variable naming the `lb-agent` binary to run instead of the workspace's.
pub const BINARY_VAR: &str = "LB_AGENT_BIN";
/// Variables the agent reads to find its API server; the harness never passes the test
/// process's own on (a developer's KUBECONFIG must not decide where the agent connects), only
/// those of [`AgentOptions::env`].
pub const API_ENV_VARS: [&str; 5] = [
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "LB_K8S_API_SERVER",
    "LB_K8S_SERVICE_ACCOUNT_DIR",
];
/// How long an auto-attaching agent may take to attach TC to an interface once it exists.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace period between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Poll interval while waiting for log lines or exit.
const POLL: Duration = Duration::from_millis(20);

/// Where the agent reads Services and EndpointSlices from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory of Service / EndpointSlice YAML files (`--manifests`).
    Manifests(PathBuf),
    /// The Kubernetes API (`--kubeconfig`), as node `node_name` (`--node-name`).
    Kubernetes {
        kubeconfig: PathBuf,
        node_name: String,
    },
    /// The Kubernetes API as a pod reaches it, as node `node_name` (`--node-name`): no
    /// kubeconfig, the address and the service account come from [`AgentOptions::env`].
    InCluster { node_name: String },
}

/// How to run the agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub source: Source,
    /// Interfaces (in the node namespace) for TC ingress; empty: auto-attach.
    pub ifaces: Vec<String>,
    /// Auto-attach name patterns (`--iface-pattern`); empty: the agent's defaults.
    pub iface_patterns: Vec<String>,
    /// Interface (in the node namespace) for XDP, the node's external interface.
    pub xdp_iface: Option<String>,
    /// Per-run directory under [`BPFFS_ROOT`] for pinned maps.
    pub bpffs_dir: PathBuf,
    /// `--log-level` value.
    pub log_level: String,
    /// Further `lb-agent run` arguments (e.g. `--resync-interval 500ms`).
    pub extra_args: Vec<String>,
    /// Environment variables for the agent (e.g. `KUBERNETES_SERVICE_HOST`); of
    /// [`API_ENV_VARS`] it sees only these.
    pub env: Vec<(String, String)>,
    /// The test cgroup whose processes' sockets the agent translates (`--cgroup-path`); `None`
    /// runs it with `--no-socket-lb`, so no test ever attaches to the machine's root cgroup.
    /// The agent itself runs in it, as a deployed agent runs below the node's root cgroup.
    pub cgroup: Option<PathBuf>,
    /// `--monitor-socket`: per run, under the temporary directory.
    pub monitor_socket: PathBuf,
}

impl AgentOptions {
    /// Options for a run in `topology`-like setups: TC on `ifaces`, pins under
    /// `/sys/fs/bpf/<id>`, info logs.
    pub fn new(id: &str, manifests: &Path, ifaces: Vec<String>) -> AgentOptions {
        AgentOptions {
            source: Source::Manifests(manifests.to_path_buf()),
            ifaces,
            iface_patterns: Vec::new(),
            xdp_iface: None,
            bpffs_dir: Path::new(BPFFS_ROOT).join(id),
            log_level: "info".into(),
            extra_args: Vec::new(),
            env: Vec::new(),
            cgroup: None,
            monitor_socket: monitor_socket(id),
        }
    }

    /// Options for a run against a Kubernetes API server as node `node_name`: TC on `ifaces`,
    /// XDP on `xdp_iface`, pins under `/sys/fs/bpf/<id>`, info logs.
    pub fn kubernetes(
        id: &str,
        kubeconfig: &Path,
        node_name: &str,
        ifaces: Vec<String>,
        xdp_iface: &str,
    ) -> AgentOptions {
        AgentOptions {
            source: Source::Kubernetes {
                kubeconfig: kubeconfig.to_path_buf(),
                node_name: node_name.to_string(),
            },
            ifaces,
            iface_patterns: Vec::new(),
            xdp_iface: Some(xdp_iface.to_string()),
            bpffs_dir: Path::new(BPFFS_ROOT).join(id),
            log_level: "info".into(),
            extra_args: Vec::new(),
            env: Vec::new(),
            cgroup: None,
            monitor_socket: monitor_socket(id),
        }
    }
}

/// The `--monitor-socket` of the run `id`.
fn monitor_socket(id: &str) -> PathBuf {
    env::temp_dir().join(format!("{id}-monitor.sock"))
}

/// The agent's log line once it attached its TC program to `iface`.
pub fn tc_attached(iface: &str) -> String {
    format!("attached lb_tc_ingress to {iface} ingress")
}

/// A running `lb-agent run`; stopped on drop.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    options: AgentOptions,
    /// Set by [`Agent::kill`]: the pins are left for the next agent to adopt.
    keep_pins: bool,
}

/// The workspace binary `name` built next to the current executable (`target/<profile>/` for
/// binaries, or its parent for test executables in `target/<profile>/deps/`); the paths
/// looked at if there is none.
pub fn built_binary(name: &str) -> Result<std::result::Result<PathBuf, Vec<PathBuf>>> {
    let exe = env::current_exe().map_err(io_context("cannot find the current executable"))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    Ok(candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(candidates))
}

impl Agent {
    /// Path of the `lb-agent` binary: `$LB_AGENT_BIN` if set (to test another build), else
    /// the one built next to the current executable (`target/<profile>/` for binaries, or its
    /// parent for test executables in `target/<profile>/deps/`).
    pub fn binary() -> Result<PathBuf> {
        if let Some(path) = env::var_os(BINARY_VAR) {
            return Ok(PathBuf::from(path));
        }
        built_binary("lb-agent")?.map_err(Error::AgentNotBuilt)
    }

    /// Starts the agent inside `node` and waits until it logs [`READY_MARKER`].
    pub fn start(node: &NetNs, options: AgentOptions) -> Result<Agent> {
        Agent::start_until(node, options, READY_MARKER)
    }

    /// Starts the agent inside `node` and waits only until its metrics and health ports are
    /// open ([`SERVING_MARKER`]), not for its first sync.
    pub fn start_serving(node: &NetNs, options: AgentOptions) -> Result<Agent> {
        Agent::start_until(node, options, SERVING_MARKER)
    }

    /// Starts the agent inside `node` and waits until it logs `marker` (e.g. that it waits for
    /// another agent's pins).
    ///
    /// Start-ups within one process are serialised: an agent mounts bpffs at
    /// [`BPFFS_ROOT`] when none is mounted, and two agents checking at once would stack two
    /// mounts, hiding the first one's pins.
    pub fn start_until(node: &NetNs, options: AgentOptions, marker: &str) -> Result<Agent> {
        static STARTING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = STARTING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let binary = Agent::binary()?;
        let netns = node.open()?;
        let mut command = Command::new(&binary);
        command.arg("run");
        match &options.source {
            Source::Manifests(dir) => command.arg("--manifests").arg(dir),
            Source::Kubernetes {
                kubeconfig,
                node_name,
            } => command
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("--node-name")
                .arg(node_name),
            Source::InCluster { node_name } => command.arg("--node-name").arg(node_name),
        };
        command
            .arg("--bpffs-dir")
            .arg(&options.bpffs_dir)
            .arg("--log-level")
            .arg(&options.log_level)
            .arg("--monitor-socket")
            .arg(&options.monitor_socket);
        for iface in &options.ifaces {
            command.arg("--iface").arg(iface);
        }
        for pattern in &options.iface_patterns {
            command.arg("--iface-pattern").arg(pattern);
        }
        if let Some(iface) = &options.xdp_iface {
            command.arg("--xdp-iface").arg(iface);
        }
        match &options.cgroup {
            Some(cgroup) => command.arg("--cgroup-path").arg(cgroup),
            None => command.arg("--no-socket-lb"),
        };
        command.args(&options.extra_args);
        for var in API_ENV_VARS {
            command.env_remove(var);
        }
        command.envs(options.env.iter().map(|(k, v)| (k, v)));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let procs = match &options.cgroup {
            Some(cgroup) => {
                let path = cgroup.join("cgroup.procs");
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_context(format!("cannot open {}", path.display())))?;
                Some(file)
            }
            None => None,
        };
        enter_before_exec(&mut command, netns, procs);
        let mut child = command
            .spawn()
            .map_err(io_context(format!("cannot start {}", binary.display())))?;
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect_lines(out, log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect_lines(err, log.clone()));
        }
        let mut agent = Agent {
            child,
            log,
            readers,
            options,
            keep_pins: false,
        };
        agent.wait_for_log(marker, 1, READY_TIMEOUT)?;
        Ok(agent)
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// How many times `needle` occurs in the log so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until `needle` occurs at least `count` times in the log; fails if the agent exits
    /// or `timeout` passes first.
    pub fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let what = format!("{count} x {needle:?} in the log");
        loop {
            if self.log_count(needle) >= count {
                return Ok(());
            }
            if let Some(status) = self.exit_status()? {
                thread::sleep(POLL); // let the readers drain the last lines
                if self.log_count(needle) >= count {
                    return Ok(());
                }
                return Err(Error::AgentExited {
                    status: status.to_string(),
                    what,
                    log: self.log(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{what}; lb-agent's log:\n{}", self.log()),
                    timeout,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// The exit status if the agent has exited.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .map_err(io_context("cannot query lb-agent's status"))
    }

    /// Runs `lb-agent inspect --all` (every conntrack row) on this agent's pinned maps and
    /// returns its output.
    pub fn inspect(&self) -> Result<String> {
        self.inspect_with(&["--all"])
    }

    /// `lb-agent inspect` on this agent's pins with more `args` (filters, `--json`, paging).
    pub fn inspect_with(&self, args: &[&str]) -> Result<String> {
        let binary = Agent::binary()?;
        let dir = self.options.bpffs_dir.to_string_lossy();
        let all: Vec<&str> = ["inspect", "--bpffs-dir", &dir]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        cmd::run(&binary.to_string_lossy(), &all)
    }

    /// `lb-agent trace` on this agent's pins with `args` (the packet, `--json`).
    pub fn trace_with(&self, args: &[&str]) -> Result<String> {
        let binary = Agent::binary()?;
        let dir = self.options.bpffs_dir.to_string_lossy();
        let all: Vec<&str> = ["trace", "--bpffs-dir", &dir]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        cmd::run(&binary.to_string_lossy(), &all)
    }

    /// [`Agent::trace_with`] run inside `netns` (entered with `nsenter --net`, which leaves the
    /// mounts, and so bpffs, as they are), where `--iface` names its interfaces.
    pub fn trace_in(&self, netns: &NetNs, args: &[&str]) -> Result<String> {
        let binary = Agent::binary()?;
        let (binary, dir) = (
            binary.to_string_lossy(),
            self.options.bpffs_dir.to_string_lossy(),
        );
        let net = format!("--net={}", netns.path().display());
        let all: Vec<&str> = [net.as_str(), &binary, "trace", "--bpffs-dir", &dir]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        cmd::run("nsenter", &all)
    }

    /// The options the agent runs with.
    pub fn options(&self) -> &AgentOptions {
        &self.options
    }

    /// Kills the agent with SIGKILL, as a crash or an OOM kill would, and waits for it to
    /// exit. Its pins stay (also when this value is dropped) for the next agent to adopt.
    pub fn kill(&mut self) -> Result<()> {
        self.keep_pins = true;
        if self.exit_status()?.is_none() {
            self.child
                .kill()
                .map_err(io_context("cannot kill lb-agent"))?;
            self.child
                .wait()
                .map_err(io_context("cannot wait for lb-agent"))?;
        }
        Ok(())
    }

    /// Stops the agent cleanly (SIGTERM) and returns its exit status. Its pins stay (also when
    /// this value is dropped), as they do for a real clean exit.
    pub fn stop_keeping_pins(&mut self) -> Result<ExitStatus> {
        self.keep_pins = true;
        self.terminate()
    }

    /// Starts `lb-agent monitor` on this agent's socket with `args` (filters, `--json`,
    /// `--count`).
    pub fn monitor(&self, args: &[&str]) -> Result<Monitor> {
        Monitor::start(&self.options.monitor_socket, args)
    }

    /// The number of monitor clients the kernel's gate holds (`LB_MONITOR`).
    pub fn monitor_clients(&self) -> Result<u32> {
        let pin = self.options.bpffs_dir.join("maps/LB_MONITOR");
        let value = crate::bpftool::lookup(&pin, &0u32.to_ne_bytes())?;
        Ok(value.map_or(0, |v| crate::bpftool::u32_at(&v, 0)))
    }

    /// Waits (at most `timeout`) until the gate holds `clients`.
    pub fn wait_for_monitor_clients(&self, clients: u32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.monitor_clients()?;
            if now == clients {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("the monitor gate to hold {clients} clients (it holds {now})"),
                    timeout,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Runs `lb-agent cleanup` on this agent's bpffs directory and returns its output.
    pub fn cleanup(&self) -> Result<String> {
        let binary = Agent::binary()?;
        let dir = self.options.bpffs_dir.to_string_lossy();
        cmd::run(&binary.to_string_lossy(), &["cleanup", "--bpffs-dir", &dir])
    }

    /// Stops the agent: SIGTERM, then SIGKILL after a grace period.
    fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status()? {
            return Ok(status);
        }
        // SAFETY: kill only sends a signal to our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            thread::sleep(POLL);
        }
        let _ = self.child.kill();
        self.child
            .wait()
            .map_err(io_context("cannot wait for lb-agent"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(err) = self.terminate() {
            eprintln!("warning: cannot stop lb-agent: {err}");
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if !self.keep_pins {
            remove_pins(&self.options.bpffs_dir);
        }
        // A killed agent leaves its socket (the next one replaces it).
        let _ = std::fs::remove_file(&self.options.monitor_socket);
    }
}

/// Whether new TCP connections from `netns` to `target` fail within about 2 s: after
/// `lb-agent cleanup`, once the programs are detached (the kernel releases an unpinned link
/// from a work queue, so it may take a moment), nothing translates a Service address any more.
pub fn untranslated_after_cleanup(netns: &NetNs, target: std::net::SocketAddrV4) -> bool {
    (0..20).any(|_| {
        let reply = netns
            .run(|| crate::servers::tcp_request(target, Duration::from_millis(200)))
            .expect("running in the namespace");
        reply.is_err() || {
            thread::sleep(Duration::from_millis(100));
            false
        }
    })
}

/// Removes a harness-made bpffs directory (`/sys/fs/bpf/lbt-...`) left by an agent; any other
/// path is left alone.
pub fn remove_pins(dir: &Path) {
    let ours = dir.parent() == Some(Path::new(BPFFS_ROOT))
        && dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("lbt-"));
    if ours && dir.exists() {
        if let Err(err) = std::fs::remove_dir_all(dir) {
            eprintln!("warning: cannot remove {}: {err}", dir.display());
        }
    }
}

/// Removes bpffs directories of harness processes that no longer run and returns them.
pub fn remove_stale_pins() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(BPFFS_ROOT) else {
        return Vec::new();
    };
    let stale: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| crate::netns::owner_is_gone(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    for dir in &stale {
        remove_pins(dir);
    }
    stale
}

/// Makes the child enter `netns` and, if given, the cgroup whose `cgroup.procs` is `procs`
/// (writing 0 moves the writer) before exec, run in its own process group (a terminal's
/// Ctrl-C reaches only the harness, which then stops the agent in order) and get SIGTERM if
/// the spawning thread dies without stopping it.
fn enter_before_exec(command: &mut Command, netns: File, procs: Option<File>) {
    let fd = netns.as_raw_fd();
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls; both files stay open in the parent until `spawn` returns because the closure owns
    // them.
    unsafe {
        command.pre_exec(move || {
            let _keep_open = (&netns, &procs);
            if libc::setns(fd, libc::CLONE_NEWNET) != 0
                || libc::setpgid(0, 0) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0
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

/// Appends every line of `source` to `log` until EOF.
fn collect_lines(source: impl Read + Send + 'static, log: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            let Ok(line) = line else { return };
            if let Ok(mut log) = log.lock() {
                log.push_str(&line);
                log.push('\n');
            }
        }
    })
}
