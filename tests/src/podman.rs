//! The agent as a kubelet runs the DaemonSet's pod, with a real OCI runtime: podman with runc.
//!
//! [`Podman`] keeps everything of its own under a temporary directory (image store, run
//! state, `containers.conf`), so nothing machine-wide changes and dropping it removes every
//! container and image it made. The image is assembled from the build output: the `lb-agent`
//! binary the tests run and the shared libraries `ldd` names, in a root filesystem with
//! nothing else, imported with `podman import` (no registry is needed).
//!
//! [`pod_args`] turns the DaemonSet's container into `podman run` arguments, field by field,
//! and refuses what it does not model, so a manifest change the test cannot honour fails it:
//! host network as the node's namespace (`--network ns:PATH`), the securityContext
//! (capabilities, no privilege escalation, read-only root filesystem, the seccomp profile
//! containerd applies for `RuntimeDefault`: [`runtime_default_seccomp`]), the memory limit,
//! env and envFrom, hostPath mounts mapped to where this test keeps them, emptyDir mounts as
//! fresh tmpfs, and the service
//! account the kubelet mounts into every pod. podman leaves `/proc/sys` read-only and masks
//! the usual `/proc` paths in a non-privileged container, as containerd does.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{json, Value};

use crate::{
    agent::Agent,
    deploy::Deployment,
    error::io_context,
    netns::{owner_is_gone, unique_prefix},
    Error, Result,
};

/// podman's own default seccomp profile (Debian's package).
pub const PODMAN_SECCOMP: &str = "/usr/share/containers/seccomp.json";
/// Where the kubelet mounts a pod's service account.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the agent binary goes in the image.
pub const IMAGE_BINARY: &str = "/usr/local/bin/lb-agent";
/// Poll interval while waiting for a container's log.
const POLL: Duration = Duration::from_millis(100);
/// How long a stopped container gets between SIGTERM and SIGKILL (the DaemonSet's
/// terminationGracePeriodSeconds is longer; the tests never need it).
const STOP_GRACE: &str = "5";
/// This machine's runtime settings (cgroups in hybrid mode: crun fails, runc works, no
/// systemd; podman's default ulimits fail here), and every directory podman would otherwise
/// keep state in machine-wide moved under `{dir}`, its own.
const CONTAINERS_CONF: &str = "\
[containers]
default_ulimits = []

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
events_logfile_path = \"{dir}/events.log\"
tmp_dir = \"{dir}/tmp\"
volume_path = \"{dir}/volumes\"

[network]
network_config_dir = \"{dir}/networks\"
";

/// Suffix of a [`Podman`]'s directory (`<tmp>/lbt-<pid>-<n>-podman`).
const DIR_SUFFIX: &str = "-podman";

