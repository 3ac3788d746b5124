//! Kubernetes objects -> desired state, independent of where the objects come from (manifest
//! files or the API server).

pub mod desired;
mod endpoints;
mod fields;
mod frontends;
pub mod health_check;
pub mod node;
pub mod nodeport_addresses;
pub mod service;
pub mod service_cidr;
pub mod slice;
#[cfg(test)]
mod tests;
pub mod translate;

pub use desired::DesiredTracker;
pub use health_check::health_check;
pub use node::NodeDef;
pub use nodeport_addresses::{NodePortAddress, NodePortAddresses};
pub use service::{ServiceDef, TrafficPolicy, DEFAULT_AFFINITY_TIMEOUT_S};
pub use service_cidr::ServiceCidrDef;
pub use slice::{SliceDef, SERVICE_NAME_LABEL};
pub use translate::{desired_state, owner, service_frontends};
