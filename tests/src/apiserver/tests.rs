//! The server's semantics through real HTTPS requests (a minimal HTTP/1.1 client over
//! rustls below), and kube-runtime's watcher against it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, Service, ServiceStatus,
};
use serde_json::Value;
use tokio_rustls::rustls::{
    crypto::ring, pki_types::ServerName, ClientConfig, ClientConnection, RootCertStore, StreamOwned,
};

use super::{objects::*, ApiServer, Credential, Options};
use crate::cluster::Protocol;

const TIMEOUT: Duration = Duration::from_secs(5);

fn server() -> ApiServer {
    ApiServer::start(Options::default()).unwrap()
}

fn web(namespace: &str, name: &str, last_octet: u8) -> Service {
    let ports = vec![service_port("http", Protocol::Tcp, 80, 8080)];
    service(namespace, name, [198, 19, 0, last_octet].into(), ports)
}

/// A TLS connection to a server.
type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A response: status code and body reader positioned after the headers.
struct Response {
    status: u16,
    chunked: bool,
    length: Option<usize>,
    reader: BufReader<Tls>,
}

/// Connects to `server` over TLS, trusting `ca` (the server's own CA: `None`) and checking
/// the certificate against `name` (the address dialled: `None`).
fn connect_as(
    server: &ApiServer,
    ca: Option<&ApiServer>,
    name: Option<ServerName<'static>>,
) -> std::io::Result<Tls> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.unwrap_or(server).credentials().ca_der().clone())
        .unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = name.unwrap_or(ServerName::IpAddress(server.addr().ip().into()));
    let connection = ClientConnection::new(Arc::new(config), name).unwrap();
    let stream = TcpStream::connect_timeout(&server.addr(), TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut tls = StreamOwned::new(connection, stream);
    // Completes the handshake now, so a refused certificate fails here.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Sends `method path` with `authorization` (if any) and reads the status and headers.
fn request(server: &ApiServer, method: &str, path: &str, authorization: Option<&str>) -> Response {
    let mut stream = connect_as(server, None, None).unwrap();
    let addr = server.addr();
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
    )
    .unwrap();
    stream.flush().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let (mut chunked, mut length) = (false, None);
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        chunked |= header == "transfer-encoding: chunked";
        if let Some(n) = header.strip_prefix("content-length: ") {
            length = Some(n.parse().unwrap());
        }
    }
    Response {
        status,
        chunked,
        length,
        reader,
    }
}

/// GETs `path` with the server's token, as every client in a cluster would.
fn send(server: &ApiServer, path: &str) -> Response {
    let bearer = format!("Bearer {}", server.token());
    request(server, "GET", path, Some(&bearer))
}

impl Response {
    /// The whole body as JSON.
    fn json(mut self) -> Value {
        let mut body = Vec::new();
        if self.chunked {
            while let Some(chunk) = self.chunk() {
                body.extend(chunk);
            }
        } else {
            body.resize(self.length.expect("content-length"), 0);
            self.reader.read_exact(&mut body).unwrap();
        }
        serde_json::from_slice(&body).unwrap()
    }

    /// The next chunk of a chunked body; `None` at its end.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut size = String::new();
        self.reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).ok()?;
        chunk.truncate(size);
        (size > 0).then_some(chunk)
    }

    /// Watch events until the stream ends or `count` arrived.
    fn events(&mut self, count: usize) -> Vec<Value> {
        assert!(self.chunked, "a watch streams a chunked body");
        let mut events = Vec::new();
        let mut pending = Vec::new();
        while events.len() < count {
            let Some(chunk) = self.chunk() else { break };
            pending.extend(chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                events.push(serde_json::from_slice(&line).unwrap());
            }
        }
        events
    }
}

fn get(server: &ApiServer, path: &str) -> (u16, Value) {
    let response = send(server, path);
    (response.status, response.json())
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect()
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// `(type, name)` of watch events.
fn summary(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            let name = e["object"]["metadata"]["name"].as_str().unwrap_or("");
            (e["type"].as_str().unwrap().to_string(), name.to_string())
        })
        .collect()
}

