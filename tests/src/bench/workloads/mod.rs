//! The workloads: live traffic (new connections, established), per-packet cost, the control
//! plane (programming time, endpoint changes, agent memory), Kubernetes-mode sync latency
//! (with the scrape cost at a full conntrack) and the reply paths.

pub mod agent_memory;
pub mod control_plane;
pub mod per_packet;
pub mod reply_path;
pub mod scrape_cost;
pub mod sync_latency;
pub mod traffic;
