//! The node's network interfaces, followed through rtnetlink: which ones are pod-facing
//! (matched by name patterns), when they appear and vanish, and which one carries the default
//! route (the external interface).

mod default_route;
mod pattern;
mod watch;

pub use default_route::default_route_iface;
pub use pattern::{IfacePattern, IfacePatterns, PatternError, DEFAULT_PATTERNS};
pub use watch::{Link, LinkEvent, LinkWatcher};

/// Talking rtnetlink failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening an rtnetlink socket failed")]
    Socket(#[source] std::io::Error),
    #[error("sending an rtnetlink request failed")]
    Send(#[source] std::io::Error),
    #[error("receiving from rtnetlink failed")]
    Receive(#[source] std::io::Error),
    #[error("the kernel answered an rtnetlink request with an error: {0}")]
    Kernel(std::io::Error),
}
