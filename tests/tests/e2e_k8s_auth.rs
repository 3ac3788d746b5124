//! End to end: the real `lb-agent` reaches its API server the way a pod does, over HTTPS with
//! the server's CA and a service account token, from in-cluster inputs only (the
//! `KUBERNETES_SERVICE_*` variables, a service account directory) and `LB_K8S_API_SERVER`,
//! never through an address it programs itself. The in-memory API server refuses requests
//! without the token with 401, as a real one does, and records what every request presented.

use std::{fs, net::SocketAddrV4, path::Path, time::Duration};

use lb_tests::{
    agent::READY_MARKER,
    apiserver::{
        auth::{CA_FILE, TOKEN_FILE},
        objects::service,
        Credential, RequestRecord, Resource,
    },
    cluster::{
        kube::{in_cluster, wait_for_backends, web_ports, AgentWait, KubeCluster, NAMESPACE},
        Protocol,
    },
    require_root, Error,
};

/// A ClusterIP that nothing answers: where `KUBERNETES_SERVICE_HOST` points in a cluster
/// without kube-proxy until the agent programs the `kubernetes` Service.
const UNPROGRAMMED_CLUSTER_IP: &str = "198.19.255.1";
/// kube-rs caches a token file for a minute; then the watchers' backoff (at most 30 s).
const TOKEN_RELOAD_TIMEOUT: Duration = Duration::from_secs(150);

/// Creates the Service `web` (ClusterIP 198.19.0.10) with backends 0 and 1, and waits until
/// a client pod reaches both through it.
fn web_reaches_its_pods(cluster: &KubeCluster) {
    let api = cluster.api();
    let vip = [198, 19, 0, 10].into();
    api.create(&service(NAMESPACE, "web", vip, web_ports()))
        .unwrap();
    api.create(&cluster.web_slice("web", &[0, 1])).unwrap();
    let client = &cluster.client().netns;
    let http = SocketAddrV4::new(vip, 80);
    wait_for_backends("web is programmed", client, Protocol::Tcp, http, &[0, 1]);
}

/// Replaces `path` the way the kubelet updates a projected token: a new file renamed over it.
fn replace_file(path: &Path, contents: &str) {
    let new = path.with_extension("new");
    fs::write(&new, contents).unwrap();
    fs::rename(&new, path).unwrap();
}

/// Whether the agent's watchers each listed their resource (ServiceCIDRs too).
fn listed_everything(requests: &[RequestRecord]) -> bool {
    Resource::ALL
        .into_iter()
        .all(|resource| requests.iter().any(|r| r.is_list_of(resource)))
}

#[test]
fn the_agent_uses_the_explicit_address_and_the_service_account_and_every_request_has_the_token() {
    require_root!();
    let account = tempfile::tempdir().unwrap();
    let cluster = KubeCluster::start_with(2, AgentWait::Ready, |api, options| {
        api.write_service_account(account.path())?;
        let url = api.url();
        let env = [
            ("KUBERNETES_SERVICE_HOST", UNPROGRAMMED_CLUSTER_IP),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("LB_K8S_API_SERVER", url.as_str()),
        ];
        in_cluster(options, account.path(), &env);
        Ok(())
    })
    .unwrap();
    let log = cluster.agent().log();
    let url = cluster.api().url();
    // Not the ClusterIP: nothing translates the agent's own sockets here (--no-socket-lb).
    assert!(
        log.contains(&format!(
            "kubernetes API server: {url}/ (the explicit address; not the kubernetes Service \
             {UNPROGRAMMED_CLUSTER_IP}:443: socket-level translation is off)"
        )),
        "{log}"
    );

    web_reaches_its_pods(&cluster);
    let requests = cluster.api().requests();
    assert!(listed_everything(&requests), "{requests:#?}");
    assert!(requests.iter().any(RequestRecord::is_watch));
    let without: Vec<&RequestRecord> = requests
        .iter()
        .filter(|r| r.credential != Credential::Token)
        .collect();
    assert!(
        without.is_empty(),
        "requests without the token: {without:#?}"
    );
    assert_eq!(cluster.api().failed_handshakes(), 0);
    eprintln!(
        "{} requests, every one with the service account token",
        requests.len()
    );
}

#[test]
fn a_wrong_token_is_reported_as_401_and_retried_until_the_token_file_is_fixed() {
    require_root!();
    let account = tempfile::tempdir().unwrap();
    let token = account.path().join(TOKEN_FILE);
    let cluster = KubeCluster::start_with(2, AgentWait::Serving, |api, options| {
        api.write_service_account(account.path())?;
        replace_file(&token, "not-the-token");
        // Plain in-cluster: the address only from the variables.
        let (host, port) = (api.addr().ip().to_string(), api.addr().port().to_string());
        let env = [
            ("KUBERNETES_SERVICE_HOST", host.as_str()),
            ("KUBERNETES_SERVICE_PORT", port.as_str()),
        ];
        in_cluster(options, account.path(), &env);
        Ok(())
    });
    let mut cluster = cluster.unwrap();
    let refused = "401 Unauthorized: the API server rejected the agent's credentials";

    // Each of the three watchers reports the refusal, and retries.
    let agent = cluster.agent_mut();
    agent
        .wait_for_log(refused, 6, Duration::from_secs(30))
        .unwrap();
    assert!(!agent.log().contains(READY_MARKER), "{}", agent.log());
    assert!(
        agent.exit_status().unwrap().is_none(),
        "the agent keeps running"
    );
    let api = cluster.api();
    let before_fix = api.requests();
    assert!(before_fix
        .iter()
        .all(|r| r.credential == Credential::Rejected));

    replace_file(&token, cluster.api().token());
    let fixed = std::time::Instant::now();
    cluster
        .agent_mut()
        .wait_for_log(READY_MARKER, 1, TOKEN_RELOAD_TIMEOUT)
        .unwrap();
    eprintln!(
        "the agent synced {:?} after the token file was fixed",
        fixed.elapsed()
    );
    web_reaches_its_pods(&cluster);
    let api = cluster.api();
    let after_fix = &api.requests()[before_fix.len()..];
    // Requests already waiting for their retry may still carry the old token; once the new
    // one is read, every request has it.
    let first_ok = after_fix
        .iter()
        .position(|r| r.credential == Credential::Token)
        .expect("requests with the fixed token");
    assert!(after_fix[first_ok..]
        .iter()
        .all(|r| r.credential == Credential::Token));
    assert!(listed_everything(&after_fix[first_ok..]));
}

#[test]
fn a_missing_token_or_ca_stops_the_agent_with_one_line_naming_the_file() {
    require_root!();
    for missing in [TOKEN_FILE, CA_FILE] {
        let account = tempfile::tempdir().unwrap();
        let result = KubeCluster::start_with(0, AgentWait::Serving, |api, options| {
            api.write_service_account(account.path())?;
            fs::remove_file(account.path().join(missing)).unwrap();
            let url = api.url();
            in_cluster(options, account.path(), &[("LB_K8S_API_SERVER", &url)]);
            Ok(())
        });
        let Err(Error::AgentExited { log, .. }) = result else {
            panic!("the agent started without {missing}");
        };
        let path = account.path().join(missing).display().to_string();
        let line = log
            .lines()
            .find(|line| line.contains(&path))
            .unwrap_or_else(|| panic!("no line names {path}:\n{log}"));
        assert!(
            line.contains("No such file or directory")
                && line.contains("LB_K8S_SERVICE_ACCOUNT_DIR"),
            "{line}"
        );
    }
}
