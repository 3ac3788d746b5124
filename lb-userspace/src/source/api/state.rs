//! The API source's view of the cluster, built from watcher events; pure, so it is tested
//! without a server.
//!
//! kube-runtime's watcher starts every (re)list with `Init`, sends the listed objects as
//! `InitApply` and ends with `InitDone`; after that come `Apply` and `Delete` events. A
//! relist (after a 410 Gone or a broken watch) is buffered and replaces the objects of its
//! kind only once complete, so the state never passes through a half-listed cluster, and a
//! relist cut short by an error is simply started again. Nothing is published before all
//! four kinds have been listed once, where ServiceCIDRs count as listed when they come from
//! `--service-cidrs` or the API server does not serve them (or forbids them to the agent).
//!
//! The desired state is kept up to date incrementally ([`DesiredTracker`]): a Service or
//! EndpointSlice event recomputes only the Services it touches (for a slice: the Service it
//! belonged to and the one it belongs to now); a change of the Node or a relist recomputes
//! every Service. A ServiceCIDR change changes only the published service CIDRs.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use ipnet::IpNet;

use kube::runtime::watcher::Event;
use kube::ResourceExt;
use tracing::warn;

use crate::k8s::{
    health_check, owner, service_frontends, DesiredTracker, NodeDef, NodePortAddresses,
    ServiceCidrDef, ServiceDef, SliceDef,
};
use crate::model::{Changed, DesiredService, Frontend, HealthCheck};
use crate::objects::{FieldError, LastValid, ObjectError, ObjectKey, SkippedObject};
use crate::source::Update;

/// Objects of one kind as the watcher reported them.
#[derive(Debug)]
pub struct Watched<T> {
    kind: &'static str,
    objects: LastValid<T>,
    /// Objects of a (re)list in progress: `Init` seen, `InitDone` not yet.
    relist: Option<Vec<(ObjectKey, Result<T, ObjectError>)>>,
    /// Whether a list has completed at least once.
    listed: bool,
    /// Events since the last change set.
    events: usize,
    /// Objects added, changed or deleted since the last change set.
    changed: BTreeSet<ObjectKey>,
    /// Whether a (re)list completed since the last change set.
    relisted: bool,
}

impl<T> Watched<T> {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            objects: LastValid::default(),
            relist: None,
            listed: false,
            events: 0,
            changed: BTreeSet::new(),
            relisted: false,
        }
    }

    /// Applies one watcher event, checking objects with `check`; returns the object versions
    /// that were skipped as invalid.
    pub fn on_event<K: ResourceExt>(
        &mut self,
        event: Event<K>,
        check: impl Fn(&K) -> Result<T, FieldError>,
    ) -> Vec<SkippedObject> {
        let kind = self.kind;
        let parse = |object: &K| {
            let key = ObjectKey::new(object.namespace().unwrap_or_default(), object.name_any());
            let parsed = check(object).map_err(|error| ObjectError {
                file: None,
                kind: kind.to_string(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                error,
            });
            (key, parsed)
        };
        match event {
            Event::Init => {
                self.relist = Some(Vec::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                self.relist
                    .get_or_insert_with(Vec::new)
                    .push(parse(&object));
                Vec::new()
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                self.listed = true;
                self.relisted = true;
                self.events += 1;
                self.objects.replace_all(listed)
            }
            Event::Apply(object) => {
                let (key, parsed) = parse(&object);
                self.events += 1;
                self.changed.insert(key.clone());
                self.objects.upsert(key, parsed).into_iter().collect()
            }
            Event::Delete(object) => {
                self.events += 1;
                let key = ObjectKey::new(object.namespace().unwrap_or_default(), object.name_any());
                self.objects.remove(&key);
                self.changed.insert(key);
                Vec::new()
            }
        }
    }
}

/// Services, EndpointSlices and this node's Node, each as last listed and watched.
#[derive(Debug)]
pub struct ClusterView {
    pub services: Watched<ServiceDef>,
    pub slices: Watched<SliceDef>,
    pub node: Watched<NodeDef>,
    /// ServiceCIDRs, unless `cidrs_from_flag`.
    pub service_cidrs: Watched<ServiceCidrDef>,
    /// `--service-cidrs`: used instead of ServiceCIDR objects.
    cidrs_from_flag: Option<BTreeSet<IpNet>>,
    /// Whether it was reported that ServiceCIDRs cannot be listed (once until they can).
    reported_cidrs_unavailable: bool,
    node_name: String,
    /// Which of the Node's addresses serve node ports.
    node_port_addresses: NodePortAddresses,
    /// Whether the missing Node object was reported (once until it appears).
    reported_missing_node: bool,
    /// Whether it was reported that no address serves node ports (once until one does).
    reported_no_node_port_address: bool,
    /// The desired state, `None` until every kind is listed.
    desired: Option<DesiredTracker>,
    /// The name of the Service each EndpointSlice belongs to (in the slice's namespace), and
    /// the other way round: the names of each Service's slices. Names only, to keep the index
    /// small next to the objects themselves.
    slice_owners: HashMap<ObjectKey, String>,
    service_slices: HashMap<ObjectKey, Vec<String>>,
}

/// What changed since the last change set, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    pub service_events: usize,
    pub slice_events: usize,
    pub node_events: usize,
    pub service_cidr_events: usize,
    pub services: usize,
    pub slices: usize,
    pub node: NodeDef,
    pub invalid_objects: usize,
}

