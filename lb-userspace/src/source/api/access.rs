//! How the agent reaches its API server, as a pod does and without depending on anything it
//! programs itself.
//!
//! In order: `--kubeconfig`, else `$KUBECONFIG`, else the in-cluster service account: the
//! token and CA certificate under [`DEFAULT_SERVICE_ACCOUNT_DIR`] (or
//! `--k8s-service-account-dir`) and the address in `KUBERNETES_SERVICE_HOST` /
//! `KUBERNETES_SERVICE_PORT`, as kube-rs' and client-go's in-cluster configurations read them.
//!
//! `--k8s-api-server https://HOST:PORT` (`LB_K8S_API_SERVER`) overrides the address in every
//! case, as Cilium's `k8sServiceHost`/`k8sServicePort` and kube-proxy's `--master` do. Without
//! kube-proxy nothing translates the `kubernetes` Service's ClusterIP, which the kubelet puts
//! into `KUBERNETES_SERVICE_HOST`, until this agent programs it: the agent must reach the API
//! server's real address to get there. Once an earlier agent has programmed it, the in-cluster
//! ClusterIP is the better address ([`kubernetes_service`]; the agent decides at start).
//!
//! The token file is re-read by kube-rs at most once a minute (so a rotated or fixed token
//! takes effect within about a minute, without a restart), the CA file likewise.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hyper::Uri;
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use kube::Config;

/// Where the kubelet mounts a pod's service account.
pub const DEFAULT_SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The service account's token, in its directory.
pub const TOKEN_FILE: &str = "token";
/// The CA certificate(s) the API server's certificate is checked against, in its directory.
pub const CA_FILE: &str = "ca.crt";
/// In-cluster address variables the kubelet sets for every pod.
pub const SERVICE_HOST_VAR: &str = "KUBERNETES_SERVICE_HOST";
pub const SERVICE_PORT_VAR: &str = "KUBERNETES_SERVICE_PORT";
/// What to do when no address is known.
const ADDRESS_HINT: &str = "set --k8s-api-server https://HOST:PORT (LB_K8S_API_SERVER), or \
     KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, or give --kubeconfig; --manifests DIR \
     runs without Kubernetes";

/// How to reach the API server (the `lb-agent run` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    /// `--kubeconfig`; `None`: `$KUBECONFIG`, else in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// `--k8s-api-server`: overrides the kubeconfig's or the in-cluster address.
    pub api_server: Option<ApiServerUrl>,
    /// `--k8s-service-account-dir`: the in-cluster token and CA certificate.
    pub service_account_dir: PathBuf,
}

impl Default for ApiAccess {
    fn default() -> Self {
        ApiAccess {
            kubeconfig: None,
            api_server: None,
            service_account_dir: PathBuf::from(DEFAULT_SERVICE_ACCOUNT_DIR),
        }
    }
}

/// An API server address: `https://HOST[:PORT]`, HOST a name, an IPv4 address or a
/// bracketed IPv6 address; the port defaults to 443.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiServerUrl(Uri);

impl ApiServerUrl {
    /// `https://host:port`, with IPv6 addresses bracketed.
    pub fn from_host_port(host: &str, port: u16) -> Result<ApiServerUrl, String> {
        let host = match host.parse::<Ipv6Addr>() {
            Ok(ip) => format!("[{ip}]"),
            Err(_) => host.to_string(),
        };
        format!("https://{host}:{port}").parse()
    }

    /// As kube-rs takes it.
    pub fn uri(&self) -> &Uri {
        &self.0
    }
}

impl FromStr for ApiServerUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{text:?} is not an API server address like https://HOST:PORT");
        let uri: Uri = text.parse().map_err(|_| usage())?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "{} (the API server is reached over HTTPS)",
                usage()
            ));
        }
        let bare = uri.authority().is_some_and(|a| !a.host().is_empty())
            && matches!(uri.path(), "" | "/")
            && uri.query().is_none()
            && uri.authority().is_some_and(|a| !a.as_str().contains('@'));
        if !bare {
            return Err(usage());
        }
        Ok(ApiServerUrl(uri))
    }
}

impl fmt::Display for ApiServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The authority only: `Uri` would add a trailing slash.
        let authority = self.0.authority().map(|a| a.as_str()).unwrap_or_default();
        write!(f, "https://{authority}")
    }
}

/// The API server cannot be reached with what the agent was given. Each is one line naming
/// what is missing.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("loading the kubeconfig from {from} failed")]
    Kubeconfig {
        from: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no API server address: {ADDRESS_HINT}")]
    NoAddress,
    #[error("{SERVICE_HOST_VAR} is set but {SERVICE_PORT_VAR} is not: {ADDRESS_HINT}")]
    NoPort,
    #[error("{SERVICE_HOST_VAR}/{SERVICE_PORT_VAR} do not make an API server address: {0}")]
    BadAddress(String),
    #[error(
        "cannot read the service account {what} {}: {error}; mount the pod's service account \
         there or point --k8s-service-account-dir (LB_K8S_SERVICE_ACCOUNT_DIR) at its directory",
        path.display()
    )]
    ServiceAccountFile {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("the service account token {} is empty", .0.display())]
    EmptyToken(PathBuf),
}

