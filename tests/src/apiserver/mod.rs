//! An in-memory Kubernetes API server for tests: v1 Services, discovery.k8s.io/v1
//! EndpointSlices and v1 Nodes, served over HTTPS (HTTP/1.1) with the list/watch semantics
//! kube-runtime's watcher relies on.
//!
//! - Authentication as a real server does it ([`auth`]): a CA made for this server signs its
//!   certificate (subject alternative name: the IP clients dial), and every request must carry
//!   `Authorization: Bearer <token>`; anything else gets 401 with the real server's
//!   `Unauthorized` Status. Every request is recorded with what it presented
//!   ([`RequestRecord::credential`]).
//! - One global resourceVersion, bumped by every create, update, status update and delete.
//! - GET of one object; lists (all namespaces or one) with `labelSelector`, `fieldSelector`,
//!   `limit`/`continue` pagination (continuations show the first page's version),
//!   `resourceVersion` with `resourceVersionMatch` `NotOlderThan` (or unset) and `Exact`.
//! - `watch=true`: newline-delimited JSON events ADDED / MODIFIED / DELETED from the given
//!   resourceVersion (synthetic ADDED for the current state when it is unset or "0"), BOOKMARK
//!   events with `allowWatchBookmarks`, `sendInitialEvents=true` streaming lists ending in the
//!   `k8s.io/initial-events-end` bookmark, `timeoutSeconds` closing the stream, and objects
//!   entering or leaving a selector showing up as ADDED / DELETED.
//! - A bounded history of changes: a watch from a version older than the history gets a
//!   single ERROR event with a 410 Gone Status (HTTP 200, as the real server sends it), which
//!   makes clients relist; so does a continue token older than the history.
//!
//! Tests change objects through the in-process API ([`ApiServer::create`],
//! [`ApiServer::replace`], [`ApiServer::set_service_status`], [`ApiServer::delete`]) and
//! break things on purpose: [`ApiServer::compact`], [`ApiServer::drop_watches`],
//! [`ApiServer::stop`] / [`ApiServer::restart`] (an API outage, then the same address again).
//!
//! The listening socket is created inside a network namespace of the caller's choice
//! ([`ApiServer::start_in`]), so an agent in a test's node namespace reaches it on that
//! namespace's loopback; [`ApiServer::kubeconfig`] points clients at it with the CA and the
//! token, [`ApiServer::write_service_account`] writes them as the kubelet mounts a pod's
//! service account.

pub mod auth;
mod http;
pub mod objects;
mod resource;
mod selector;
mod store;
#[cfg(test)]
mod tests;

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Service, ServiceStatus};
use serde_json::{json, Value};
use tokio::{runtime::Runtime, task::JoinHandle};

pub use auth::Credential;
use auth::Credentials;
pub use resource::{Object, Resource};
use store::{Key, Store};

use crate::{error::io_context, netns::NetNs, Error, Result};

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct Options {
    /// Changes kept for watches to resume from; older starts get 410 Gone.
    pub history_limit: usize,
    /// How often watches that allow bookmarks get one (the real server: about a minute).
    pub bookmark_interval: Duration,
    /// The address it listens on in its namespace: 127.0.0.1, or 0.0.0.0 for every address
    /// of the namespace (clients then dial 127.0.0.1, or any address in `alt_names`).
    pub listen: Ipv4Addr,
    /// More addresses its certificate names besides 127.0.0.1, as a real API server's names
    /// the addresses it is reached at and the `kubernetes` Service's ClusterIP.
    pub alt_names: Vec<IpAddr>,
    /// Resources it answers 404 for, as a server of an older Kubernetes does.
    pub unserved: Vec<Resource>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(1),
            listen: Ipv4Addr::LOCALHOST,
            alt_names: Vec::new(),
            unserved: Vec::new(),
        }
    }
}