impl fmt::Display for ChangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kubernetes change set: {} service, {} endpoint slice, {} node events; in effect: \
             {} services, {} endpoint slices, node {} with {} addresses; {} invalid objects \
             skipped",
            self.service_events,
            self.slice_events,
            self.node_events,
            self.services,
            self.slices,
            self.node.name,
            self.node.addresses.len(),
            self.invalid_objects
        )?;
        if self.service_cidr_events > 0 {
            write!(f, "; {} service CIDR events", self.service_cidr_events)?;
        }
        Ok(())
    }
}

impl ClusterView {
    pub fn new(node_name: impl Into<String>, node_port_addresses: NodePortAddresses) -> Self {
        Self {
            services: Watched::new("Service"),
            slices: Watched::new("EndpointSlice"),
            node: Watched::new("Node"),
            service_cidrs: Watched::new("ServiceCIDR"),
            cidrs_from_flag: None,
            reported_cidrs_unavailable: false,
            node_name: node_name.into(),
            node_port_addresses,
            reported_missing_node: false,
            reported_no_node_port_address: false,
            desired: None,
            slice_owners: HashMap::new(),
            service_slices: HashMap::new(),
        }
    }

    /// The service CIDRs come from `--service-cidrs` (`Some`), or from ServiceCIDR objects.
    pub fn with_service_cidrs(mut self, from_flag: Option<BTreeSet<IpNet>>) -> Self {
        self.service_cidrs.listed = from_flag.is_some();
        self.cidrs_from_flag = from_flag;
        self
    }

    /// ServiceCIDRs cannot be listed (the API server answered 404 or 403): they count as
    /// listed, with the objects last listed (none at first), so the rest is served; the
    /// watcher keeps retrying. Returns whether to report it (the first time only).
    pub fn service_cidrs_unavailable(&mut self) -> bool {
        if !self.service_cidrs.listed {
            self.service_cidrs.listed = true;
            self.service_cidrs.events += 1;
        }
        !std::mem::replace(&mut self.reported_cidrs_unavailable, true)
    }

    /// ServiceCIDRs could be listed or watched again: a later failure is reported anew.
    pub fn service_cidrs_available(&mut self) {
        self.reported_cidrs_unavailable = false;
    }