#[test]
fn objects_get_increasing_versions_and_lists_show_the_latest() {
    let server = server();
    let start = server.resource_version();
    let a = server.create(&web("ns1", "a", 1)).unwrap();
    let b = server.create(&web("ns2", "b", 2)).unwrap();
    let node = server
        .create(&node("node-a", [198, 18, 1, 1].into()))
        .unwrap();
    let versions: Vec<u64> = [&a.metadata, &b.metadata, &node.metadata]
        .iter()
        .map(|m| m.resource_version.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(versions, [start + 1, start + 2, start + 3]);
    assert!(a.metadata.uid.is_some() && a.metadata.uid != b.metadata.uid);
    assert_eq!(server.create(&web("ns1", "a", 1)).unwrap_err().code, 409);

    let (status, all) = get(&server, "/api/v1/services");
    assert_eq!((status, names(&all)), (200, vec!["a", "b"]));
    assert_eq!(all["kind"], "ServiceList");
    assert_eq!(all["metadata"]["resourceVersion"], (start + 3).to_string());
    assert!(
        all["items"][0].get("kind").is_none(),
        "list items carry no kind"
    );
    let (_, ns2) = get(&server, "/api/v1/namespaces/ns2/services");
    assert_eq!(names(&ns2), ["b"]);

    let (status, one) = get(&server, "/api/v1/namespaces/ns1/services/a");
    assert_eq!(
        (status, one["kind"].as_str(), rv(&one)),
        (200, Some("Service"), start + 1)
    );
    let (status, missing) = get(&server, "/api/v1/namespaces/ns2/services/a");
    assert_eq!(
        (status, missing["kind"].as_str(), missing["reason"].as_str()),
        (404, Some("Status"), Some("NotFound"))
    );
    let (status, _) = get(&server, "/api/v1/nodes/node-a");
    assert_eq!(status, 200);
    let (status, _) = get(&server, "/api/v1/pods");
    assert_eq!(status, 404);

    // An update that changes nothing keeps the version; a stale version conflicts.
    assert_eq!(
        server.replace(&a).unwrap().metadata.resource_version,
        a.metadata.resource_version
    );
    let mut changed = a.clone();
    spec_mut(&mut changed).external_ips = Some(vec!["198.19.1.1".into()]);
    let changed = server.replace(&changed).unwrap();
    assert_eq!(rv(&serde_json::to_value(&changed).unwrap()), start + 4);
    assert_eq!(server.replace(&a).unwrap_err().code, 409);
    let status = ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some("198.19.2.1".into()),
                ..LoadBalancerIngress::default()
            }]),
        }),
        ..ServiceStatus::default()
    };
    let with_status = server.set_service_status("ns1", "a", &status).unwrap();
    assert_eq!(with_status.status, Some(status));
    assert_eq!(server.resource_version(), start + 5);
    assert_eq!(
        server
            .delete::<Node>("", "node-a")
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("node-a")
    );
    assert_eq!(server.delete::<Node>("", "node-a").unwrap_err().code, 404);
    assert!(server.get::<Node>("", "node-a").is_none());
}

#[test]
fn an_object_with_finalizers_is_marked_deleted_until_its_last_finalizer_goes() {
    let server = server();
    let mut draining = node("node-a", [198, 18, 1, 1].into());
    draining.metadata.finalizers = Some(vec!["example.com/drain".into()]);
    // A deletion timestamp cannot be set by an update, only by a delete.
    draining.metadata.deletion_timestamp =
        Some(serde_json::from_value(Value::String("2024-01-01T00:00:00Z".into())).unwrap());
    let created = server.create(&draining).unwrap();
    let created = server.replace(&created).unwrap();
    assert!(created.metadata.deletion_timestamp.is_none());

    let marked = server.delete::<Node>("", "node-a").unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some(), "{marked:?}");
    assert_eq!(server.get::<Node>("", "node-a"), Some(marked.clone()));
    // Deleting again changes nothing.
    let version = server.resource_version();
    assert_eq!(server.delete::<Node>("", "node-a").unwrap(), marked);
    assert_eq!(server.resource_version(), version);

    let mut finalized = marked.clone();
    finalized.metadata.finalizers = None;
    server.replace(&finalized).unwrap();
    assert!(server.get::<Node>("", "node-a").is_none());
}