/// The client configuration for `access`, reading the environment (`KUBECONFIG`,
/// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT`) as described in the module.
pub async fn config(access: &ApiAccess) -> Result<Config, AccessError> {
    config_from(access, |name| std::env::var(name).ok()).await
}

/// [`config`] with the environment given by `env`.
async fn config_from(
    access: &ApiAccess,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, AccessError> {
    let options = KubeConfigOptions::default();
    let kubeconfig = |from: String| move |source| AccessError::Kubeconfig { from, source };
    let mut config = match &access.kubeconfig {
        Some(path) => {
            let from = path.display().to_string();
            let file = Kubeconfig::read_from(path).map_err(kubeconfig(from.clone()))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(kubeconfig(from))?
        }
        None if env("KUBECONFIG").is_some_and(|v| !v.is_empty()) => {
            Config::from_kubeconfig(&options)
                .await
                .map_err(kubeconfig("$KUBECONFIG".to_string()))?
        }
        None => {
            let url = match &access.api_server {
                Some(url) => url.clone(),
                None => in_cluster_address(&env)?,
            };
            return in_cluster(&url, &access.service_account_dir).await;
        }
    };
    if let Some(url) = &access.api_server {
        config.cluster_url = url.uri().clone();
    }
    Ok(config)
}

/// The `kubernetes` Service's ClusterIP and port from `KUBERNETES_SERVICE_HOST` /
/// `KUBERNETES_SERVICE_PORT`, when `access` is in-cluster (no kubeconfig) with an explicit
/// address that overrides them: the address to prefer once this node translates it. `None`
/// without an explicit address (the variables are the address then), with a kubeconfig, or
/// when the variables are not an IPv4 address and a port.
pub fn kubernetes_service(access: &ApiAccess) -> Option<SocketAddrV4> {
    kubernetes_service_from(access, |name| std::env::var(name).ok())
}

/// [`kubernetes_service`] with the environment given by `env`.
fn kubernetes_service_from(
    access: &ApiAccess,
    env: impl Fn(&str) -> Option<String>,
) -> Option<SocketAddrV4> {
    let kubeconfig =
        access.kubeconfig.is_some() || env("KUBECONFIG").is_some_and(|v| !v.is_empty());
    if kubeconfig || access.api_server.is_none() {
        return None;
    }
    let host: Ipv4Addr = env(SERVICE_HOST_VAR)?.parse().ok()?;
    let port: u16 = env(SERVICE_PORT_VAR)?.parse().ok()?;
    Some(SocketAddrV4::new(host, port))
}

/// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, both needed as in client-go.
fn in_cluster_address(env: &impl Fn(&str) -> Option<String>) -> Result<ApiServerUrl, AccessError> {
    let set = |name| env(name).filter(|v| !v.is_empty());
    let host = set(SERVICE_HOST_VAR).ok_or(AccessError::NoAddress)?;
    let port = set(SERVICE_PORT_VAR).ok_or(AccessError::NoPort)?;
    let port: u16 = port
        .parse()
        .map_err(|_| AccessError::BadAddress(format!("port {port:?} is not a number")))?;
    ApiServerUrl::from_host_port(&host, port).map_err(AccessError::BadAddress)
}

/// The in-cluster configuration for `url`: the token and CA certificate from `dir`.
async fn in_cluster(url: &ApiServerUrl, dir: &Path) -> Result<Config, AccessError> {
    let token = dir.join(TOKEN_FILE);
    let ca = dir.join(CA_FILE);
    // Checked here so a missing file is named plainly, not deep in a TLS or auth error.
    let unreadable = |what, path: &Path| {
        let path = path.to_path_buf();
        move |error| AccessError::ServiceAccountFile { what, path, error }
    };
    let text = std::fs::read_to_string(&token).map_err(unreadable("token", &token))?;
    if text.trim().is_empty() {
        return Err(AccessError::EmptyToken(token));
    }
    std::fs::File::open(&ca).map_err(unreadable("CA certificate", &ca))?;

    // kube-rs reads both files itself: the token again whenever its minute is up.
    const NAME: &str = "in-cluster";
    let file = Kubeconfig {
        clusters: vec![NamedCluster {
            name: NAME.into(),
            cluster: Some(Cluster {
                server: Some(url.to_string()),
                certificate_authority: Some(ca.display().to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: NAME.into(),
            auth_info: Some(AuthInfo {
                token_file: Some(token.display().to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: NAME.into(),
            context: Some(Context {
                cluster: NAME.into(),
                user: Some(NAME.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(NAME.into()),
        ..Default::default()
    };
    let mut config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|source| AccessError::Kubeconfig {
            from: format!("the service account in {}", dir.display()),
            source,
        })?;
    // As kube-rs' own in-cluster configuration: the CA file is re-read too (CA rotation).
    config.root_cert_file = Some(ca);
    Ok(config)
}

#[cfg(test)]
mod tests;
