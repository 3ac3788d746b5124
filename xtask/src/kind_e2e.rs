//! `cargo xtask kind-e2e`: lb-agent in a real Kubernetes cluster without kube-proxy, on a
//! machine with Docker, kind and kubectl. Builds the image (`manifests/Containerfile`),
//! creates the kind cluster (`manifests/kind/cluster.yaml`), loads the image, applies
//! `manifests/deploy/`, deploys a Deployment of two echo pods behind a NodePort Service and a
//! client pod, checks ClusterIP and NodePort traffic from the pod and NodePort traffic from
//! this host, reports, and deletes the cluster (also on failure, unless `--keep`).
//!
//! It never touches the user's kubeconfig: kind and kubectl use a private one.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::shell;

/// Cluster name, as in `manifests/kind/cluster.yaml`.
const CLUSTER: &str = "lb-e2e";
/// Image tag, as in `manifests/deploy/daemonset.yaml`.
const IMAGE: &str = "lb-agent:dev";
/// Namespace of the test workload.
const NAMESPACE: &str = "lb-e2e";
const NODE_PORT: u16 = 30080;
/// Per-request timeout in seconds.
const REQUEST_TIMEOUT_S: u64 = 3;
/// The test workload: two agnhost pods answering `GET /hostname` with their name, a NodePort
/// Service in front (named targetPort), and a busybox client pod.
const WORKLOAD: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: lb-e2e
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: lb-e2e
spec:
  replicas: 2
  selector:
    matchLabels:
      app: echo
  template:
    metadata:
      labels:
        app: echo
    spec:
      containers:
        - name: echo
          image: registry.k8s.io/e2e-test-images/agnhost:2.53
          args: ["netexec", "--http-port=8080"]
          ports:
            - name: http
              containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: lb-e2e
spec:
  type: NodePort
  selector:
    app: echo
  ports:
    - name: http
      port: 80
      targetPort: http
      nodePort: 30080
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: lb-e2e
spec:
  containers:
    - name: client
      image: docker.io/library/busybox:1.36
      command: ["sleep", "3600"]
"#;

#[derive(clap::Args)]
pub struct KindE2e {
    /// Requests per check.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    requests: u16,
    /// Keep the cluster afterwards (`kind delete cluster --name lb-e2e` removes it).
    #[arg(long)]
    keep: bool,
}

impl KindE2e {
    /// Runs the end-to-end test.
    pub fn run(self) -> Result<()> {
        require_tools()?;
        let root = shell::workspace_root();
        let manifests = root.join("manifests");
        shell::run(Command::new("docker").current_dir(&root).args([
            "build",
            "-f",
            "manifests/Containerfile",
            "-t",
            IMAGE,
            ".",
        ]))?;

        let work = WorkDir::create()?;
        let kubeconfig = work.path().join("kubeconfig");
        let cluster_config = manifests.join("kind/cluster.yaml");
        shell::run(
            Command::new("kind")
                .args(["create", "cluster", "--wait", "120s"])
                .args([
                    "--config".as_ref(),
                    cluster_config.as_os_str(),
                    "--kubeconfig".as_ref(),
                    kubeconfig.as_os_str(),
                ]),
        )?;
        let cluster = ClusterGuard {
            kubeconfig: kubeconfig.clone(),
            keep: self.keep,
        };
        shell::run(Command::new("kind").args(["load", "docker-image", IMAGE, "--name", CLUSTER]))?;

        let kubectl = Kubectl { kubeconfig };
        kubectl.run(&["apply", "-f", &manifests.join("deploy").to_string_lossy()])?;
        kubectl
            .run(&[
                "-n",
                "kube-system",
                "rollout",
                "status",
                "daemonset/lb-agent",
                "--timeout=180s",
            ])
            .context(
                "lb-agent did not become ready (see `kubectl -n kube-system logs ds/lb-agent`)",
            )?;

        let workload = work.path().join("workload.yaml");
        fs::write(&workload, WORKLOAD).context("writing the workload manifest")?;
        kubectl.run(&["apply", "-f", &workload.to_string_lossy()])?;
        kubectl.run(&[
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            "deployment/echo",
            "--timeout=180s",
        ])?;
        kubectl.run(&[
            "-n",
            NAMESPACE,
            "wait",
            "pod/client",
            "--for=condition=Ready",
            "--timeout=180s",
        ])?;

        let cluster_ip = kubectl.output(&[
            "-n",
            NAMESPACE,
            "get",
            "service",
            "echo",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        let node_ips = kubectl.output(&[
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}"#,
        ])?;
        let requests = usize::from(self.requests);
        let mut checks = vec![(
            format!("ClusterIP {cluster_ip}:80 from a pod"),
            kubectl.fetch_from_client(&format!("{cluster_ip}:80"), requests)?,
        )];
        for node_ip in node_ips.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let target = format!("{node_ip}:{NODE_PORT}");
            checks.push((
                format!("NodePort {target} from a pod"),
                kubectl.fetch_from_client(&target, requests)?,
            ));
            let addr: SocketAddr = target
                .parse()
                .with_context(|| format!("node address {target}"))?;
            checks.push((
                format!("NodePort {target} from this host"),
                fetch_from_host(addr, requests),
            ));
        }
        let failed = report(&checks);
        if failed > 0 {
            println!(
                "{}",
                kubectl
                    .output(&[
                        "-n",
                        "kube-system",
                        "logs",
                        "daemonset/lb-agent",
                        "--tail=50"
                    ])
                    .unwrap_or_default()
            );
        }
        drop(cluster);
        ensure!(
            failed == 0,
            "kind-e2e: {failed} of {} checks failed",
            checks.len()
        );
        println!("kind-e2e: all {} checks passed", checks.len());
        Ok(())
    }
}

