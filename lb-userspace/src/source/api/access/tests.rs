use std::collections::BTreeMap;
use std::fs;

use super::*;

/// A PEM block kube-rs accepts as a CA bundle when building the configuration (the
/// certificate itself is only parsed when a client is created).
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

/// A service account directory with `token` and `ca.crt` as given (`None`: no such file).
fn service_account(token: Option<&str>, ca: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(token) = token {
        fs::write(dir.path().join(TOKEN_FILE), token).unwrap();
    }
    if let Some(ca) = ca {
        fs::write(dir.path().join(CA_FILE), ca).unwrap();
    }
    dir
}

fn in_cluster_access(dir: &Path, api_server: Option<&str>) -> ApiAccess {
    ApiAccess {
        kubeconfig: None,
        api_server: api_server.map(|url| url.parse().unwrap()),
        service_account_dir: dir.to_path_buf(),
    }
}

#[test]
fn api_server_urls_are_https_with_a_host_and_nothing_else() {
    for (text, shown) in [
        ("https://198.18.0.1:6443", "https://198.18.0.1:6443"),
        ("https://198.18.0.1:6443/", "https://198.18.0.1:6443"),
        ("https://[2001:2::1]:6443", "https://[2001:2::1]:6443"),
        ("https://api.example.test", "https://api.example.test"),
    ] {
        let url: ApiServerUrl = text.parse().unwrap();
        assert_eq!(url.to_string(), shown, "{text}");
    }
    for text in [
        "http://198.18.0.1:8080",
        "198.18.0.1:6443",
        "https://198.18.0.1:6443/api",
        "https://198.18.0.1:6443?x=1",
        "https://user@198.18.0.1:6443",
        "https://",
        "",
    ] {
        assert!(
            text.parse::<ApiServerUrl>().is_err(),
            "{text:?} was accepted"
        );
    }
    let v6 = ApiServerUrl::from_host_port("2001:2::1", 443).unwrap();
    assert_eq!(v6.to_string(), "https://[2001:2::1]:443");
}

#[test]
fn the_in_cluster_address_needs_host_and_port() {
    let address = |vars: &[(&str, &str)]| in_cluster_address(&env(vars));
    let url = address(&[(SERVICE_HOST_VAR, "198.18.0.1"), (SERVICE_PORT_VAR, "6443")]).unwrap();
    assert_eq!(url.to_string(), "https://198.18.0.1:6443");
    assert!(matches!(address(&[]), Err(AccessError::NoAddress)));
    let no_port = address(&[(SERVICE_HOST_VAR, "198.18.0.1")]).unwrap_err();
    assert!(matches!(no_port, AccessError::NoPort));
    assert!(
        no_port.to_string().contains("--k8s-api-server"),
        "{no_port}"
    );
    let bad = address(&[
        (SERVICE_HOST_VAR, "198.18.0.1"),
        (SERVICE_PORT_VAR, "https"),
    ]);
    assert!(matches!(bad, Err(AccessError::BadAddress(_))));
}

#[tokio::test]
async fn the_flag_overrides_the_in_cluster_variables_and_the_files_are_kube_rs_own() {
    let dir = service_account(Some("secret\n"), Some(CA_PEM));
    let vars = env(&[(SERVICE_HOST_VAR, "198.19.0.1"), (SERVICE_PORT_VAR, "443")]);
    let plain = config_from(&in_cluster_access(dir.path(), None), &vars)
        .await
        .unwrap();
    assert_eq!(plain.cluster_url.to_string(), "https://198.19.0.1:443/");
    let access = in_cluster_access(dir.path(), Some("https://198.18.0.1:6443"));
    let config = config_from(&access, &vars).await.unwrap();
    assert_eq!(config.cluster_url.to_string(), "https://198.18.0.1:6443/");
    // Files, not their contents: kube-rs re-reads them (token and CA rotation).
    let token = dir.path().join(TOKEN_FILE).display().to_string();
    assert_eq!(config.auth_info.token_file, Some(token));
    assert_eq!(config.root_cert_file, Some(dir.path().join(CA_FILE)));
    assert_eq!(config.root_cert.map(|c| c.len()), Some(1));
    assert!(!config.accept_invalid_certs);
    // The flag alone is enough: no variables needed.
    assert!(config_from(&access, &env(&[])).await.is_ok());
}

