//! The four workloads: live traffic (new connections, established), per-packet cost, and the
//! control plane (programming time, endpoint changes, agent memory).

pub mod agent_memory;
pub mod control_plane;
pub mod per_packet;
pub mod traffic;
