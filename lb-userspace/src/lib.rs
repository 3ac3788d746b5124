//! Node agent of the eBPF service load balancer: loads the data path ([`datapath`]), turns
//! Kubernetes Services and EndpointSlices from manifest files or the API server ([`source`],
//! [`manifests`], [`objects`], [`k8s`]) into a desired state ([`model`]) and programs it into
//! the maps ([`reconciler`]), all driven by [`agent`], which follows the node's interfaces
//! ([`links`]) and reports through [`metrics`], [`health`] and [`monitor`].

pub mod agent;
pub mod bpffs;
pub mod datapath;
pub mod error;
pub mod health;
pub mod inspect;
pub mod k8s;
pub mod links;
pub mod maglev;
pub mod manifests;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod objects;
pub mod reconciler;
pub mod source;
pub mod trace;

pub use datapath::{Capacities, Datapath, DatapathMaps};
pub use reconciler::{MapReader, MapWriter, Reconciler};