#[test]
fn selectors_filter_lists() {
    let server = server();
    let mut other_proxy = web("ns", "other-proxy", 1);
    other_proxy.metadata.labels =
        Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "x".to_string())].into());
    server.create(&other_proxy).unwrap();
    server.create(&web("ns", "mine", 2)).unwrap();
    server
        .create(&node("node-a", [198, 18, 1, 1].into()))
        .unwrap();
    server
        .create(&node("node-b", [198, 18, 1, 2].into()))
        .unwrap();

    let (_, mine) = get(
        &server,
        "/api/v1/services?labelSelector=%21service.kubernetes.io%2Fservice-proxy-name",
    );
    assert_eq!(names(&mine), ["mine"]);
    let (_, theirs) = get(
        &server,
        "/api/v1/services?labelSelector=service.kubernetes.io%2Fservice-proxy-name%3Dx",
    );
    assert_eq!(names(&theirs), ["other-proxy"]);
    let (_, node) = get(
        &server,
        "/api/v1/nodes?fieldSelector=metadata.name%3Dnode-b",
    );
    assert_eq!(names(&node), ["node-b"]);
    let (status, error) = get(
        &server,
        "/api/v1/nodes?fieldSelector=spec.unschedulable%3Dtrue",
    );
    assert_eq!(
        (status, error["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    let (status, _) = get(&server, "/api/v1/services?labelSelector=a%3D%28");
    assert_eq!(status, 400);
}

#[test]
fn pages_show_the_first_pages_version_until_the_history_is_gone() {
    let server = server();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        server.create(&web("ns", name, i as u8 + 1)).unwrap();
    }
    let (_, first) = get(&server, "/api/v1/services?limit=2");
    assert_eq!(names(&first), ["a", "b"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 1);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let version = first["metadata"]["resourceVersion"].clone();

    // Changes after the first page do not show in its continuation.
    server.delete::<Service>("ns", "c").unwrap();
    server.create(&web("ns", "d", 4)).unwrap();
    let next = format!("/api/v1/services?limit=2&continue={token}");
    let (status, second) = get(&server, &next);
    assert_eq!((status, names(&second)), (200, vec!["c"]));
    assert_eq!(second["metadata"]["resourceVersion"], version);
    assert!(second["metadata"].get("continue").is_none());

    let (status, _) = get(&server, &format!("{next}&resourceVersion=1"));
    assert_eq!(status, 400, "continue with a resourceVersion is refused");
    server.compact();
    let (status, gone) = get(&server, &next);
    assert_eq!((status, gone["reason"].as_str()), (410, Some("Expired")));
    let (_, fresh) = get(&server, "/api/v1/services?limit=500");
    assert_eq!(names(&fresh), ["a", "b", "d"]);
}

#[test]
fn exact_lists_show_history_and_newer_versions_wait_for_nobody() {
    let server = server();
    let a = server.create(&web("ns", "a", 1)).unwrap();
    let at_a: u64 = a.metadata.resource_version.unwrap().parse().unwrap();
    server.create(&web("ns", "b", 2)).unwrap();
    server.delete::<Service>("ns", "a").unwrap();

    let (status, then) = get(
        &server,
        &format!("/api/v1/services?resourceVersion={at_a}&resourceVersionMatch=Exact"),
    );
    assert_eq!((status, names(&then)), (200, vec!["a"]));
    let (_, now) = get(
        &server,
        &format!("/api/v1/services?resourceVersion={at_a}&resourceVersionMatch=NotOlderThan"),
    );
    assert_eq!(names(&now), ["b"]);
    let (_, any) = get(
        &server,
        "/api/v1/services?resourceVersion=0&resourceVersionMatch=NotOlderThan",
    );
    assert_eq!(names(&any), ["b"]);
    let (status, _) = get(&server, "/api/v1/services?resourceVersionMatch=Exact");
    assert_eq!(status, 400);
    let future = server.resource_version() + 10;
    let (status, _) = get(
        &server,
        &format!("/api/v1/services?resourceVersion={future}"),
    );
    assert_eq!(status, 504);

    server.compact();
    let (status, gone) = get(
        &server,
        &format!("/api/v1/services?resourceVersion={at_a}&resourceVersionMatch=Exact"),
    );
    assert_eq!((status, gone["code"].as_u64()), (410, Some(410)));
}

#[test]
fn watches_replay_history_in_order_and_follow_selectors() {
    let server = server();
    let a = server.create(&web("ns", "a", 1)).unwrap();
    let from = a.metadata.resource_version.clone().unwrap();
    server.create(&web("ns", "b", 2)).unwrap();
    let path = format!(
        "/api/v1/services?watch=true&resourceVersion={from}&labelSelector=%21{}",
        SERVICE_PROXY_NAME_LABEL.replace('/', "%2F")
    );
    let mut watch = send(&server, &path);
    assert_eq!(watch.status, 200);
    let replayed = watch.events(1);
    assert_eq!(summary(&replayed), [("ADDED".into(), "b".into())]);

    // Live changes: leaving the selection is a DELETED, entering it an ADDED.
    let mut handed_over = server.get::<Service>("ns", "b").unwrap();
    handed_over.metadata.labels =
        Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "x".to_string())].into());
    server.replace(&handed_over).unwrap();
    handed_over.metadata.labels = None;
    handed_over.metadata.resource_version = None;
    server.replace(&handed_over).unwrap();
    let mut a = server.get::<Service>("ns", "a").unwrap();
    spec_mut(&mut a).external_ips = Some(vec!["198.19.1.1".into()]);
    server.replace(&a).unwrap();
    server.delete::<Service>("ns", "a").unwrap();
    let live = watch.events(4);
    assert_eq!(
        summary(&live),
        [
            ("DELETED".into(), "b".into()),
            ("ADDED".into(), "b".into()),
            ("MODIFIED".into(), "a".into()),
            ("DELETED".into(), "a".into()),
        ]
    );
    let versions: Vec<u64> = replayed
        .iter()
        .chain(&live)
        .map(|e| rv(&e["object"]))
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert_eq!(*versions.last().unwrap(), server.resource_version());
    assert_eq!(
        live[3]["object"]["kind"], "Service",
        "watch objects carry their kind"
    );
}