/// A private podman: its own store and configuration under a temporary directory named after
/// this process, so a later run removes what a killed one left (containers included).
#[derive(Debug)]
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// Sets up the private store, after removing those of test processes that are gone; an
    /// error that says how to install podman if it is missing (`cargo xtask setup` does).
    pub fn new() -> Result<Podman> {
        remove_stale();
        let dir = std::env::temp_dir().join(format!("{}{DIR_SUFFIX}", unique_prefix()));
        fs::create_dir(&dir).map_err(io_context(format!("creating {}", dir.display())))?;
        let podman = Podman { dir };
        let conf = CONTAINERS_CONF.replace("{dir}", &podman.dir.to_string_lossy());
        fs::write(podman.dir.join("containers.conf"), conf)
            .map_err(io_context("writing containers.conf"))?;
        podman.run(&["--version"]).map_err(|e| Error::Invalid {
            what: "container runtime".into(),
            reason: format!(
                "podman does not run ({e}); `cargo xtask setup` installs podman and runc \
                 (apt-get install podman runc)"
            ),
        })?;
        Ok(podman)
    }

    /// The private directory (the image's root filesystem and profiles go here too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        let path = |name: &str| self.dir.join(name);
        command
            .env("CONTAINERS_CONF", path("containers.conf"))
            .arg("--root")
            .arg(path("storage"))
            .arg("--runroot")
            .arg(path("run"))
            .args(["--storage-driver", "vfs"]);
        command
    }

    /// Runs `podman args...` and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.output(args).map(|(stdout, _)| stdout)
    }

    /// Runs `podman args...` to its end and returns its stdout and then its stderr (where
    /// the agent logs).
    pub fn run_with_stderr(&self, args: &[&str]) -> Result<String> {
        self.output(args).map(|(stdout, stderr)| stdout + &stderr)
    }

    /// Stdout and stderr of `podman args...`; an error with the stderr if it fails.
    fn output(&self, args: &[&str]) -> Result<(String, String)> {
        let output = self
            .command()
            .args(args)
            .output()
            .map_err(io_context("cannot run podman"))?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            return Err(Error::Command {
                command: format!("podman {}", args.join(" ")),
                status: output.status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok((String::from_utf8_lossy(&output.stdout).into_owned(), stderr))
    }

    /// Assembles the agent's image from the build output (the binary [`Agent::binary`] and
    /// the libraries it links) and imports it as `image`, with the binary as its entrypoint
    /// as in `manifests/Containerfile`.
    pub fn import_agent_image(&self, image: &str) -> Result<()> {
        let binary = Agent::binary()?;
        let root = self.dir.join("rootfs");
        let mut files = vec![(binary.clone(), PathBuf::from(IMAGE_BINARY))];
        files.extend(
            linked_libraries(&binary)?
                .into_iter()
                .map(|l| (l.clone(), l)),
        );
        for (from, to) in &files {
            let to = root.join(to.strip_prefix("/").unwrap_or(to));
            fs::create_dir_all(to.parent().expect("a file in a directory")).map_err(io_context(
                format!("creating the directory of {}", to.display()),
            ))?;
            fs::copy(from, &to).map_err(io_context(format!("copying {}", from.display())))?;
        }
        // Mount points the runtime fills in.
        for dir in ["proc", "sys", "dev", "etc", "tmp"] {
            fs::create_dir_all(root.join(dir)).map_err(io_context("creating the root fs"))?;
        }
        let tarball = self.dir.join("rootfs.tar");
        let root_text = root.to_string_lossy();
        let tar_text = tarball.to_string_lossy();
        crate::cmd::run("tar", &["-C", &root_text, "-cf", &tar_text, "."])?;
        let entrypoint = format!("ENTRYPOINT [\"{IMAGE_BINARY}\"]");
        self.run(&["import", "--change", &entrypoint, &tar_text, image])?;
        Ok(())
    }

    /// Starts a container from `args` (as [`pod_args`] makes them) named `name`.
    pub fn start<'a>(&'a self, name: &str, args: &[String]) -> Result<Container<'a>> {
        let mut all = vec!["run", "--detach", "--name", name];
        all.extend(args.iter().map(String::as_str));
        self.run(&all)?;
        Ok(Container {
            podman: self,
            name: name.to_string(),
        })
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.remove_all();
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl Podman {
    /// Removes every container (SIGKILL) and image of this store.
    fn remove_all(&self) {
        for args in [
            &["rm", "--all", "--force", "--time", "0"][..],
            &["rmi", "--all", "--force"],
        ] {
            if let Err(e) = self.run(args) {
                eprintln!("warning: {e}");
            }
        }
    }
}

/// Removes the stores (and their containers) of test processes that no longer run.
fn remove_stale() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(DIR_SUFFIX) && owner_is_gone(&name) {
            eprintln!("removing the podman store {name} of a test process that is gone");
            drop(Podman { dir: entry.path() });
        }
    }
}

