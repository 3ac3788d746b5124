//! Kubernetes API source: watches Services, EndpointSlices and this node's Node object, as
//! kube-proxy does, and publishes the desired state after every change set.
//!
//! Requests (kube-runtime's watcher, `ListWatch` strategy, pages of 500):
//! - `GET /api/v1/services?labelSelector=!service.kubernetes.io/service-proxy-name`
//! - `GET /apis/discovery.k8s.io/v1/endpointslices?labelSelector=!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name`
//! - `GET /api/v1/nodes?fieldSelector=metadata.name=<node>`
//! - `GET /apis/networking.k8s.io/v1/servicecidrs` (not with `--service-cidrs`)
//!
//! each listed first (`limit=500`, following `continue`), then watched from the list's
//! resourceVersion (`watch=true&allowWatchBookmarks=true&timeoutSeconds=290`). A failing
//! list or watch is retried with kube-runtime's default backoff (0.8 s doubling to 30 s);
//! meanwhile the maps keep the last published state: nothing is ever flushed for want of a
//! connection. A 410 Gone starts a relist, applied only once complete ([`state`]).
//! ServiceCIDRs that the API server does not serve (404, before Kubernetes 1.33) or that
//! the agent may not read (403) are reported once and retried in the background while
//! everything else is served, without the drop of unallocated service addresses.

pub mod access;
pub mod state;

use std::collections::BTreeSet;

use futures::{stream, FutureExt, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::{channel, DesiredStates};
use crate::error::Chain;
use crate::health::SyncHealth;
use crate::k8s::node::not_eligible_because;
use crate::k8s::{NodeDef, NodePortAddresses, ServiceCidrDef, ServiceDef, SliceDef};
use crate::metrics::SyncMetrics;
pub use access::{AccessError, ApiAccess, ApiServerUrl};
use state::ClusterView;

/// Services kube-proxy leaves to another proxy are not watched.
pub const SERVICE_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name";
/// Slices of headless services and of services another proxy handles are not watched.
pub const SLICE_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";

/// The Kubernetes API source could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiSourceError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("creating the Kubernetes client failed")]
    Client(#[source] kube::Error),
}

/// A client for the API server of `config` (see [`access::config`]).
pub fn client(config: kube::Config) -> Result<Client, ApiSourceError> {
    Client::try_from(config).map_err(ApiSourceError::Client)
}

/// One watcher's next event, by kind (boxed: Kubernetes objects are large).
enum Change {
    Services(Box<watcher::Result<Event<Service>>>),
    Slices(Box<watcher::Result<Event<EndpointSlice>>>),
    Node(Box<watcher::Result<Event<Node>>>),
    ServiceCidrs(Box<watcher::Result<Event<ServiceCIDR>>>),
}

/// Watches the cluster in a task and publishes the desired state after every change set
/// (all events already received are applied together). `max_endpoints` rejects slices that
/// cannot fit into the backends map; the number of invalid objects goes to `metrics`, and
/// whether the Node may get load-balancer traffic to `health`. `service_cidrs`: those of
/// `--service-cidrs`, in place of watching ServiceCIDR objects.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    client: Client,
    node_name: String,
    node_port_addresses: NodePortAddresses,
    service_cidrs: Option<BTreeSet<IpNet>>,
    max_endpoints: usize,
    metrics: SyncMetrics,
    health: SyncHealth,
) -> (JoinHandle<()>, DesiredStates) {
    let (publisher, states) = channel();
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(SERVICE_LABEL_SELECTOR),
    )
    .default_backoff()
    .map(|e| Change::Services(Box::new(e)));
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(SLICE_LABEL_SELECTOR),
    )
    .default_backoff()
    .map(|e| Change::Slices(Box::new(e)));
    let node = watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
    )
    .default_backoff()
    .map(|e| Change::Node(Box::new(e)));
    let cidrs = match service_cidrs {
        Some(_) => stream::empty().boxed(),
        None => watcher(Api::<ServiceCIDR>::all(client), watcher::Config::default())
            .default_backoff()
            .map(|e| Change::ServiceCidrs(Box::new(e)))
            .boxed(),
    };

    let task = tokio::spawn(async move {
        let changes = stream::select(stream::select(services, slices), node);
        let mut changes = stream::select(changes, cidrs).boxed();
        let mut view =
            ClusterView::new(node_name, node_port_addresses).with_service_cidrs(service_cidrs);
        while let Some(change) = changes.next().await {
            apply(&mut view, change, max_endpoints, &health);
            while let Some(Some(change)) = changes.next().now_or_never() {
                apply(&mut view, change, max_endpoints, &health);
            }
            if let Some((change_set, update)) = view.take_change_set() {
                info!("{change_set}");
                metrics.invalid_objects(change_set.invalid_objects);
                if publisher.is_closed() {
                    return;
                }
                publisher.publish(update);
            }
        }
    });
    (task, states)
}

