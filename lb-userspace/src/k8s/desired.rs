//! The desired state kept up to date one Service at a time, as kube-proxy's change tracker
//! does: a changed Service or EndpointSlice recomputes only that Service's frontends, and every
//! other frontend keeps its `Arc`, which the reconciler recognises as already written.
//!
//! Two Services may claim one frontend (the same IP, port and protocol). As in a full
//! translation, the first by namespace and name owns it, whatever order the changes arrive
//! in; the others wait in `contested` and the next one takes over when the owner lets go.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use tracing::warn;

use crate::model::{DesiredService, DesiredState, Frontend, HealthCheck};
use crate::objects::ObjectKey;

/// A desired state and, per Service, the frontends it claims.
#[derive(Debug, Default)]
pub struct DesiredTracker {
    /// Shared with what was published: changed in place unless a reader still holds it.
    state: Arc<DesiredState>,
    /// Frontends added, changed or removed since [`DesiredTracker::publish`].
    changed: BTreeSet<Frontend>,
    /// Each Service's frontends as last computed, owned or not.
    claims: HashMap<ObjectKey, Vec<(Frontend, Arc<DesiredService>)>>,
    /// Services that claim a frontend another Service owns.
    contested: HashMap<Frontend, BTreeSet<ObjectKey>>,
}

impl DesiredTracker {
    /// The desired state as it stands.
    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    pub fn into_state(self) -> DesiredState {
        Arc::unwrap_or_clone(self.state)
    }

    /// The state to publish, and the frontends changed since the last call.
    pub fn publish(&mut self) -> (Arc<DesiredState>, BTreeSet<Frontend>) {
        (Arc::clone(&self.state), std::mem::take(&mut self.changed))
    }

    /// Replaces the service CIDRs; no frontend changes.
    pub fn set_service_cidrs(&mut self, cidrs: BTreeSet<IpNet>) {
        if self.state.service_cidrs != cidrs {
            Arc::make_mut(&mut self.state).service_cidrs = cidrs;
        }
    }

    fn set(&mut self, frontend: Frontend, desired: Option<Arc<DesiredService>>) {
        let services = &mut Arc::make_mut(&mut self.state).services;
        match desired {
            Some(desired) => services.insert(frontend, desired),
            None => services.remove(&frontend),
        };
        self.changed.insert(frontend);
    }

    /// Replaces what `service` claims with `frontends` (empty for a deleted or unproxied
    /// Service) and its health check.
    pub fn update(
        &mut self,
        service: ObjectKey,
        frontends: Vec<(Frontend, DesiredService)>,
        health_check: Option<HealthCheck>,
    ) {
        self.set_health_check(&service, health_check);
        // A new allocation of the exact size: collecting in place would keep `frontends`'
        // (larger) one for as long as the claims live.
        let mut claimed = Vec::with_capacity(frontends.len());
        claimed.extend(
            frontends
                .into_iter()
                .map(|(frontend, desired)| (frontend, Arc::new(desired))),
        );
        let previous = self.claims.remove(&service).unwrap_or_default();
        for (frontend, _) in &previous {
            if !claimed.iter().any(|(f, _)| f == frontend) {
                self.release(*frontend, &service);
            }
        }
        for (frontend, desired) in &claimed {
            self.claim(*frontend, &service, desired);
        }
        if !claimed.is_empty() {
            self.claims.insert(service, claimed);
        }
    }

    /// Changes the health checks' `Arc` only when `service`'s changed, so an unchanged one
    /// tells the agent there is nothing to compare.
    fn set_health_check(&mut self, service: &ObjectKey, health_check: Option<HealthCheck>) {
        if self.state.health_checks.get(service) == health_check.as_ref() {
            return;
        }
        let checks = Arc::make_mut(&mut Arc::make_mut(&mut self.state).health_checks);
        match health_check {
            Some(check) => checks.insert(service.clone(), check),
            None => checks.remove(service),
        };
    }

    /// `service` claims `frontend`: it owns it unless a Service first by namespace and name
    /// does.
    fn claim(&mut self, frontend: Frontend, service: &ObjectKey, desired: &Arc<DesiredService>) {
        let Some(owner) = self.state.services.get(&frontend).map(|d| owner_of(d)) else {
            return self.set(frontend, Some(Arc::clone(desired)));
        };
        if owner == *service {
            return self.set(frontend, Some(Arc::clone(desired)));
        }
        let (keeper, waiter) = match owner < *service {
            true => (owner, service.clone()),
            false => (service.clone(), owner),
        };
        warn!(
            "{frontend} is claimed by both {} and {}; keeping {}",
            self.state.services[&frontend].name,
            desired.name,
            owner_name(&keeper)
        );
        if keeper == *service {
            self.set(frontend, Some(Arc::clone(desired)));
        }
        self.contested.entry(frontend).or_default().insert(waiter);
    }

