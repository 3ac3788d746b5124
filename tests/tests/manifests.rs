//! The deployment manifests (`manifests/deploy/`) parse into typed Kubernetes objects with no
//! unknown or misspelt field, and ask for what the agent needs and no more: read access to
//! Services, EndpointSlices, Nodes and ServiceCIDRs, the host network, bpffs, the node's net.* sysctls, its
//! cgroups (read-only) and three capabilities instead of a privileged container. The DaemonSet's arguments are flags the real `lb-agent` accepts.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
};

use k8s_openapi::api::core::v1::VolumeMount;
use lb_tests::{
    agent::Agent,
    deploy::{manifests_dir, Deployment},
};
use lb_userspace::source::api::ApiServerUrl;
use serde_json::Value;

fn load() -> Deployment {
    Deployment::load()
}

#[test]
fn rbac_grants_exactly_reading_services_endpointslices_nodes_and_servicecidrs() {
    let deployment = load();
    let mut granted = BTreeSet::new();
    for rule in deployment.role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.as_str(), resource.as_str(), verb.as_str()));
                }
            }
        }
    }
    let mut needed = BTreeSet::new();
    for (group, resource) in [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        for verb in ["get", "list", "watch"] {
            needed.insert((group, resource, verb));
        }
    }
    // ServiceCIDRs are only listed and watched (kube-runtime's watcher; no get).
    needed.insert(("networking.k8s.io", "servicecidrs", "list"));
    needed.insert(("networking.k8s.io", "servicecidrs", "watch"));
    assert_eq!(granted, needed);

    let (account, role, binding) = (
        &deployment.service_account.metadata,
        &deployment.role.metadata,
        &deployment.binding,
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(Some(&binding.role_ref.name), role.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.name.as_ref());
    assert_eq!(subjects[0].namespace, account.namespace);
}

#[test]
fn the_daemonset_runs_on_the_host_network_with_bpffs_and_capabilities_not_privilege() {
    let deployment = load();
    let daemonset = &deployment.daemonset;
    let pod = deployment.pod_spec();
    assert_eq!(
        daemonset.metadata.namespace,
        deployment.service_account.metadata.namespace
    );
    assert_eq!(
        pod.service_account_name,
        deployment.service_account.metadata.name
    );
    assert_eq!(pod.host_network, Some(true));
    // The node's resolver: the cluster DNS's ClusterIP answers only once the agent runs.
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
    let tolerates_all = pod.tolerations.as_deref().unwrap_or_default();
    assert!(tolerates_all
        .iter()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));

    let container = deployment.agent_container();
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let host_path_mount = |host_path: &str| {
        let volume = volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host_path))
            .unwrap_or_else(|| panic!("a hostPath volume of {host_path}"));
        let mounts = container.volume_mounts.as_deref().unwrap_or_default();
        let mount = mounts.iter().find(|m| m.name == volume.name);
        mount
            .unwrap_or_else(|| panic!("{host_path} is not mounted: {mounts:?}"))
            .mount_path
            .clone()
    };
    assert_eq!(host_path_mount("/sys/fs/bpf"), "/sys/fs/bpf");
    // No sysctl is written (the redirect reply path needs none): no /proc/sys/net mount.
    let args = container.args.as_deref().unwrap_or_default();
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--proc-sys-net-dir") || a.starts_with("--reply-path")),
        "{args:?}"
    );
    // The node's cgroups, read-only: the socket programs attach to its cgroup v2 root.
    let cgroup = host_path_mount("/sys/fs/cgroup");
    assert!(
        args.contains(&format!("--cgroup-path={cgroup}")),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a == "--no-socket-lb"), "{args:?}");
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let cgroup_mount = mounts.iter().find(|m| m.mount_path == cgroup).unwrap();
    assert_eq!(cgroup_mount.read_only, Some(true));
    let from_host = |m: &&VolumeMount| {
        let volume = volumes.iter().find(|v| v.name == m.name);
        volume.is_some_and(|v| v.host_path.is_some())
    };
    assert_eq!(
        mounts.iter().filter(from_host).count(),
        2,
        "nothing but bpffs and cgroups from the host"
    );
    // The monitor socket's directory (the root file system is read-only): the pod's own.
    let monitor = mounts
        .iter()
        .find(|m| m.mount_path == "/run/lb-agent")
        .expect("a mount at /run/lb-agent for the monitor socket");
    let volume = volumes.iter().find(|v| v.name == monitor.name).unwrap();
    assert!(volume.empty_dir.is_some(), "{volume:?}");
    assert_eq!(mounts.len(), 3, "{mounts:?}");

    let security = container
        .security_context
        .as_ref()
        .expect("a securityContext");
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    let added: BTreeSet<&str> = capabilities
        .add
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_string()][..]));

    let resources = container.resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("resource requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    for (probe, path) in [
        // Not /healthz: it fails while the node drains, which is no reason to restart.
        (&container.liveness_probe, "/livez"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10256)
        );
    }
}

#[test]
fn the_daemonset_arguments_are_lb_agent_flags() {
    let deployment = load();
    let nodes = BTreeMap::from([("spec.nodeName", "node-a")]);
    let args = deployment.agent_args(&nodes);
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert!(args.contains(&"--node-name=node-a".to_string()), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("--manifests")),
        "Kubernetes mode"
    );
    // The API server's real address, never the `kubernetes` Service that the agent itself
    // programs (in KUBERNETES_SERVICE_HOST, or by name through the cluster DNS).
    let server = args
        .iter()
        .find_map(|a| a.strip_prefix("--k8s-api-server="))
        .expect("--k8s-api-server");
    let url: ApiServerUrl = server.parse().unwrap();
    let host = url.uri().host().unwrap_or_default();
    assert!(
        host != "kubernetes" && !host.starts_with("kubernetes.default"),
        "{url}"
    );
    // `--help` after the arguments succeeds only if clap accepted every one before it.
    let binary = Agent::binary().unwrap();
    let output = std::process::Command::new(&binary)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lb-agent rejects the DaemonSet's arguments {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_kind_cluster_runs_without_kube_proxy_and_the_agent_finds_its_api_server() {
    let path = manifests_dir().join("kind/cluster.yaml");
    let cluster: Value = serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(cluster["kind"], "Cluster");
    assert_eq!(cluster["networking"]["kubeProxyMode"], "none");
    let name = cluster["name"].as_str().expect("a cluster name");
    // kind names the control-plane node (and so the API server's host) `<name>-control-plane`.
    let config = load().config.data.unwrap_or_default();
    assert_eq!(
        config.get("LB_K8S_API_SERVER"),
        Some(&format!("https://{name}-control-plane:6443"))
    );
    // The kubelet's own in-cluster variables are left alone: the flag overrides them.
    assert!(!config.contains_key("KUBERNETES_SERVICE_HOST"));
}

#[test]
fn the_image_embeds_a_fresh_ebpf_object_and_matches_the_daemonset() {
    let containerfile = fs::read_to_string(manifests_dir().join("Containerfile")).unwrap();
    let position = |needle: &str| {
        containerfile
            .find(needle)
            .unwrap_or_else(|| panic!("the Containerfile lacks {needle:?}"))
    };
    assert!(position("cargo xtask build-ebpf") < position("cargo build --release"));
    position("COPY --from=build /src/target/release/lb-agent ");
    let image = load().agent_container().image.clone().unwrap();
    let header: String = containerfile
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect();
    assert!(
        header.contains(&format!("-t {image} ")),
        "the Containerfile's build command does not tag {image}"
    );
}