/// The files `ldd` says `binary` loads, the dynamic loader included.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let text = crate::cmd::run("ldd", &[&binary.to_string_lossy()])?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// A container started by [`Podman::start`]; removed on drop (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Container<'_> {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its output so far, stdout and stderr.
    pub fn log(&self) -> String {
        let mut command = self.podman.command();
        match command.args(["logs", &self.name]).output() {
            Ok(output) => {
                String::from_utf8_lossy(&output.stdout).into_owned()
                    + &String::from_utf8_lossy(&output.stderr)
            }
            Err(e) => format!("(podman logs failed: {e})"),
        }
    }

    /// The log of a stopped container, read again until it stops growing (at most ~2 s):
    /// conmon may still be writing its last lines when the container is reported stopped.
    fn log_after_exit(&self) -> String {
        let mut log = self.log();
        for _ in 0..10 {
            thread::sleep(Duration::from_millis(200));
            let again = self.log();
            if again == log {
                break;
            }
            log = again;
        }
        log
    }

    /// Whether it still runs.
    pub fn running(&self) -> bool {
        let state = self
            .podman
            .run(&["inspect", "--format", "{{.State.Running}}", &self.name]);
        state.is_ok_and(|s| s.trim() == "true")
    }

    /// Waits until its log contains `needle`; an error with the log if it exits first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(());
            }
            if !self.running() {
                // It may have written the line and stopped after the read above, and
                // the runtime may still be flushing what it wrote last.
                let log = self.log_after_exit();
                if log.contains(needle) {
                    return Ok(());
                }
                return Err(Error::AgentExited {
                    status: format!("container {} stopped", self.name),
                    what: needle.to_string(),
                    log,
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("{needle:?} in the log of container {}:\n{log}", self.name),
                    timeout,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// `podman kill`: SIGKILL, as when the node's OOM killer or a crash ends it.
    pub fn kill(&self) -> Result<()> {
        self.podman.run(&["kill", &self.name]).map(drop)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .podman
            .run(&["rm", "--force", "--time", STOP_GRACE, &self.name])
        {
            eprintln!("warning: {e}");
        }
    }
}

/// What the node's kubelet gives the pod beyond the manifests.
#[derive(Clone, Debug)]
pub struct Kubelet {
    /// `spec.nodeName`.
    pub node_name: String,
    /// The node's network namespace (the pod has `hostNetwork: true`).
    pub netns: PathBuf,
    /// Where each of the DaemonSet's hostPath volumes is on this machine; a hostPath not
    /// listed fails the test.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// The service account's `token` and `ca.crt`, mounted at [`SERVICE_ACCOUNT_MOUNT`].
    pub service_account: PathBuf,
    /// Variables every pod gets (`KUBERNETES_SERVICE_HOST`, `_PORT`).
    pub env: BTreeMap<String, String>,
    /// The profile `seccompProfile: RuntimeDefault` stands for ([`runtime_default_seccomp`]).
    pub runtime_default_seccomp: PathBuf,
}

/// `podman run` arguments for the DaemonSet's container on `kubelet`'s node, with `args`
/// instead of the container's own if given (e.g. `lb-agent cleanup` through the same image).
pub fn pod_args(
    deployment: &Deployment,
    kubelet: &Kubelet,
    args: Option<&[String]>,
) -> Vec<String> {
    let pod = deployment.pod_spec();
    let container = deployment.agent_container();
    let mut run: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| run.extend(items.iter().map(|s| s.to_string()));
    push(&["--pull", "never"]);
    assert_eq!(
        pod.host_network,
        Some(true),
        "the agent runs on the host network"
    );
    push(&["--network", &format!("ns:{}", kubelet.netns.display())]);

    let security = container.security_context.clone().unwrap_or_default();
    assert_ne!(
        security.privileged,
        Some(true),
        "a privileged container is not modelled"
    );
    let capabilities = security.capabilities.unwrap_or_default();
    for cap in capabilities.drop.unwrap_or_default() {
        push(&["--cap-drop", &cap]);
    }
    for cap in capabilities.add.unwrap_or_default() {
        push(&["--cap-add", &format!("CAP_{cap}")]);
    }
    if security.allow_privilege_escalation == Some(false) {
        push(&["--security-opt", "no-new-privileges"]);
    }
    if security.read_only_root_filesystem == Some(true) {
        // Without podman's extra tmpfs on /tmp and /run, which Kubernetes does not add.
        push(&["--read-only", "--read-only-tmpfs=false"]);
    }
    let seccomp = security.seccomp_profile.map(|p| p.type_);
    assert_eq!(
        seccomp.as_deref(),
        Some("RuntimeDefault"),
        "seccomp profile"
    );
    let profile = kubelet.runtime_default_seccomp.display();
    push(&["--security-opt", &format!("seccomp={profile}")]);
    match (security.run_as_user, security.run_as_group) {
        (None, None) => {}
        (Some(user), None) => push(&["--user", &user.to_string()]),
        (Some(user), Some(group)) => push(&["--user", &format!("{user}:{group}")]),
        (None, Some(_)) => panic!("runAsGroup without runAsUser is not modelled"),
    }
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    if let Some(memory) = limits.and_then(|l| l.get("memory")) {
        push(&["--memory", &memory_bytes(memory).to_string()]);
    }

    let fields = BTreeMap::from([("spec.nodeName", kubelet.node_name.as_str())]);
    let mut env = kubelet.env.clone();
    env.extend(deployment.agent_env(&fields));
    for (name, value) in env {
        push(&["--env", &format!("{name}={value}")]);
    }

    let volumes = pod.volumes.as_deref().unwrap_or_default();
    for mount in container.volume_mounts.as_deref().unwrap_or_default() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("no volume {}", mount.name));
        if volume.empty_dir.is_some() {
            // A fresh directory per pod, as the kubelet makes it (memory-backed here always).
            push(&["--tmpfs", &mount.mount_path]);
            continue;
        }
        let host_path = volume
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("volume {} is not a hostPath", volume.name));
        let source = kubelet.host_paths.get(&host_path.path).unwrap_or_else(|| {
            panic!("the test keeps no stand-in for hostPath {}", host_path.path)
        });
        let mode = if mount.read_only == Some(true) {
            "ro"
        } else {
            "rw"
        };
        let spec = format!("{}:{}:{mode}", source.display(), mount.mount_path);
        push(&["--volume", &spec]);
    }
    if pod.automount_service_account_token != Some(false) {
        let spec = format!(
            "{}:{SERVICE_ACCOUNT_MOUNT}:ro",
            kubelet.service_account.display()
        );
        push(&["--volume", &spec]);
    }

    if let Some(command) = &container.command {
        push(&[
            "--entrypoint",
            &serde_json::to_string(command).expect("strings"),
        ]);
    }
    push(&[container.image.as_deref().expect("an image")]);
    match args {
        Some(args) => run.extend(args.iter().cloned()),
        None => run.extend(deployment.agent_args(&fields)),
    }
    run
}