#[test]
fn a_watch_from_before_the_history_gets_410_gone() {
    let server = server();
    let a = server.create(&web("ns", "a", 1)).unwrap();
    server.create(&web("ns", "b", 2)).unwrap();
    server.compact();
    let from = a.metadata.resource_version.unwrap();
    let mut watch = send(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={from}"),
    );
    assert_eq!(
        watch.status, 200,
        "the real server reports 410 inside the stream"
    );
    let events = watch.events(2);
    assert_eq!(
        events.len(),
        1,
        "the stream ends after the error: {events:?}"
    );
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    assert_eq!(server.gone_sent(), 1);

    // From the current version a watch works again.
    let now = server.resource_version();
    let mut watch = send(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={now}"),
    );
    server.delete::<Service>("ns", "b").unwrap();
    assert_eq!(summary(&watch.events(1)), [("DELETED".into(), "b".into())]);
}

#[test]
fn a_bounded_history_expires_old_versions_by_itself() {
    let server = ApiServer::start(Options {
        history_limit: 2,
        ..Options::default()
    })
    .unwrap();
    let first = server.resource_version();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        server.create(&web("ns", name, i as u8 + 1)).unwrap();
    }
    let mut too_old = send(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={first}"),
    );
    assert_eq!(too_old.events(1)[0]["object"]["code"], 410);
    let mut kept = send(
        &server,
        &format!("/api/v1/services?watch=true&resourceVersion={}", first + 1),
    );
    assert_eq!(
        summary(&kept.events(2)),
        [("ADDED".into(), "b".into()), ("ADDED".into(), "c".into())]
    );
}

#[test]
fn watches_end_at_their_timeout_and_send_bookmarks() {
    let server = ApiServer::start(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    })
    .unwrap();
    server
        .create(&node("node-a", [198, 18, 1, 1].into()))
        .unwrap();
    let now = server.resource_version();
    let started = Instant::now();
    let path = format!(
        "/api/v1/nodes?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion={now}"
    );
    let mut watch = send(&server, &path);
    let events = watch.events(usize::MAX);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        !events.is_empty() && events.iter().all(|e| e["type"] == "BOOKMARK"),
        "{events:?}"
    );
    assert_eq!(events[0]["object"]["kind"], "Node");
    assert_eq!(
        events[0]["object"]["metadata"]["resourceVersion"],
        now.to_string()
    );

    // Without allowWatchBookmarks, nothing but changes.
    let mut quiet = send(
        &server,
        &format!("/api/v1/nodes?watch=true&timeoutSeconds=1&resourceVersion={now}"),
    );
    assert!(quiet.events(usize::MAX).is_empty());
}

