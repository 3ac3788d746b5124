//! The HTTP side: routes GET requests to list, get and watch, checks query parameters as the
//! real API server does, and streams watch events.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::{sync::mpsc::UnboundedReceiver, time::Sleep};

use super::{
    selector::{FieldSelector, LabelSelector},
    store::{Filter, Key, ListQuery, WatchStart},
    ApiError, Credential, RequestRecord, Resource, Shared,
};

/// How long a watch without `timeoutSeconds` stays open (the real server picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Answers one request that came in at `local_addr`.
pub async fn handle(
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let params: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let record = RequestRecord {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        params,
        credential: shared.credentials.check(request.headers()),
        local_addr,
    };
    shared.record(record.clone());
    // As a real server without anonymous access: no valid token, no answer but 401.
    if record.credential != Credential::Token {
        return Ok(error_response(&ApiError::unauthorized()));
    }
    Ok(respond(&shared, &record).unwrap_or_else(|error| error_response(&error)))
}

fn respond(shared: &Shared, request: &RequestRecord) -> Result<Response<ResponseBody>, ApiError> {
    if request.method != Method::GET.as_str() {
        return Err(ApiError::method_not_allowed(&request.method));
    }
    if request.path == "/version" {
        return Ok(json_response(&json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-lb-tests",
            "platform": "linux/amd64",
        })));
    }
    let route = Route::parse(&request.path)
        .filter(|route| !shared.unserved.contains(&route.resource))
        .ok_or_else(|| ApiError::path_not_found(&request.path))?;
    let params = Params::parse(&request.params)?;
    match route.name {
        Some(name) => {
            if params.watch {
                return Err(ApiError::bad_request(
                    "watching a single object by path is not served; use fieldSelector=metadata.name=...",
                ));
            }
            let key = Key {
                resource: route.resource,
                namespace: route.namespace.unwrap_or_default(),
                name,
            };
            let object = shared
                .store()
                .get(&key)
                .ok_or_else(|| ApiError::not_found(&key))?;
            Ok(json_response(&object))
        }
        None => {
            let filter = Filter {
                resource: route.resource,
                namespace: route.namespace,
                labels: params.labels.clone(),
                fields: params.fields.clone(),
            };
            if params.watch {
                watch(shared, filter, &params)
            } else {
                list(shared, filter, &params)
            }
        }
    }
}

/// A resource path: collection (all namespaces, or one) or one object.
#[derive(Debug, PartialEq, Eq)]
struct Route {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        Resource::ALL.into_iter().find_map(|resource| {
            let rest = path
                .strip_prefix(resource.group_prefix())?
                .strip_prefix('/')?;
            let segments: Vec<&str> = rest.split('/').collect();
            let (namespace, tail) = match segments.as_slice() {
                ["namespaces", ns, tail @ ..] if resource.namespaced() && !ns.is_empty() => {
                    (Some(ns.to_string()), tail)
                }
                tail => (None, tail),
            };
            let name = match tail {
                [plural] if *plural == resource.plural() => None,
                [plural, name] if *plural == resource.plural() && !name.is_empty() => {
                    Some(name.to_string())
                }
                _ => return None,
            };
            // A namespaced object is only addressable inside its namespace.
            if name.is_some() && resource.namespaced() && namespace.is_none() {
                return None;
            }
            Some(Route {
                resource,
                namespace,
                name,
            })
        })
    }
}

/// Query parameters of list and watch requests.
#[derive(Debug, Default)]
struct Params {
    watch: bool,
    labels: LabelSelector,
    fields: FieldSelector,
    resource_version: Option<String>,
    version_match: Option<String>,
    limit: Option<usize>,
    continue_token: Option<String>,
    timeout: Option<Duration>,
    bookmarks: bool,
    send_initial_events: bool,
}

impl Params {
    fn parse(pairs: &[(String, String)]) -> Result<Params, ApiError> {
        let map: HashMap<&str, &str> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let get = |name: &str| map.get(name).copied().filter(|v| !v.is_empty());
        let flag = |name: &str| matches!(get(name), Some("true" | "1"));
        let number = |name: &str| -> Result<Option<u64>, ApiError> {
            get(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| ApiError::bad_request(format!("{name}: invalid value {v:?}")))
                })
                .transpose()
        };
        Ok(Params {
            watch: flag("watch"),
            labels: LabelSelector::parse(get("labelSelector").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
            fields: FieldSelector::parse(get("fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            resource_version: get("resourceVersion").map(str::to_string),
            version_match: get("resourceVersionMatch").map(str::to_string),
            limit: number("limit")?.filter(|&l| l > 0).map(|l| l as usize),
            continue_token: get("continue").map(str::to_string),
            timeout: number("timeoutSeconds")?.map(Duration::from_secs),
            bookmarks: flag("allowWatchBookmarks"),
            send_initial_events: flag("sendInitialEvents"),
        })
    }

    /// `resourceVersion` as a number; `None` when unset.
    fn version(&self) -> Result<Option<u64>, ApiError> {
        self.resource_version
            .as_deref()
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("resourceVersion: Invalid value: {v:?}"))
                })
            })
            .transpose()
    }
}