fn apply(view: &mut ClusterView, change: Change, max_endpoints: usize, health: &SyncHealth) {
    let skipped = match change {
        Change::Services(event) => match *event {
            Ok(event) => view.services.on_event(event, ServiceDef::from_k8s),
            Err(e) => return watch_failed("services", &e),
        },
        Change::Slices(event) => match *event {
            Ok(event) => view
                .slices
                .on_event(event, |s| SliceDef::from_k8s(s, max_endpoints)),
            Err(e) => return watch_failed("endpoint slices", &e),
        },
        Change::Node(event) => match *event {
            Ok(event) => {
                if let Event::InitApply(node) | Event::Apply(node) | Event::Delete(node) = &event {
                    sync_node_eligibility(node, health);
                }
                view.node.on_event(event, NodeDef::from_k8s)
            }
            Err(e) => return watch_failed("the node", &e),
        },
        Change::ServiceCidrs(event) => match *event {
            Ok(event) => {
                // The watcher sends `Init` before each list attempt, also before one that fails.
                if !matches!(event, Event::Init) {
                    view.service_cidrs_available();
                }
                view.service_cidrs.on_event(event, ServiceCidrDef::from_k8s)
            }
            Err(e) => return service_cidrs_failed(view, &e),
        },
    };
    for object in skipped {
        error!("{object}");
    }
}

/// Tells `health` whether the node may get load-balancer traffic, from every version of the
/// Node seen (a deleted one's last state included), as kube-proxy's node handler does.
fn sync_node_eligibility(node: &Node, health: &SyncHealth) {
    let why_not = not_eligible_because(node);
    if !health.set_node_eligible(why_not.is_none()) {
        return;
    }
    let name = node.metadata.name.as_deref().unwrap_or_default();
    match why_not {
        Some(why) => warn!(
            "node {name} is not eligible for load-balancer traffic ({why}): /healthz answers \
             503 so load balancers drain it; traffic is still served"
        ),
        None => {
            info!("node {name} is eligible for load-balancer traffic again: /healthz answers 200")
        }
    }
}

/// ServiceCIDRs the API server does not serve or the agent may not read do not hold up
/// the rest: reported once, retried quietly. Other failures are reported as for any kind.
fn service_cidrs_failed(view: &mut ClusterView, error: &watcher::Error) {
    let why = match status_code(error) {
        Some(404) => {
            "the API server does not serve networking.k8s.io/v1 ServiceCIDR (404 Not \
                      Found: Kubernetes before 1.33?)"
        }
        Some(403) => {
            "the agent may not list and watch networking.k8s.io/v1 ServiceCIDRs (403 \
                      Forbidden: check the ClusterRole and its binding)"
        }
        _ => return watch_failed("service CIDRs", error),
    };
    if view.service_cidrs_unavailable() {
        warn!(
            "{why}: new flows to service addresses that no Service holds are not dropped; \
             give the service CIDRs with --service-cidrs (retrying in the background)"
        );
    } else {
        debug!("service CIDRs still unavailable: {}", Chain(error));
    }
}

fn watch_failed(what: &str, error: &watcher::Error) {
    let hint = refusal_hint(error).unwrap_or_default();
    warn!(
        "watching {what} failed, retrying with backoff (the maps keep the last known state): \
         {hint}{}",
        Chain(error)
    );
}

/// What to check when the API server refused the agent: the credentials (401) or the
/// permissions (403).
fn refusal_hint(error: &watcher::Error) -> Option<&'static str> {
    match status_code(error)? {
        401 => Some(
            "401 Unauthorized: the API server rejected the agent's credentials (the service \
             account token, re-read every minute, or the kubeconfig's user); ",
        ),
        403 => Some(
            "403 Forbidden: the agent's account may not list and watch it (check the \
             ClusterRole and its binding); ",
        ),
        _ => None,
    }
}

/// The HTTP status code of an error the API server answered with.
fn status_code(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => Some(status.code),
        _ => None,
    }
}
