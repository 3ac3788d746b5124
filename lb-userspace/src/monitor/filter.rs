//! Which events `lb-agent monitor` prints: every flag given must match (several `--reason`s,
//! `--kind`s or `--hook`s: any of them).

use std::net::IpAddr;

use lb_common::Counter;

use super::record::Record;
use crate::inspect::ServiceFilter;

/// An event kind, as `--kind` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Drop,
    Reject,
    NewFlow,
    Masquerade,
}

impl Kind {
    /// The name records carry.
    fn name(self) -> &'static str {
        match self {
            Kind::Drop => "drop",
            Kind::Reject => "reject",
            Kind::NewFlow => "new-flow",
            Kind::Masquerade => "masquerade",
        }
    }
}

/// Where an event happened, as `--hook` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
    /// The cgroup socket programs (`connect4`, `sendmsg4`).
    Socket,
}

impl Hook {
    /// The name records carry.
    fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc-ingress",
            Hook::TcEgress => "tc-egress",
            Hook::Socket => "socket",
        }
    }
}

/// The filters of one `monitor` run; the default matches everything.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub service: Option<ServiceFilter>,
    pub reasons: Vec<Counter>,
    pub address: Option<IpAddr>,
    pub kinds: Vec<Kind>,
    pub hooks: Vec<Hook>,
}

impl EventFilter {
    pub fn matches(&self, record: &Record) -> bool {
        self.service.as_ref().is_none_or(|s| {
            record
                .service
                .as_deref()
                .is_some_and(|name| s.matches(name))
        }) && (self.reasons.is_empty() || self.reasons.iter().any(|r| r.name() == record.reason))
            && self.address.is_none_or(|addr| record.involves(addr))
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k.name() == record.kind))
            && (self.hooks.is_empty() || self.hooks.iter().any(|h| h.name() == record.hook))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, reason: &str, service: Option<&str>) -> Record {
        record_at(kind, reason, service, "tc-ingress")
    }

    fn record_at(kind: &str, reason: &str, service: Option<&str>, hook: &str) -> Record {
        serde_json::from_value(serde_json::json!({
            "time": "2026-12-02T15:04:05Z", "kind": kind, "reason": reason,
            "service": service, "service_id": 3, "protocol": "tcp",
            "source": "198.18.0.10:40000", "destination": "198.19.0.1:80",
            "backend": "198.18.1.1:8080", "nat": null, "iface": "veth-a", "ifindex": 4,
            "hook": hook,
        }))
        .unwrap()
    }

    #[test]
    fn every_given_filter_must_match() {
        let new_flow = record("new-flow", "new_flows", Some("e2e/web:http"));
        let reject = record("reject", "reject_no_backend", Some("e2e/empty:http"));
        let nameless = record("drop", "drop_unallocated_service_ip", None);
        let all = EventFilter::default();
        assert!([&new_flow, &reject, &nameless]
            .iter()
            .all(|r| all.matches(r)));

        let web = EventFilter {
            service: Some("e2e/web".parse().unwrap()),
            ..EventFilter::default()
        };
        assert!(web.matches(&new_flow) && !web.matches(&reject) && !web.matches(&nameless));
        let web_dns = EventFilter {
            service: Some("e2e/web:dns".parse().unwrap()),
            ..EventFilter::default()
        };
        assert!(!web_dns.matches(&new_flow));

        let rejects = EventFilter {
            reasons: vec![Counter::RejectNoBackend, Counter::DropNoBackend],
            ..EventFilter::default()
        };
        assert!(rejects.matches(&reject) && !rejects.matches(&new_flow));
        let kinds = EventFilter {
            kinds: vec![Kind::NewFlow, Kind::Drop],
            ..EventFilter::default()
        };
        assert!(kinds.matches(&new_flow) && kinds.matches(&nameless) && !kinds.matches(&reject));

        let backend = EventFilter {
            address: Some("198.18.1.1".parse().unwrap()),
            ..EventFilter::default()
        };
        assert!(backend.matches(&new_flow));
        let elsewhere = EventFilter {
            address: Some("198.18.9.9".parse().unwrap()),
            ..backend.clone()
        };
        assert!(!elsewhere.matches(&new_flow));
        let both = EventFilter {
            kinds: vec![Kind::Reject],
            ..backend
        };
        assert!(!both.matches(&new_flow), "the kind does not match");
    }

    #[test]
    fn hooks_select_socket_calls_or_packets() {
        let packet = record("new-flow", "new_flows", Some("e2e/web:http"));
        let socket = record_at("new-flow", "new_flows", Some("e2e/web:http"), "socket");
        let sockets = EventFilter {
            hooks: vec![Hook::Socket],
            ..EventFilter::default()
        };
        assert!(sockets.matches(&socket) && !sockets.matches(&packet));
        let packets = EventFilter {
            hooks: vec![Hook::Xdp, Hook::TcIngress],
            ..EventFilter::default()
        };
        assert!(packets.matches(&packet) && !packets.matches(&socket));
    }
}
