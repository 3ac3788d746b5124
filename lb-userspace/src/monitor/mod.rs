//! `lb-agent monitor`: a live stream of the data path's events (`lb_common::event`: drops,
//! rejects, new flows, masquerade allocations). The agent serves them on a unix socket
//! ([`server`]) as JSON lines ([`record`]), each enriched with the service's name, the
//! interface's name and the reason's counter name; the `monitor` subcommand ([`client`])
//! filters and prints them. While no client is connected the kernel writes none of them
//! but the drops its log wants.

pub mod client;
pub mod filter;
pub mod record;
pub mod server;

/// Where the agent serves the stream by default.
pub const DEFAULT_SOCKET: &str = "/run/lb-agent/monitor.sock";
