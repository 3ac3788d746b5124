//! The workloads: live traffic (new connections, established), per-packet cost, the control
//! plane (programming time, endpoint changes, agent memory) and Kubernetes-mode sync latency.

pub mod agent_memory;
pub mod control_plane;
pub mod per_packet;
pub mod sync_latency;
pub mod traffic;