    /// The service CIDRs in effect: the flag's, or the union of every ServiceCIDR object's
    /// (as kube-proxy takes them).
    fn current_service_cidrs(&self) -> BTreeSet<IpNet> {
        match &self.cidrs_from_flag {
            Some(cidrs) => cidrs.clone(),
            None => self
                .service_cidrs
                .objects
                .values()
                .flat_map(|def| def.cidrs.iter().copied())
                .collect(),
        }
    }

    /// When every kind has been listed and something changed since the last call: what
    /// changed and the desired state now.
    pub fn take_change_set(&mut self) -> Option<(ChangeSet, Update)> {
        let kinds_listed = self.services.listed
            && self.slices.listed
            && self.node.listed
            && self.service_cidrs.listed;
        let events = self.services.events
            + self.slices.events
            + self.node.events
            + self.service_cidrs.events;
        if !kinds_listed || events == 0 {
            return None;
        }
        let node = self.node();
        let change_set = ChangeSet {
            service_events: std::mem::take(&mut self.services.events),
            slice_events: std::mem::take(&mut self.slices.events),
            node_events: std::mem::take(&mut self.node.events),
            service_cidr_events: std::mem::take(&mut self.service_cidrs.events),
            services: self.services.objects.len(),
            slices: self.slices.objects.len(),
            node: node.clone(),
            invalid_objects: self.services.objects.invalid_count()
                + self.slices.objects.invalid_count()
                + self.node.objects.invalid_count()
                + self.service_cidrs.objects.invalid_count(),
        };
        let relisted = [
            self.services.relisted,
            self.slices.relisted,
            self.node.relisted,
        ];
        let services_changed = std::mem::take(&mut self.services.changed);
        let slices_changed = std::mem::take(&mut self.slices.changed);
        let everything =
            self.desired.is_none() || relisted.contains(&true) || change_set.node_events > 0;
        self.services.relisted = false;
        self.slices.relisted = false;
        self.node.relisted = false;
        self.node.changed.clear();
        self.service_cidrs.changed.clear();
        self.service_cidrs.relisted = false;
        let dirty = if everything {
            self.index_all_slices();
            self.desired = Some(DesiredTracker::default());
            self.services
                .objects
                .iter()
                .map(|(key, _)| key.clone())
                .collect()
        } else {
            let mut dirty = services_changed;
            for slice in slices_changed {
                dirty.extend(self.index_slice(slice));
            }
            dirty
        };
        let mut desired = self.desired.take().unwrap_or_default();
        for service in dirty {
            let (frontends, health_check) = self.translate(&service, &node);
            desired.update(service, frontends, health_check);
        }
        desired.set_service_cidrs(self.current_service_cidrs());
        let (state, frontends) = desired.publish();
        self.desired = Some(desired);
        let changed = match everything {
            true => Changed::Everything,
            false => Changed::Frontends(frontends),
        };
        Some((change_set, Update { state, changed }))
    }