/// A failed API operation, with the HTTP code and Status reason the real server uses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn not_found(key: &Key) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} {:?} not found", key.resource.plural(), key.name),
        )
    }

    fn path_not_found(path: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    fn already_exists(key: &Key) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {:?} already exists", key.resource.plural(), key.name),
        )
    }

    fn conflict(key: &Key) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please \
                 apply your changes to the latest version and try again",
                key.resource.plural(),
                key.name
            ),
        )
    }

    fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    fn too_large_resource_version(asked: u64, current: u64) -> ApiError {
        ApiError::new(
            504,
            "Timeout",
            format!("Too large resource version: {asked}, current: {current}"),
        )
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    /// What the real server answers a request without valid credentials.
    fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported by this test server"),
        )
    }

    /// The error as a `v1` Status object.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// Query parameters, decoded, in order.
    pub params: Vec<(String, String)>,
    /// What its `Authorization` header presented (only [`Credential::Token`] is served).
    pub credential: Credential,
    /// The server's address the connection came in at (which one the client dialled, or
    /// what a translated Service address led to).
    pub local_addr: SocketAddr,
}

impl RequestRecord {
    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this was a watch (`watch=true`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch"), Some("true" | "1"))
    }

    /// Whether this was a list (a collection GET without `watch`) of `resource`.
    pub fn is_list_of(&self, resource: Resource) -> bool {
        !self.is_watch() && self.path.ends_with(&format!("/{}", resource.plural()))
    }
}

/// State shared by the in-process API and the HTTP handlers.
struct Shared {
    store: Mutex<Store>,
    requests: Mutex<Vec<RequestRecord>>,
    credentials: Credentials,
    /// Connections whose TLS handshake failed (e.g. a client that does not trust the CA).
    failed_handshakes: AtomicUsize,
    /// [`Options::unserved`].
    unserved: Vec<Resource>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, request: RequestRecord) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request);
    }
}

/// A running server; stops and removes its kubeconfig on drop.
pub struct ApiServer {
    shared: Arc<Shared>,
    options: Options,
    /// The namespace file the socket is bound in (`None`: the caller's namespace).
    netns: Option<PathBuf>,
    /// Where it listens (`Options::listen` and the port).
    bound: SocketAddr,
    /// Where clients dial it: `bound`, on 127.0.0.1 if that is 0.0.0.0.
    addr: SocketAddr,
    serving: Mutex<Option<JoinHandle<()>>>,
    kubeconfig: tempfile::TempDir,
    /// `None` only during drop.
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

/// How long [`ApiServer::stop`] waits for connections to close.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Name of the kubeconfig file.
const KUBECONFIG: &str = "kubeconfig";

impl ApiServer {
    /// Starts a server on [`Options::listen`] (a free port) of the caller's network namespace.
    pub fn start(options: Options) -> Result<ApiServer> {
        ApiServer::bind(None, options)
    }

    /// Starts a server on [`Options::listen`] (a free port) inside `netns`: clients in that
    /// namespace (an agent in a test's node namespace) reach it through its loopback.
    pub fn start_in(netns: &NetNs, options: Options) -> Result<ApiServer> {
        ApiServer::bind(Some(netns.path()), options)
    }