/// A memory quantity (`512Mi`, `1Gi`, `536870912`) in bytes.
fn memory_bytes(quantity: &Quantity) -> u64 {
    let text = quantity.0.as_str();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &text[digits.len()..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => panic!("memory unit {other} in {text}"),
    };
    digits.parse::<u64>().expect("a whole number") * unit
}

/// The seccomp profile containerd applies for `RuntimeDefault`, derived from podman's own
/// default (`podman_default`, the same Moby lineage): containerd allows `bpf()` to a
/// container with CAP_BPF and `perf_event_open()` to one with CAP_PERFMON, where podman 4.3's
/// profile allows both only with CAP_SYS_ADMIN and answers EPERM otherwise.
pub fn runtime_default_seccomp(podman_default: &Value) -> Value {
    let mut profile = podman_default.clone();
    let syscalls = profile["syscalls"]
        .as_array_mut()
        .expect("a seccomp profile's syscalls");
    let conditional = ["bpf", "perf_event_open"];
    // Out of the "EPERM without CAP_SYS_ADMIN" rule: a later allow would not override it.
    for rule in syscalls.iter_mut() {
        let refuses_without_sys_admin = rule["action"] == "SCMP_ACT_ERRNO"
            && rule["excludes"]["caps"]
                .as_array()
                .is_some_and(|caps| caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        if refuses_without_sys_admin {
            if let Some(names) = rule["names"].as_array_mut() {
                names.retain(|n| !conditional.iter().any(|c| n == c));
            }
        }
    }
    for (syscall, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        syscalls.push(json!({
            "names": [syscall],
            "action": "SCMP_ACT_ALLOW",
            "args": [],
            "comment": format!("containerd's RuntimeDefault: {syscall} with {cap}"),
            "includes": {"caps": [cap]},
            "excludes": {},
        }));
    }
    profile
}

/// Writes [`runtime_default_seccomp`] of [`PODMAN_SECCOMP`] to `path`.
pub fn write_runtime_default_seccomp(path: &Path) -> Result<()> {
    let text = fs::read_to_string(PODMAN_SECCOMP).map_err(io_context(format!(
        "reading {PODMAN_SECCOMP} (Debian's podman)"
    )))?;
    let default: Value = serde_json::from_str(&text).map_err(|e| Error::Invalid {
        what: PODMAN_SECCOMP.into(),
        reason: e.to_string(),
    })?;
    let profile =
        serde_json::to_string_pretty(&runtime_default_seccomp(&default)).expect("JSON serializes");
    fs::write(path, profile).map_err(io_context(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_default_profile_allows_bpf_with_cap_bpf_and_refuses_nothing_else_anew() {
        let podman = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["bpf", "perf_event_open", "setns"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["bpf", "perf_event_open", "setns"], "action": "SCMP_ACT_ERRNO",
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}, "errnoRet": 1},
        ]});
        let profile = runtime_default_seccomp(&podman);
        let rules = profile["syscalls"].as_array().unwrap();
        assert_eq!(rules[..2], podman["syscalls"].as_array().unwrap()[..2]);
        assert_eq!(rules[2]["names"], json!(["setns"]));
        assert_eq!(rules[3]["names"], json!(["bpf"]));
        assert_eq!(rules[3]["includes"]["caps"], json!(["CAP_BPF"]));
        assert_eq!(rules[4]["names"], json!(["perf_event_open"]));
        assert_eq!(rules[4]["includes"]["caps"], json!(["CAP_PERFMON"]));
    }

    #[test]
    fn memory_quantities_in_bytes() {
        let bytes = |text: &str| memory_bytes(&Quantity(text.into()));
        assert_eq!(bytes("512Mi"), 512 << 20);
        assert_eq!(bytes("1Gi"), 1 << 30);
        assert_eq!(bytes("1000"), 1000);
    }
}