    /// The frontends `service` claims now and its health check (none once it is deleted).
    fn translate(
        &self,
        service: &ObjectKey,
        node: &NodeDef,
    ) -> (Vec<(Frontend, DesiredService)>, Option<HealthCheck>) {
        let Some(definition) = self.services.objects.get(service) else {
            return (Vec::new(), None);
        };
        let slices: Vec<&SliceDef> = self
            .service_slices
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                let slice = ObjectKey::new(&service.namespace, name);
                self.slices.objects.get(&slice)
            })
            .collect();
        (
            service_frontends(definition, &slices, node),
            health_check(definition, &slices, node),
        )
    }

    /// Records which Service every EndpointSlice belongs to.
    fn index_all_slices(&mut self) {
        self.slice_owners.clear();
        self.service_slices.clear();
        let keys: Vec<ObjectKey> = self
            .slices
            .objects
            .iter()
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            self.index_slice(key);
        }
    }

    /// Records which Service a changed EndpointSlice belongs to now; returns the Services
    /// whose endpoints it may have changed (the one it belonged to and the one it belongs to).
    fn index_slice(&mut self, slice: ObjectKey) -> Vec<ObjectKey> {
        let mut touched = Vec::new();
        if let Some(previous) = self.slice_owners.remove(&slice) {
            let previous = ObjectKey::new(&slice.namespace, previous);
            if let Some(slices) = self.service_slices.get_mut(&previous) {
                slices.retain(|name| *name != slice.name);
                if slices.is_empty() {
                    self.service_slices.remove(&previous);
                }
            }
            touched.push(previous);
        }
        if let Some(service) = self.slices.objects.get(&slice).and_then(owner) {
            self.service_slices
                .entry(service.clone())
                .or_default()
                .push(slice.name.clone());
            self.slice_owners.insert(slice, service.name.clone());
            touched.push(service);
        }
        touched
    }

    /// This node as listed, with the addresses that serve node ports; without a Node
    /// object, its name and no addresses (no node ports).
    fn node(&mut self) -> NodeDef {
        if let Some(node) = self.node.objects.values().next() {
            self.reported_missing_node = false;
            let addresses = self.node_port_addresses.serving(
                &node.name,
                &node.addresses,
                &mut self.reported_no_node_port_address,
            );
            let health_check_addrs = self
                .node_port_addresses
                .health_check_addresses(&addresses)
                .into();
            return NodeDef {
                addresses,
                health_check_addrs,
                ..node.clone()
            };
        }
        if !self.reported_missing_node {
            warn!(
                "Node {} not found (or invalid): node ports are not served until it appears; \
                 is --node-name right?",
                self.node_name
            );
            self.reported_missing_node = true;
        }
        NodeDef {
            name: self.node_name.clone(),
            addresses: Vec::new(),
            zone: None,
            health_check_addrs: self.node_port_addresses.health_check_addresses(&[]).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::networking::v1::ServiceCIDR;

    use super::*;
    use crate::model::DesiredState;

    fn service(name: &str, ip: &str, port: &str) -> Service {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: shop}}\nspec:\n  type: NodePort\n  \
             clusterIP: {ip}\n  ports: [{{name: http, port: {port}, nodePort: 30080}}]\n"
        ))
        .unwrap()
    }

    fn slice(service: &str, ip: &str) -> EndpointSlice {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {service}-1, namespace: shop, labels: \
             {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\n\
             ports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{ip}]}}]\n"
        ))
        .unwrap()
    }

    fn node(ip: &str) -> Node {
        serde_yaml::from_str(&format!(
            "metadata: {{name: node-a}}\nstatus: {{addresses: [{{type: InternalIP, address: \
             {ip}}}]}}\n"
        ))
        .unwrap()
    }

    fn on_service(view: &mut ClusterView, event: Event<Service>) -> Vec<String> {
        let skipped = view.services.on_event(event, ServiceDef::from_k8s);
        skipped.iter().map(ToString::to_string).collect()
    }

    fn on_slice(view: &mut ClusterView, event: Event<EndpointSlice>) {
        view.slices.on_event(event, |s| SliceDef::from_k8s(s, 16));
    }

    fn on_node(view: &mut ClusterView, event: Event<Node>) {
        view.node.on_event(event, NodeDef::from_k8s);
    }

    fn service_cidr(name: &str, cidrs: &str) -> ServiceCIDR {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}}}\nspec: {{cidrs: {cidrs}}}"
        ))
        .unwrap()
    }

    fn on_service_cidr(view: &mut ClusterView, event: Event<ServiceCIDR>) {
        view.service_cidrs.on_event(event, ServiceCidrDef::from_k8s);
    }

    fn list_service_cidrs(view: &mut ClusterView, objects: Vec<ServiceCIDR>) {
        on_service_cidr(view, Event::Init);
        for object in objects {
            on_service_cidr(view, Event::InitApply(object));
        }
        on_service_cidr(view, Event::InitDone);
    }

    /// Lists no Services, EndpointSlices or Node.
    fn list_nothing_but_service_cidrs(view: &mut ClusterView) {
        on_service(view, Event::Init);
        on_service(view, Event::InitDone);
        on_slice(view, Event::Init);
        on_slice(view, Event::InitDone);
        on_node(view, Event::Init);
        on_node(view, Event::InitDone);
    }

    fn cidrs(state: &DesiredState) -> Vec<String> {
        state
            .service_cidrs
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// A view with every kind listed: `web` (198.19.0.10:80 -> 198.18.1.1), node-a at
    /// 198.18.0.1, the service CIDR 198.19.0.0/16; its first change set taken.
    fn listed() -> ClusterView {
        let mut view = ClusterView::new("node-a", NodePortAddresses::default());
        let kubernetes = service_cidr("kubernetes", "['198.19.0.0/16']");
        list_service_cidrs(&mut view, vec![kubernetes]);
        for event in [
            Event::Init,
            Event::InitApply(service("web", "198.19.0.10", "80")),
            Event::InitDone,
        ] {
            on_service(&mut view, event);
        }
        for event in [
            Event::Init,
            Event::InitApply(slice("web", "198.18.1.1")),
            Event::InitDone,
        ] {
            on_slice(&mut view, event);
        }
        for event in [
            Event::Init,
            Event::InitApply(node("198.18.0.1")),
            Event::InitDone,
        ] {
            on_node(&mut view, event);
        }
        view.take_change_set().expect("listed");
        view
    }

    /// Frontend -> backends of the external scope, as strings.
    fn frontends(state: &DesiredState) -> Vec<String> {
        state
            .services
            .iter()
            .map(|(fe, svc)| {
                let backends: Vec<String> = svc
                    .external
                    .endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect();
                format!("{fe} -> {}", backends.join(","))
            })
            .collect()
    }

    #[test]
    fn nothing_is_published_before_every_kind_is_listed() {
        let mut view = ClusterView::new("node-a", NodePortAddresses::default());
        on_service(&mut view, Event::Init);
        on_service(
            &mut view,
            Event::InitApply(service("web", "198.19.0.10", "80")),
        );
        on_service(&mut view, Event::InitDone);
        on_slice(&mut view, Event::Init);
        on_slice(&mut view, Event::InitDone);
        assert!(
            view.take_change_set().is_none(),
            "the node is not listed yet"
        );
        on_node(&mut view, Event::Init);
        on_node(&mut view, Event::InitApply(node("198.18.0.1")));
        on_node(&mut view, Event::InitDone);
        assert!(
            view.take_change_set().is_none(),
            "the service CIDRs are not listed yet"
        );
        list_service_cidrs(&mut view, Vec::new());
        let (change_set, state) = take(&mut view);
        assert_eq!(
            change_set.to_string(),
            "kubernetes change set: 1 service, 1 endpoint slice, 1 node events; in effect: 1 \
             services, 0 endpoint slices, node node-a with 1 addresses; 0 invalid objects \
             skipped; 1 service CIDR events"
        );
        assert_eq!(
            frontends(&state),
            ["198.18.0.1:30080/TCP -> ", "198.19.0.10:80/TCP -> "]
        );
        assert!(view.take_change_set().is_none(), "nothing changed since");
    }

    #[test]
    fn a_relist_replaces_its_kind_only_once_complete() {
        let mut view = listed();
        // A 410 Gone: the services are listed again; `web` was deleted meanwhile.
        on_service(&mut view, Event::Init);
        on_service(
            &mut view,
            Event::InitApply(service("api", "198.19.0.11", "81")),
        );
        assert!(
            view.take_change_set().is_none(),
            "a half relist changes nothing"
        );
        on_slice(&mut view, Event::Apply(slice("web", "198.18.1.2")));
        let (_, during) = take(&mut view);
        assert_eq!(
            frontends(&during),
            [
                "198.18.0.1:30080/TCP -> 198.18.1.2:8080",
                "198.19.0.10:80/TCP -> 198.18.1.2:8080"
            ],
            "other kinds' changes apply on the services as last complete"
        );
        on_service(&mut view, Event::InitDone);
        let (_, after) = take(&mut view);
        assert_eq!(
            frontends(&after),
            ["198.18.0.1:30080/TCP -> ", "198.19.0.11:81/TCP -> "]
        );
    }

    #[test]
    fn an_interrupted_relist_starts_over() {
        let mut view = listed();
        on_service(&mut view, Event::Init);
        on_service(
            &mut view,
            Event::InitApply(service("api", "198.19.0.11", "81")),
        );
        // The list failed part way; the watcher starts it again.
        on_service(&mut view, Event::Init);
        on_service(
            &mut view,
            Event::InitApply(service("web", "198.19.0.10", "80")),
        );
        on_service(&mut view, Event::InitDone);
        let (_, state) = take(&mut view);
        assert_eq!(
            frontends(&state),
            [
                "198.18.0.1:30080/TCP -> 198.18.1.1:8080",
                "198.19.0.10:80/TCP -> 198.18.1.1:8080"
            ]
        );
    }

    #[test]
    fn an_invalid_update_keeps_the_last_valid_version_and_is_counted() {
        let mut view = listed();
        let skipped = on_service(
            &mut view,
            Event::Apply(service("web", "198.19.0.10", "80000")),
        );
        assert_eq!(
            skipped,
            [
                "Service shop/web: spec.ports[0].port: 80000 is not a port (1..=65535) (object \
              skipped; its last valid version stays in effect)"
            ]
        );
        let (change_set, state) = take(&mut view);
        assert_eq!(change_set.invalid_objects, 1);
        assert_eq!(
            frontends(&state),
            [
                "198.18.0.1:30080/TCP -> 198.18.1.1:8080",
                "198.19.0.10:80/TCP -> 198.18.1.1:8080"
            ]
        );
        on_service(
            &mut view,
            Event::Delete(service("web", "198.19.0.10", "80")),
        );
        let (change_set, state) = take(&mut view);
        assert_eq!((change_set.invalid_objects, state.services.len()), (0, 0));
    }

    #[test]
    fn node_ports_follow_the_node_object() {
        let mut view = listed();
        on_node(&mut view, Event::Apply(node("198.18.0.2")));
        let (_, state) = take(&mut view);
        assert!(frontends(&state)[0].starts_with("198.18.0.2:30080/TCP"));
        on_node(&mut view, Event::Delete(node("198.18.0.2")));
        let (change_set, state) = take(&mut view);
        assert_eq!(change_set.node.name, "node-a", "the name stays known");
        assert_eq!(frontends(&state), ["198.19.0.10:80/TCP -> 198.18.1.1:8080"]);
    }

    #[test]
    fn a_service_cidr_change_publishes_the_union_and_changes_no_frontend() {
        let mut view = listed();
        let before = view.desired.as_ref().unwrap().state().clone();
        assert_eq!(cidrs(&before), ["198.19.0.0/16"]);
        let extra = service_cidr("extra", "['198.18.128.0/24', '2001:2::/112', 'nonsense']");
        on_service_cidr(&mut view, Event::Apply(extra.clone()));
        let (change_set, update) = view.take_change_set().unwrap();
        assert_eq!(change_set.service_cidr_events, 1);
        assert_eq!(update.changed, Changed::Frontends(BTreeSet::new()));
        assert_eq!(
            cidrs(&update.state),
            ["198.18.128.0/24", "198.19.0.0/16", "2001:2::/112"]
        );
        assert_eq!(update.state.services, before.services);
        on_service_cidr(&mut view, Event::Delete(extra));
        let (_, state) = take(&mut view);
        assert_eq!(cidrs(&state), ["198.19.0.0/16"]);
    }

    #[test]
    fn unavailable_service_cidrs_do_not_hold_up_the_rest_and_are_reported_once() {
        let mut view = ClusterView::new("node-a", NodePortAddresses::default());
        list_nothing_but_service_cidrs(&mut view);
        assert!(view.take_change_set().is_none());
        assert!(view.service_cidrs_unavailable(), "reported the first time");
        assert!(!view.service_cidrs_unavailable(), "not again");
        let (_, state) = take(&mut view);
        assert!(state.service_cidrs.is_empty());
        // Once they can be listed (RBAC granted, the cluster upgraded) they take effect.
        view.service_cidrs_available();
        list_service_cidrs(
            &mut view,
            vec![service_cidr("kubernetes", "['198.19.0.0/16']")],
        );
        let (_, state) = take(&mut view);
        assert_eq!(cidrs(&state), ["198.19.0.0/16"]);
        assert!(
            view.service_cidrs_unavailable(),
            "a new failure is reported anew"
        );
    }

    #[test]
    fn the_flag_replaces_service_cidr_objects() {
        let flag = BTreeSet::from(["198.19.0.0/20".parse().unwrap()]);
        let mut view =
            ClusterView::new("node-a", NodePortAddresses::default()).with_service_cidrs(Some(flag));
        list_nothing_but_service_cidrs(&mut view);
        let (_, state) = take(&mut view);
        assert_eq!(cidrs(&state), ["198.19.0.0/20"]);
    }

    /// The next change set and the desired state it publishes.
    fn take(view: &mut ClusterView) -> (ChangeSet, DesiredState) {
        let (change_set, update) = view.take_change_set().unwrap();
        (change_set, (*update.state).clone())
    }

    /// The desired state a full translation of the view's objects gives.
    fn translated(view: &ClusterView) -> DesiredState {
        let node = view.node.objects.values().next().unwrap().clone();
        let state = crate::k8s::desired_state(
            view.services.objects.values(),
            view.slices.objects.values(),
            &node,
        );
        DesiredState {
            service_cidrs: view.current_service_cidrs(),
            ..state
        }
    }

    #[test]
    fn each_change_recomputes_only_what_it_touches_and_matches_a_full_translation() {
        let mut view = listed();
        let first = view.desired.as_ref().unwrap().state().clone();
        let web = |state: &DesiredState| {
            let key = state
                .services
                .keys()
                .find(|f| f.port == 80)
                .copied()
                .unwrap();
            Arc::clone(&state.services[&key])
        };

        // A new service with its slice: `web`'s services are the very same, and only the new
        // frontends are reported as changed.
        on_service(&mut view, Event::Apply(service("api", "198.19.0.11", "81")));
        on_slice(&mut view, Event::Apply(slice("api", "198.18.1.3")));
        let (_, update) = view.take_change_set().unwrap();
        let Changed::Frontends(changed) = &update.changed else {
            panic!("{:?}", update.changed);
        };
        let changed: Vec<String> = changed.iter().map(ToString::to_string).collect();
        assert_eq!(changed, ["198.18.0.1:30080/TCP", "198.19.0.11:81/TCP"]);
        let state = (*update.state).clone();
        assert!(Arc::ptr_eq(&web(&first), &web(&state)));
        assert_eq!(state, translated(&view));

        // A slice moves from `web` to `api` (its label changes): both are recomputed.
        let mut moved = slice("api", "198.18.1.4");
        moved.metadata.name = Some("web-1".into());
        on_slice(&mut view, Event::Apply(moved.clone()));
        let (_, state) = take(&mut view);
        assert_eq!(state, translated(&view));
        assert!(frontends(&state).contains(&"198.19.0.10:80/TCP -> ".to_string()));

        // Deleting the moved slice and the `api` service.
        on_slice(&mut view, Event::Delete(moved));
        on_service(
            &mut view,
            Event::Delete(service("api", "198.19.0.11", "81")),
        );
        let (_, state) = take(&mut view);
        assert_eq!(state, translated(&view));
        assert_eq!(state.services.len(), 2, "web's ClusterIP and node port");

        // A node change recomputes everything.
        on_node(&mut view, Event::Apply(node("198.18.0.2")));
        let (_, state) = take(&mut view);
        assert_eq!(state, translated(&view));
    }
}
