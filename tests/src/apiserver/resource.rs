//! The resource types the server stores, and the typed objects of the in-process API.

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
        networking::v1::ServiceCIDR,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{de::DeserializeOwned, Serialize};

/// A resource type the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `v1` Services (namespaced).
    Services,
    /// `discovery.k8s.io/v1` EndpointSlices (namespaced).
    EndpointSlices,
    /// `v1` Nodes (cluster-scoped).
    Nodes,
    /// `networking.k8s.io/v1` ServiceCIDRs (cluster-scoped; Kubernetes 1.33).
    ServiceCidrs,
}

impl Resource {
    /// Every resource, for routing.
    pub const ALL: [Resource; 4] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
        Resource::ServiceCidrs,
    ];

    /// `apiVersion` of its objects.
    pub const fn api_version(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::ServiceCidrs => "networking.k8s.io/v1",
        }
    }

    /// `kind` of its objects.
    pub const fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
            Resource::ServiceCidrs => "ServiceCIDR",
        }
    }

    /// The name in request paths.
    pub const fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
            Resource::ServiceCidrs => "servicecidrs",
        }
    }

    /// Whether objects live in a namespace.
    pub const fn namespaced(self) -> bool {
        !matches!(self, Resource::Nodes | Resource::ServiceCidrs)
    }

    /// Path prefix of its API group and version (`/api/v1`, `/apis/<group>/<version>`).
    pub const fn group_prefix(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "/api/v1",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1",
            Resource::ServiceCidrs => "/apis/networking.k8s.io/v1",
        }
    }
}

/// A typed object the in-process API accepts: one of the served resources.
pub trait Object: Serialize + DeserializeOwned + Clone {
    /// The resource it belongs to.
    const RESOURCE: Resource;

    /// Its metadata.
    fn meta(&self) -> &ObjectMeta;
}

macro_rules! object {
    ($type:ty, $resource:expr) => {
        impl Object for $type {
            const RESOURCE: Resource = $resource;

            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
        }
    };
}

object!(Service, Resource::Services);
object!(EndpointSlice, Resource::EndpointSlices);
object!(Node, Resource::Nodes);
object!(ServiceCIDR, Resource::ServiceCidrs);
