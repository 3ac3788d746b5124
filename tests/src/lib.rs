//! Test harness for the load balancer, shared by the integration tests and `cargo xtask demo`.
//!
//! - [`apiserver`]: an in-memory Kubernetes API server (Services, EndpointSlices, Nodes) with
//!   real list/watch semantics, for the agent's Kubernetes mode (feature `kube`, default).
//! - [`netns`]: named network namespaces that delete themselves, and running code inside one.
//! - [`topology`]: a "node" namespace with pod namespaces on /32 veth routes, as kind's ptp CNI.
//! - [`servers`]: real TCP and UDP servers in pods that answer with their pod name, and clients.
//! - [`agent`]: the real `lb-agent` binary running in the node namespace.
//! - [`monitor`]: `lb-agent monitor` running beside it, its output collected.
//! - [`cgroup`]: test cgroups and client processes inside them, for socket-level translation.
//! - [`cluster`]: all of the above running the example Service.
//! - [`deploy`]: `manifests/deploy/` parsed, and the agent's container as the kubelet resolves
//!   it (feature `kube`).
//! - [`podman`]: the agent's image assembled from the build output, run by podman + runc as
//!   the DaemonSet declares it (feature `kube`).
//! - [`example`]: the example Service in `manifests/examples/` and its EndpointSlice.
//! - [`load`]: client traffic that counts lost requests and broken connections.
//! - [`root`]: skipping tests loudly when not root.
//! - [`bpftool`]: dumping and changing pinned maps by their raw bytes, as an operator would.
//! - [`counting_program`]: a packet-counting TC program standing for another tool's on the
//!   agent's hook.
//! - [`scrape`]: HTTP GET against the agent's metrics and health ports, metric lookups.
//! - [`bench`]: `cargo xtask bench`, the benchmarks against kube-proxy-style rules (options
//!   always; the rest with feature `bench`, default).
//!
//! Live traffic stays inside namespaces created here, on 198.18.0.0/15 addresses. Every guard
//! removes what it created on drop, also when a test panics.

pub mod agent;
#[cfg(feature = "kube")]
pub mod apiserver;
pub mod bench;
pub mod bpftool;
pub mod cgroup;
pub mod cluster;
pub mod cmd;
pub mod counting_program;
#[cfg(feature = "kube")]
pub mod deploy;
pub mod error;
pub mod example;
pub mod inspect_output;
pub mod load;
pub mod monitor;
pub mod netns;
#[cfg(feature = "kube")]
pub mod podman;
pub mod raw_bpf;
pub mod root;
pub mod scrape;
pub mod servers;
pub mod topology;

pub use error::{Error, Result};