    fn bind(netns: Option<PathBuf>, options: Options) -> Result<ApiServer> {
        let mut names = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        names.extend(&options.alt_names);
        let credentials = Credentials::new(&names)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lb-tests-apiserver")
            .enable_all()
            .build()
            .map_err(io_context("cannot start the API server's runtime"))?;
        let listener = listen(
            netns.as_deref(),
            SocketAddrV4::new(options.listen, 0).into(),
        )?;
        let bound = listener
            .local_addr()
            .map_err(io_context("cannot read the API server's address"))?;
        let mut addr = bound;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let kubeconfig = tempfile::Builder::new()
            .prefix("lbt-apiserver-")
            .tempdir()
            .map_err(io_context("cannot create a directory for the kubeconfig"))?;
        let path = kubeconfig.path().join(KUBECONFIG);
        fs::write(&path, kubeconfig_yaml(addr, &credentials))
            .map_err(io_context(format!("cannot write {}", path.display())))?;
        let server = ApiServer {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::new(options.history_limit.max(1))),
                requests: Mutex::new(Vec::new()),
                credentials,
                failed_handshakes: AtomicUsize::new(0),
                unserved: options.unserved.clone(),
            }),
            options,
            netns,
            bound,
            addr,
            serving: Mutex::new(None),
            kubeconfig,
            runtime: Some(runtime),
        };
        server.serve(listener);
        Ok(server)
    }

    /// `https://<addr>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The address clients dial (inside its namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://<ip>:<port>`: the server at another of its namespace's addresses (one of
    /// [`Options::alt_names`], with [`Options::listen`] 0.0.0.0).
    pub fn url_at(&self, ip: IpAddr) -> String {
        format!("https://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// A kubeconfig file pointing at the server, with its CA (`certificate-authority-data`)
    /// and token, as an admin's kubeconfig from a real cluster has.
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.path().join(KUBECONFIG)
    }

    /// The CA that signed the server's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.shared.credentials.ca_pem()
    }

    /// The credentials clients need: the CA and the token.
    pub fn credentials(&self) -> &Credentials {
        &self.shared.credentials
    }

    /// The bearer token every request must carry.
    pub fn token(&self) -> &str {
        self.shared.credentials.token()
    }

    /// Writes `token`, `ca.crt` and `namespace` into `dir` as the kubelet mounts a pod's
    /// service account, for a client using its in-cluster configuration.
    pub fn write_service_account(&self, dir: &Path) -> Result<()> {
        self.shared.credentials.write_service_account(dir)
    }

    /// Connections whose TLS handshake failed so far.
    pub fn failed_handshakes(&self) -> usize {
        self.shared.failed_handshakes.load(Ordering::Relaxed)
    }

    /// Creates `object`; its `metadata.resourceVersion` is ignored, a missing namespace becomes
    /// `default`. Returns it as stored (with uid and resourceVersion).
    pub fn create<K: Object>(&self, object: &K) -> std::result::Result<K, ApiError> {
        let stored = self.shared.store().create(K::RESOURCE, to_value(object))?;
        Ok(from_value(&stored))
    }

    /// Replaces an existing object with `object`, status included; a non-empty
    /// `metadata.resourceVersion` must be the current one (409 Conflict otherwise).
    pub fn replace<K: Object>(&self, object: &K) -> std::result::Result<K, ApiError> {
        let stored = self.shared.store().replace(K::RESOURCE, to_value(object))?;
        Ok(from_value(&stored))
    }

    /// Creates `object`, or replaces it if it exists (ignoring its resourceVersion).
    pub fn apply<K: Object>(&self, object: &K) -> std::result::Result<K, ApiError> {
        let mut value = to_value(object);
        if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("resourceVersion");
        }
        let mut store = self.shared.store();
        let stored = match store.create(K::RESOURCE, value.clone()) {
            Err(e) if e.reason == "AlreadyExists" => store.replace(K::RESOURCE, value)?,
            other => other?,
        };
        Ok(from_value(&stored))
    }

    /// Sets the status of Service `namespace/name` (the `status` subresource), e.g. its
    /// LoadBalancer ingress addresses.
    pub fn set_service_status(
        &self,
        namespace: &str,
        name: &str,
        status: &ServiceStatus,
    ) -> std::result::Result<Service, ApiError> {
        let key = key::<Service>(namespace, name);
        let status = serde_json::to_value(status).expect("k8s-openapi types serialize");
        let stored = self.shared.store().replace_status(&key, status)?;
        Ok(from_value(&stored))
    }

    /// Deletes `namespace/name` (namespace "" for cluster-scoped kinds); returns its last state.
    /// An object with finalizers only gets its `metadata.deletionTimestamp`, as from a real
    /// API server, and goes once [`ApiServer::replace`] removes its last finalizer.
    pub fn delete<K: Object>(
        &self,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<K, ApiError> {
        let deleted = self.shared.store().delete(&key::<K>(namespace, name))?;
        Ok(from_value(&deleted))
    }

    /// The object `namespace/name` (namespace "" for cluster-scoped kinds).
    pub fn get<K: Object>(&self, namespace: &str, name: &str) -> Option<K> {
        let object = self.shared.store().get(&key::<K>(namespace, name))?;
        Some(from_value(&object))
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Forgets the change history: a watch or continuation from any earlier version gets
    /// 410 Gone and must relist.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Ends every open watch stream (as an API server restart or a load balancer in front of
    /// it would); clients resume from their last version. Returns how many were open.
    pub fn drop_watches(&self) -> usize {
        self.shared.store().drop_watches()
    }

    /// Watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.shared.store().open_watches()
    }

    /// ERROR events with code 410 Gone sent to watches so far.
    pub fn gone_sent(&self) -> usize {
        self.shared.store().gone_sent()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the server down (an API outage): closes the listening socket and every
    /// connection, so connects are refused and watches break. Objects can still be changed
    /// through the in-process API meanwhile.
    pub fn stop(&self) -> Result<()> {
        let Some(task) = self.serving_guard().take() else {
            return Ok(());
        };
        task.abort();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !task.is_finished() {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "the API server's connections to close".into(),
                    timeout: STOP_TIMEOUT,
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.shared.store().drop_watches();
        Ok(())
    }

    /// Brings a stopped server back on the same address.
    pub fn restart(&self) -> Result<()> {
        if self.serving_guard().is_some() {
            return Ok(());
        }
        let listener = listen(self.netns.as_deref(), self.bound)?;
        self.serve(listener);
        Ok(())
    }

    fn serving_guard(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.serving.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve(&self, listener: TcpListener) {
        let runtime = self.runtime.as_ref().expect("running");
        let task = runtime.spawn(accept_loop(
            listener,
            self.shared.clone(),
            self.options.bookmark_interval,
        ));
        *self.serving_guard() = Some(task);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("warning: stopping the API server: {err}");
        }
        // Does not block, so dropping inside another runtime (an async test) is fine.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Accepts connections and serves them until aborted; dropping the task drops (and so
/// closes) every connection. Also sends the periodic bookmarks.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, bookmark_interval: Duration) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("warning: the API server cannot listen: {err}");
            return;
        }
    };
    let mut connections = tokio::task::JoinSet::new();
    let mut bookmarks = tokio::time::interval(bookmark_interval);
    bookmarks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let Ok(local_addr) = stream.local_addr() else {
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let stream = match shared.credentials.acceptor().accept(stream).await {
                        Ok(stream) => stream,
                        Err(_) => {
                            shared.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    let service = service_fn(move |request| {
                        http::handle(shared.clone(), local_addr, request)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = bookmarks.tick() => shared.store().send_bookmarks(),
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Binds a TCP listener to `addr` inside the namespace `netns` (or here), on a thread that
/// entered it; the socket stays in that namespace.
fn listen(netns: Option<&Path>, addr: SocketAddr) -> Result<TcpListener> {
    let context = format!("cannot listen on {addr} for the API server");
    let Some(netns) = netns else {
        return TcpListener::bind(addr).map_err(io_context(context));
    };
    let file =
        fs::File::open(netns).map_err(io_context(format!("cannot open {}", netns.display())))?;
    thread::scope(|scope| {
        scope
            .spawn(|| {
                crate::netns::enter(&file)
                    .map_err(io_context(format!("cannot enter {}", netns.display())))?;
                TcpListener::bind(addr).map_err(io_context(context))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A kubeconfig for `https://addr` trusting the server's CA and presenting its token.
fn kubeconfig_yaml(addr: SocketAddr, credentials: &Credentials) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n  - name: lb-tests\n    cluster:\n      server: \
         https://{addr}\n      certificate-authority-data: {ca}\ncontexts:\n  - name: lb-tests\n    \
         context:\n      cluster: lb-tests\n      user: lb-tests\ncurrent-context: lb-tests\nusers:\n  \
         - name: lb-tests\n    user:\n      token: {token}\n",
        ca = credentials.ca_data(),
        token = credentials.token(),
    )
}

fn key<K: Object>(namespace: &str, name: &str) -> Key {
    let namespace = match (K::RESOURCE.namespaced(), namespace) {
        (true, "") => "default",
        (true, ns) => ns,
        (false, _) => "",
    };
    Key {
        resource: K::RESOURCE,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn to_value<K: Object>(object: &K) -> Value {
    serde_json::to_value(object).expect("k8s-openapi types serialize")
}

/// A stored object as its type; stored objects came from that type, so this cannot fail.
fn from_value<K: Object>(value: &Value) -> K {
    serde_json::from_value(value.clone()).expect("stored objects deserialize to their type")
}