    /// `service` no longer claims `frontend`: the next claimant, if any, takes it over.
    fn release(&mut self, frontend: Frontend, service: &ObjectKey) {
        let owned = self
            .state
            .services
            .get(&frontend)
            .is_some_and(|d| owner_of(d) == *service);
        let waiting = self.contested.get_mut(&frontend);
        if !owned {
            if let Some(waiting) = waiting {
                waiting.remove(service);
                if waiting.is_empty() {
                    self.contested.remove(&frontend);
                }
            }
            return;
        }
        let next = waiting.and_then(|waiting| waiting.pop_first());
        if self
            .contested
            .get(&frontend)
            .is_some_and(BTreeSet::is_empty)
        {
            self.contested.remove(&frontend);
        }
        let successor = next.and_then(|next| {
            self.claims
                .get(&next)
                .and_then(|claims| claims.iter().find(|(f, _)| *f == frontend))
                .map(|(_, desired)| Arc::clone(desired))
        });
        self.set(frontend, successor);
    }
}

/// The Service a desired frontend belongs to.
fn owner_of(desired: &DesiredService) -> ObjectKey {
    ObjectKey::new(&desired.name.namespace, &desired.name.name)
}

fn owner_name(service: &ObjectKey) -> String {
    format!("{}/{}", service.namespace, service.name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::{Protocol, ServicePortName};

    fn frontend(port: u16) -> Frontend {
        Frontend {
            addr: "198.19.0.10".parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn service(name: &str) -> ObjectKey {
        ObjectKey::new("shop", name)
    }

    fn claim(name: &str, ports: &[u16]) -> Vec<(Frontend, DesiredService)> {
        let port_name = ServicePortName {
            namespace: "shop".into(),
            name: name.into(),
            port_name: String::new(),
        };
        let desired = DesiredService::uniform(port_name, BTreeSet::new());
        ports
            .iter()
            .map(|p| (frontend(*p), desired.clone()))
            .collect()
    }

    /// Owner of each frontend.
    fn owners(tracker: &DesiredTracker) -> Vec<(u16, String)> {
        let services = &tracker.state().services;
        services
            .iter()
            .map(|(f, d)| (f.port, d.name.name.clone()))
            .collect()
    }

    #[test]
    fn the_first_service_by_name_owns_a_contested_frontend_whatever_the_order() {
        for order in [["a", "b"], ["b", "a"]] {
            let mut tracker = DesiredTracker::default();
            for name in order {
                tracker.update(service(name), claim(name, &[80, 81]), None);
            }
            assert_eq!(owners(&tracker), [(80, "a".into()), (81, "a".into())]);

            // The owner lets go of 80: the other claimant takes it over.
            tracker.update(service("a"), claim("a", &[81]), None);
            assert_eq!(owners(&tracker), [(80, "b".into()), (81, "a".into())]);
            // Deleted: everything goes to the one left.
            tracker.update(service("a"), Vec::new(), None);
            assert_eq!(owners(&tracker), [(80, "b".into()), (81, "b".into())]);
            tracker.update(service("b"), Vec::new(), None);
            assert!(owners(&tracker).is_empty());
            assert!(tracker.contested.is_empty() && tracker.claims.is_empty());
        }
    }

    #[test]
    fn an_unchanged_service_keeps_its_arc() {
        let mut tracker = DesiredTracker::default();
        tracker.update(service("a"), claim("a", &[80]), None);
        tracker.update(service("b"), claim("b", &[90]), None);
        let before = Arc::clone(&tracker.state().services[&frontend(80)]);
        tracker.update(service("b"), claim("b", &[91]), None);
        assert!(Arc::ptr_eq(
            &before,
            &tracker.state().services[&frontend(80)]
        ));
        assert_eq!(owners(&tracker), [(80, "a".into()), (91, "b".into())]);
    }

    #[test]
    fn the_health_checks_change_their_arc_only_when_one_changes() {
        let mut tracker = DesiredTracker::default();
        let check = |local_endpoints| HealthCheck {
            port: 32000,
            local_endpoints,
            addrs: [std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)].into(),
        };
        tracker.update(service("a"), claim("a", &[80]), Some(check(0)));
        let before = Arc::clone(&tracker.state().health_checks);
        tracker.update(service("a"), claim("a", &[81]), Some(check(0)));
        tracker.update(service("b"), claim("b", &[90]), None);
        assert!(Arc::ptr_eq(&before, &tracker.state().health_checks));

        tracker.update(service("a"), claim("a", &[81]), Some(check(2)));
        assert_eq!(
            tracker.state().health_checks.get(&service("a")),
            Some(&check(2))
        );
        tracker.update(service("a"), Vec::new(), None);
        assert!(tracker.state().health_checks.is_empty());
    }
}