/// Fails early, naming what is missing, unless docker (with a reachable daemon), kind and
/// kubectl all run.
fn require_tools() -> Result<()> {
    let missing: Vec<&str> = [
        (
            "docker",
            &["version", "--format", "{{.Server.Version}}"][..],
        ),
        ("kind", &["version"]),
        ("kubectl", &["version", "--client"]),
    ]
    .into_iter()
    .filter(|(tool, args)| !shell::succeeds(tool, args))
    .map(|(tool, _)| tool)
    .collect();
    if !missing.is_empty() {
        bail!(
            "kind-e2e needs Docker (with a running daemon), kind and kubectl on PATH; not working \
             here: {}. Install them (https://kind.sigs.k8s.io/docs/user/quick-start/) or run the \
             network-namespace end-to-end tests instead (`cargo xtask test`).",
            missing.join(", ")
        );
    }
    Ok(())
}

/// kubectl with the cluster's private kubeconfig.
struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        shell::run(&mut self.command(args))
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        Ok(shell::output(&mut self.command(args))?.trim().to_string())
    }

    /// `GET http://<target>/hostname` `count` times from the client pod, in one shell loop.
    fn fetch_from_client(&self, target: &str, count: usize) -> Result<Vec<Option<String>>> {
        let script = format!(
            "for i in $(seq {count}); do wget -qO- -T {REQUEST_TIMEOUT_S} http://{target}/hostname \
             || printf FAILED; echo; done"
        );
        let output =
            self.output(&["-n", NAMESPACE, "exec", "client", "--", "sh", "-c", &script])?;
        Ok(output
            .lines()
            .map(|line| {
                Some(line.trim().to_string()).filter(|l| !l.is_empty() && !l.ends_with("FAILED"))
            })
            .collect())
    }
}

/// `GET /hostname` from this host `count` times (through the node's external interface).
fn fetch_from_host(addr: SocketAddr, count: usize) -> Vec<Option<String>> {
    let timeout = Duration::from_secs(REQUEST_TIMEOUT_S);
    (0..count)
        .map(|_| {
            let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
            stream.set_read_timeout(Some(timeout)).ok()?;
            write!(stream, "GET /hostname HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let (head, body) = response.split_once("\r\n\r\n")?;
            let status = head.split(' ').nth(1)?;
            (status == "200").then(|| body.trim().to_string())
        })
        .collect()
}

/// Prints one line per check (answered / sent, and by which pods) and returns how many had
/// a failed request.
fn report(checks: &[(String, Vec<Option<String>>)]) -> usize {
    println!("\nkind-e2e results:");
    let mut failed = 0;
    for (name, answers) in checks {
        let mut pods: BTreeMap<&str, usize> = BTreeMap::new();
        for pod in answers.iter().flatten() {
            *pods.entry(pod).or_default() += 1;
        }
        let answered: usize = pods.values().sum();
        let ok = answered == answers.len() && !answers.is_empty();
        failed += usize::from(!ok);
        println!(
            "  {} {name}: {answered}/{} answered, by {pods:?}",
            if ok { "PASS" } else { "FAIL" },
            answers.len()
        );
    }
    failed
}

/// Deletes the cluster on drop unless asked to keep it.
struct ClusterGuard {
    kubeconfig: PathBuf,
    keep: bool,
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if self.keep {
            println!("kind-e2e: keeping cluster {CLUSTER} (kind delete cluster --name {CLUSTER})");
            return;
        }
        let deleted = shell::run(
            Command::new("kind")
                .args(["delete", "cluster", "--name", CLUSTER])
                .args(["--kubeconfig".as_ref(), self.kubeconfig.as_os_str()]),
        );
        if let Err(err) = deleted {
            eprintln!("warning: {err:#}; delete it with `kind delete cluster --name {CLUSTER}`");
        }
    }
}

/// A private temporary directory (kubeconfig, workload manifest), removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("lb-kind-e2e-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(WorkDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