#[test]
fn streaming_lists_end_with_the_initial_events_bookmark() {
    let server = server();
    server
        .create(&node("node-a", [198, 18, 1, 1].into()))
        .unwrap();
    server
        .create(&node("node-b", [198, 18, 1, 2].into()))
        .unwrap();
    let base =
        "/api/v1/nodes?watch=true&sendInitialEvents=true&fieldSelector=metadata.name%3Dnode-b";
    let (status, _) = get(&server, &format!("{base}&allowWatchBookmarks=true"));
    assert_eq!(
        status, 422,
        "sendInitialEvents needs resourceVersionMatch=NotOlderThan"
    );
    let mut watch = send(
        &server,
        &format!(
            "{base}&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"
        ),
    );
    let events = watch.events(2);
    assert_eq!(summary(&events)[0], ("ADDED".into(), "node-b".into()));
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(rv(&events[1]["object"]), server.resource_version());
}

#[test]
fn dropped_watches_end_and_a_restarted_server_keeps_its_address_and_objects() {
    let server = server();
    server.create(&web("ns", "a", 1)).unwrap();
    let mut watch = send(&server, "/api/v1/services?watch=true");
    assert_eq!(summary(&watch.events(1)), [("ADDED".into(), "a".into())]);
    let deadline = Instant::now() + TIMEOUT;
    while server.open_watches() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.drop_watches(), 1);
    assert!(watch.events(1).is_empty(), "the dropped stream ends");

    let mut broken = send(&server, "/api/v1/services?watch=true");
    broken.events(1);
    server.stop().unwrap();
    assert!(broken.events(1).is_empty(), "an outage breaks open watches");
    let refused = TcpStream::connect_timeout(&server.addr(), TIMEOUT).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    server.create(&web("ns", "b", 2)).unwrap();
    server.restart().unwrap();
    let (_, list) = get(&server, "/api/v1/services");
    assert_eq!(names(&list), ["a", "b"]);
    assert!(server.requests().iter().filter(|r| r.is_watch()).count() >= 2);
}

#[test]
fn non_get_methods_are_refused() {
    let server = server();
    let bearer = format!("Bearer {}", server.token());
    let path = "/api/v1/namespaces/ns/services/a";
    let reply = request(&server, "DELETE", path, Some(&bearer));
    assert_eq!(reply.status, 405);
}

/// As a real API server without anonymous access: without `Authorization: Bearer <token>`
/// nothing is served, not even `/version`, and the answer is the real server's 401 Status.
#[test]
fn requests_without_the_token_get_401_unauthorized() {
    let server = server();
    server.create(&web("ns", "a", 1)).unwrap();
    let token = server.token().to_string();
    let wrong = format!("Bearer {token}x");
    let basic = format!("Basic {token}");
    for path in [
        "/api/v1/services",
        "/api/v1/namespaces/ns/services/a",
        "/version",
    ] {
        for authorization in [None, Some(wrong.as_str()), Some(basic.as_str())] {
            let reply = request(&server, "GET", path, authorization);
            assert_eq!(reply.status, 401, "{path} with {authorization:?}");
            assert_eq!(
                reply.json(),
                serde_json::json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": "Unauthorized",
                    "reason": "Unauthorized",
                    "code": 401,
                })
            );
        }
    }
    // The scheme is case-insensitive, the token is not.
    let lower = format!("bearer {token}");
    assert_eq!(
        request(&server, "GET", "/version", Some(&lower)).status,
        200
    );
    let upper = format!("Bearer {}", token.to_uppercase());
    assert_eq!(
        request(&server, "GET", "/version", Some(&upper)).status,
        401
    );
    let credentials: Vec<Credential> = server.requests().iter().map(|r| r.credential).collect();
    let mut expected = [
        Credential::Missing,
        Credential::Rejected,
        Credential::Rejected,
    ]
    .repeat(3);
    expected.extend([Credential::Token, Credential::Rejected]);
    assert_eq!(credentials, expected);
}