fn list(
    shared: &Shared,
    filter: Filter,
    params: &Params,
) -> Result<Response<ResponseBody>, ApiError> {
    let version = params.version()?;
    if params.continue_token.is_some() && version.is_some() {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    let (exact, not_older_than) = match (params.version_match.as_deref(), version) {
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ))
        }
        (Some("Exact"), Some(0)) => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
            ))
        }
        (Some("Exact"), Some(rv)) => (Some(rv), None),
        (Some("NotOlderThan") | None, rv) => (None, rv),
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: {other:?}"
            )))
        }
    };
    let resource = filter.resource;
    let page = shared.store().list(&ListQuery {
        filter,
        exact,
        not_older_than,
        limit: params.limit,
        continue_token: params.continue_token.clone(),
    })?;
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(token) = page.continue_token {
        metadata["continue"] = token.into();
    }
    if let Some(remaining) = page.remaining {
        metadata["remainingItemCount"] = remaining.into();
    }
    // Like the real server, list items carry neither apiVersion nor kind.
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|item| {
            let mut item = Value::clone(item);
            if let Some(fields) = item.as_object_mut() {
                fields.remove("apiVersion");
                fields.remove("kind");
            }
            item
        })
        .collect();
    Ok(json_response(&json!({
        "apiVersion": resource.api_version(),
        "kind": format!("{}List", resource.kind()),
        "metadata": metadata,
        "items": items,
    })))
}

fn watch(
    shared: &Shared,
    filter: Filter,
    params: &Params,
) -> Result<Response<ResponseBody>, ApiError> {
    let version = params.version()?;
    let start = if params.send_initial_events {
        if params.version_match.as_deref() != Some("NotOlderThan") {
            return Err(ApiError::invalid(
                "resourceVersionMatch: Required value: sendInitialEvents requires \
                 resourceVersionMatch=NotOlderThan",
            ));
        }
        if !params.bookmarks {
            return Err(ApiError::invalid(
                "allowWatchBookmarks: Required value: sendInitialEvents requires bookmarks",
            ));
        }
        WatchStart::Current {
            initial_events_end: true,
        }
    } else {
        if params.version_match.is_some() {
            return Err(ApiError::invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch \
                 unless sendInitialEvents is provided",
            ));
        }
        match version {
            None | Some(0) => WatchStart::Current {
                initial_events_end: false,
            },
            Some(rv) => WatchStart::After(rv),
        }
    };
    let mut store = shared.store();
    if let Some(rv) = version.filter(|&rv| rv > store.resource_version()) {
        return Err(ApiError::too_large_resource_version(
            rv,
            store.resource_version(),
        ));
    }
    let events = store.watch(filter, start, params.bookmarks);
    drop(store);
    let timeout = params.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let body = ResponseBody(BodyState::Watch {
        events,
        deadline: Box::pin(tokio::time::sleep(timeout)),
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a valid response"))
}

fn json_response(value: &Value) -> Response<ResponseBody> {
    response(StatusCode::OK, value)
}

fn error_response(error: &ApiError) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response(status, &error.status())
}

fn response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).expect("JSON values serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(ResponseBody(BodyState::Once(Some(Bytes::from(body)))))
        .expect("a valid response")
}

/// A response body: one JSON document, or a watch's event lines until the watch is dropped
/// or its timeout passes.
pub struct ResponseBody(BodyState);

enum BodyState {
    Once(Option<Bytes>),
    Watch {
        events: UnboundedReceiver<Bytes>,
        deadline: Pin<Box<Sleep>>,
    },
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            BodyState::Once(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyState::Watch { events, deadline } => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                events
                    .poll_recv(cx)
                    .map(|line| line.map(|l| Ok(Frame::data(l))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, BodyState::Once(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyState::Once(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            BodyState::Watch { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_collections_and_objects() {
        let route = |resource, namespace: Option<&str>, name: Option<&str>| {
            Some(Route {
                resource,
                namespace: namespace.map(str::to_string),
                name: name.map(str::to_string),
            })
        };
        let cases = [
            ("/api/v1/services", route(Resource::Services, None, None)),
            (
                "/api/v1/namespaces/ns/services",
                route(Resource::Services, Some("ns"), None),
            ),
            (
                "/api/v1/namespaces/ns/services/web",
                route(Resource::Services, Some("ns"), Some("web")),
            ),
            (
                "/apis/discovery.k8s.io/v1/endpointslices",
                route(Resource::EndpointSlices, None, None),
            ),
            (
                "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices/web-1",
                route(Resource::EndpointSlices, Some("ns"), Some("web-1")),
            ),
            ("/api/v1/nodes", route(Resource::Nodes, None, None)),
            (
                "/api/v1/nodes/node-a",
                route(Resource::Nodes, None, Some("node-a")),
            ),
            // Wrong group, cluster-wide object path of a namespaced resource, namespaced nodes.
            ("/api/v1/endpointslices", None),
            ("/apis/discovery.k8s.io/v1/services", None),
            ("/api/v1/services/web", None),
            ("/api/v1/namespaces/ns/nodes", None),
            ("/api/v1/namespaces/ns/services/web/status", None),
            ("/api/v1/pods", None),
        ];
        for (path, expected) in cases {
            assert_eq!(Route::parse(path), expected, "{path}");
        }
    }
}
