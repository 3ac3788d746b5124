//! `manifests/deploy/` parsed into typed Kubernetes objects, and the agent's container as the
//! kubelet resolves it: its environment from `env` and `envFrom`, its arguments with `$(VAR)`
//! expanded. Shared by the manifest checks and the "as deployed" end-to-end test, so both read
//! the manifests themselves rather than a restatement of them. Parsing failures panic with the
//! file's path: the manifests are part of the repository.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, PodSpec, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

/// The repository's `manifests/` directory.
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every object of `manifests/deploy/`.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub service_account: ServiceAccount,
    pub role: ClusterRole,
    pub binding: ClusterRoleBinding,
    pub config: ConfigMap,
    pub daemonset: DaemonSet,
}

/// Parses `document` as `T` and checks that serializing it back gives the same document, so
/// a field `T` does not know (a typo, a wrong nesting level) fails instead of vanishing.
fn typed<T: DeserializeOwned + Serialize>(path: &Path, document: &Value) -> T {
    let object: T = serde_json::from_value(document.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &back,
        document,
        "{}: fields were dropped or changed by parsing",
        path.display()
    );
    object
}

impl Deployment {
    /// Reads `manifests/deploy/`: one YAML document per file, one file per kind.
    pub fn load() -> Deployment {
        let dir = manifests_dir().join("deploy");
        let mut documents: BTreeMap<String, (PathBuf, Value)> = BTreeMap::new();
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            assert_eq!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml"),
                "{}",
                path.display()
            );
            let text = fs::read_to_string(&path).unwrap();
            let document: Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let kind = document["kind"].as_str().unwrap_or_default().to_string();
            let earlier = documents.insert(kind.clone(), (path.clone(), document));
            assert!(earlier.is_none(), "two {kind} manifests");
        }
        let kinds: BTreeSet<&str> = documents.keys().map(String::as_str).collect();
        assert_eq!(
            kinds,
            BTreeSet::from([
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet",
                "ServiceAccount"
            ])
        );
        let get = |kind: &str| {
            let (path, document) = &documents[kind];
            (path.as_path(), document)
        };
        let (p, d) = get("ServiceAccount");
        let service_account = typed(p, d);
        let (p, d) = get("ClusterRole");
        let role = typed(p, d);
        let (p, d) = get("ClusterRoleBinding");
        let binding = typed(p, d);
        let (p, d) = get("ConfigMap");
        let config = typed(p, d);
        let (p, d) = get("DaemonSet");
        let daemonset = typed(p, d);
        Deployment {
            service_account,
            role,
            binding,
            config,
            daemonset,
        }
    }

    /// The DaemonSet's pod template.
    pub fn pod_spec(&self) -> &PodSpec {
        self.daemonset
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("a pod template")
    }

    /// The DaemonSet's one container.
    pub fn agent_container(&self) -> &Container {
        let containers = &self.pod_spec().containers;
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    /// The container's environment as the kubelet builds it: the ConfigMap of `envFrom`, then
    /// `env` (whose `fieldRef`s get `field_values`, e.g. `spec.nodeName`).
    pub fn agent_env(&self, field_values: &BTreeMap<&str, &str>) -> BTreeMap<String, String> {
        let container = self.agent_container();
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        for source in container.env_from.as_deref().unwrap_or_default() {
            let reference = source.config_map_ref.as_ref().expect("a ConfigMap");
            assert_eq!(Some(&reference.name), self.config.metadata.name.as_ref());
            vars.extend(self.config.data.clone().unwrap_or_default());
        }
        for var in container.env.as_deref().unwrap_or_default() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(from)) => {
                    let field = &from.field_ref.as_ref().expect("a fieldRef").field_path;
                    field_values[field.as_str()].to_string()
                }
                (None, None) => String::new(),
            };
            vars.insert(var.name.clone(), value);
        }
        vars
    }

    /// The container's arguments with `$(VAR)` replaced as the kubelet does, from
    /// [`Deployment::agent_env`].
    pub fn agent_args(&self, field_values: &BTreeMap<&str, &str>) -> Vec<String> {
        let vars = self.agent_env(field_values);
        self.agent_container()
            .args
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|arg| {
                let mut arg = arg.clone();
                while let Some(start) = arg.find("$(") {
                    let end = start + arg[start..].find(')').expect("a closing parenthesis");
                    let name = &arg[start + 2..end];
                    let value = vars
                        .get(name)
                        .unwrap_or_else(|| panic!("argument {arg:?} uses undefined {name}"));
                    arg.replace_range(start..=end, value);
                }
                arg
            })
            .collect()
    }

    /// Points the ConfigMap's `key` at `value`, as a user editing it before applying.
    pub fn set_config(&mut self, key: &str, value: &str) {
        let data = self.config.data.get_or_insert_with(BTreeMap::new);
        assert!(data.contains_key(key), "the ConfigMap has no {key}");
        data.insert(key.to_string(), value.to_string());
    }
}