/// The certificate is the server's own, signed by its CA, for the address dialled: a client
/// trusting another CA, or expecting another name, fails the handshake.
#[test]
fn clients_trust_the_server_through_its_ca_and_address() {
    let server = server();
    let other = self::server();
    assert_ne!(server.ca_pem(), other.ca_pem());
    assert!(connect_as(&server, None, None).is_ok());
    let untrusted = connect_as(&server, Some(&other), None).unwrap_err();
    assert_eq!(
        untrusted.kind(),
        std::io::ErrorKind::InvalidData,
        "{untrusted}"
    );
    let name = ServerName::try_from("kubernetes.default.svc").unwrap();
    let misnamed = connect_as(&server, None, Some(name)).unwrap_err();
    assert_eq!(
        misnamed.kind(),
        std::io::ErrorKind::InvalidData,
        "{misnamed}"
    );
    // The server notices once the client's alert arrives.
    let deadline = Instant::now() + TIMEOUT;
    while server.failed_handshakes() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.failed_handshakes(), 2);
    assert!(server.requests().is_empty());

    // The service account files are what a pod gets.
    let dir = tempfile::tempdir().unwrap();
    server.write_service_account(dir.path()).unwrap();
    let read = |name| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(read(super::auth::TOKEN_FILE), server.token());
    assert_eq!(read(super::auth::CA_FILE), server.ca_pem());
}

/// kube-runtime's watcher (what the agent uses) against the server: the initial list, live
/// changes, and an outage during which history is compacted, ending in 410 Gone and a relist
/// that still yields the server's exact state.
#[test]
fn kube_runtime_watcher_lists_watches_and_relists_after_410() {
    use futures::StreamExt;
    use kube::{
        config::{KubeConfigOptions, Kubeconfig},
        runtime::{reflector, watcher, WatchStreamExt},
        Api, Client, Config,
    };

    let server = server();
    server.create(&web("ns", "a", 1)).unwrap();
    server.create(&web("ns", "b", 2)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        let client = Client::try_from(config).unwrap();
        let (reader, writer) = reflector::store::<Service>();
        let config = watcher::Config::default().labels(&format!("!{SERVICE_PROXY_NAME_LABEL}"));
        let mut stream = reflector(writer, watcher(Api::<Service>::all(client), config))
            .default_backoff()
            .boxed();
        // Drives the watcher until its cache holds exactly `expected`.
        let mut until = async |expected: &[&str]| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let mut names: Vec<String> = reader
                    .state()
                    .iter()
                    .map(|s| s.metadata.name.clone().unwrap())
                    .collect();
                names.sort();
                if names == expected {
                    return;
                }
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(_)) => {}
                    other => panic!("watcher ended or stalled ({other:?}) holding {names:?}"),
                }
            }
        };
        until(&["a", "b"]).await;
        server.create(&web("ns", "c", 3)).unwrap();
        until(&["a", "b", "c"]).await;

        server.stop().unwrap();
        server.delete::<Service>("ns", "a").unwrap();
        server.create(&web("ns", "d", 4)).unwrap();
        server.compact();
        server.restart().unwrap();
        until(&["b", "c", "d"]).await;
    });
    assert!(server.gone_sent() >= 1, "the watcher resumed without a 410");
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.is_list_of(super::Resource::Services))
        .count();
    assert!(lists >= 2, "no relist after the 410 ({lists} lists)");
    // Through the kubeconfig's CA and token, as kube-rs' client sends them.
    assert!(server
        .requests()
        .iter()
        .all(|r| r.credential == Credential::Token));
}

#[test]
fn a_server_started_in_a_namespace_listens_only_there() {
    crate::require_root!();
    let netns =
        crate::netns::NetNs::create(&format!("{}-api", crate::netns::unique_prefix())).unwrap();
    let server = ApiServer::start_in(&netns, Options::default()).unwrap();
    server
        .create(&node("node-a", [198, 18, 1, 1].into()))
        .unwrap();
    let addr = server.addr();
    let status = netns
        .run(|| send(&server, "/api/v1/nodes/node-a").status)
        .unwrap();
    assert_eq!(status, 200);
    let kubeconfig = std::fs::read_to_string(server.kubeconfig()).unwrap();
    assert!(
        kubeconfig.contains(&format!("server: https://{addr}\n")),
        "{kubeconfig}"
    );
    assert!(kubeconfig.contains(&format!("token: {}\n", server.token())));
    // The caller's namespace has nothing on that port.
    assert!(TcpStream::connect_timeout(&addr, TIMEOUT).is_err());
    server.stop().unwrap();
    server.restart().unwrap();
    let status = netns
        .run(|| send(&server, "/api/v1/nodes/node-a").status)
        .unwrap();
    assert_eq!(status, 200, "restarted inside the same namespace");
}