#[tokio::test]
async fn a_missing_token_or_ca_is_one_line_naming_the_file() {
    let vars = env(&[(SERVICE_HOST_VAR, "198.18.0.1"), (SERVICE_PORT_VAR, "6443")]);
    for (dir, missing) in [
        (service_account(None, Some(CA_PEM)), TOKEN_FILE),
        (service_account(Some("secret"), None), CA_FILE),
    ] {
        let error = config_from(&in_cluster_access(dir.path(), None), &vars)
            .await
            .unwrap_err();
        let text = error.to_string();
        let path = dir.path().join(missing).display().to_string();
        assert!(text.contains(&path), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
        assert!(text.contains("--k8s-service-account-dir"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(
            std::error::Error::source(&error).is_none(),
            "all in one line"
        );
    }
    let empty = service_account(Some(" \n"), Some(CA_PEM));
    let error = config_from(&in_cluster_access(empty.path(), None), &vars)
        .await
        .unwrap_err();
    assert!(matches!(error, AccessError::EmptyToken(_)), "{error}");
}

#[tokio::test]
async fn the_flag_overrides_the_kubeconfig_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n  - name: c\n    cluster:\n      server: \
         https://198.19.0.1:443\ncontexts:\n  - name: c\n    context:\n      cluster: c\n      \
         user: u\ncurrent-context: c\nusers:\n  - name: u\n    user:\n      token: t\n",
    )
    .unwrap();
    let mut access = ApiAccess {
        kubeconfig: Some(path),
        ..ApiAccess::default()
    };
    let config = config_from(&access, &env(&[])).await.unwrap();
    assert_eq!(config.cluster_url.to_string(), "https://198.19.0.1:443/");
    access.api_server = Some("https://198.18.0.1:6443".parse().unwrap());
    let config = config_from(&access, &env(&[])).await.unwrap();
    assert_eq!(config.cluster_url.to_string(), "https://198.18.0.1:6443/");
}

#[test]
fn the_kubernetes_service_is_an_alternative_only_in_cluster_beside_an_explicit_address() {
    let vars = [(SERVICE_HOST_VAR, "198.19.0.1"), (SERVICE_PORT_VAR, "443")];
    let dir = tempfile::tempdir().unwrap();
    let explicit = in_cluster_access(dir.path(), Some("https://198.18.0.1:6443"));
    assert_eq!(
        kubernetes_service_from(&explicit, env(&vars)),
        Some("198.19.0.1:443".parse().unwrap())
    );
    // Without the flag the variables already are the address.
    let plain = in_cluster_access(dir.path(), None);
    assert_eq!(kubernetes_service_from(&plain, env(&vars)), None);
    // A kubeconfig names its own server.
    let kubeconfig = ApiAccess {
        kubeconfig: Some(dir.path().join("kubeconfig")),
        ..explicit.clone()
    };
    assert_eq!(kubernetes_service_from(&kubeconfig, env(&vars)), None);
    let with_env = [vars[0], vars[1], ("KUBECONFIG", "/k")];
    assert_eq!(kubernetes_service_from(&explicit, env(&with_env)), None);
    // Only an IPv4 address and a port are served by the data path.
    for bad in [
        [(SERVICE_HOST_VAR, "kubernetes.default"), vars[1]],
        [(SERVICE_HOST_VAR, "2001:2::1"), vars[1]],
        [vars[0], (SERVICE_PORT_VAR, "https")],
    ] {
        assert_eq!(
            kubernetes_service_from(&explicit, env(&bad)),
            None,
            "{bad:?}"
        );
    }
    assert_eq!(kubernetes_service_from(&explicit, env(&vars[..1])), None);
}
