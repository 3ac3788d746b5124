//! One line of the monitor stream: an event as JSON ([`Record`]), or a note of events the
//! client missed ([`Line::Lost`]); and the event's one-line text form.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use jiff::Timestamp;
use lb_common::event::{hook, kind, Event};
use lb_common::{Counter, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use serde::{Deserialize, Serialize};

use crate::model::unmap_addr;

/// An event, enriched with the names the agent knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Wall-clock time of the event (RFC 3339, UTC).
    pub time: Timestamp,
    /// `drop`, `reject`, `new-flow` or `masquerade`.
    pub kind: String,
    /// The counter the data path counted for it (`drop_no_backend`, `new_flows`, ...).
    pub reason: String,
    /// `namespace/name:port` of the service, when known.
    pub service: Option<String>,
    /// The service's slot group id (0: none).
    pub service_id: u32,
    /// `tcp`, `udp`, or the protocol number; `None` when the packet was not parsed that far.
    pub protocol: Option<String>,
    /// The packet's source and destination as it arrived. A socket call's source is the
    /// socket's local address and port as bound when it called (`0.0.0.0:0`, or port 0,
    /// while the kernel has not picked them), its destination the Service address it asked
    /// for.
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// The backend a new flow got.
    pub backend: Option<SocketAddr>,
    /// The address and port a masqueraded flow's source was translated to.
    pub nat: Option<SocketAddr>,
    /// The interface's name, when it still exists (`None` for a socket call).
    pub iface: Option<String>,
    /// The interface's index (0 for a socket call).
    pub ifindex: u32,
    /// `xdp`, `tc-ingress`, `tc-egress` or `socket` (the cgroup socket programs' `connect4`
    /// and `sendmsg4`).
    pub hook: String,
}

/// One line of the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Event(Box<Record>),
    /// This many events were not sent to this client: it read too slowly.
    Lost {
        lost: u64,
    },
}

/// What the agent adds to an event.
pub struct Names {
    /// The event's wall-clock time.
    pub time: Timestamp,
    pub service: Option<String>,
    pub iface: Option<String>,
}

impl Record {
    /// The record of `event`; `None` for an event of an unknown kind or reason.
    pub fn new(event: &Event, names: Names) -> Option<Record> {
        let kind = match event.kind {
            kind::DROP => "drop",
            kind::REJECT => "reject",
            kind::NEW_FLOW => "new-flow",
            kind::MASQUERADE => "masquerade",
            _ => return None,
        };
        let hook = match event.hook {
            hook::XDP => "xdp",
            hook::TC_INGRESS => "tc-ingress",
            hook::TC_EGRESS => "tc-egress",
            hook::SOCKET => "socket",
            _ => "unknown",
        };
        let parsed = event.proto != 0;
        let socket = event.hook == hook::SOCKET;
        let addr =
            |addr, port: [u8; 2]| SocketAddr::new(unmap_addr(addr), u16::from_be_bytes(port));
        let end = |a, port| (parsed && a != [0; 16]).then(|| addr(a, port));
        // A socket's source is known as far as it was bound, 0.0.0.0:0 at the least.
        let source = match socket {
            true => Some(addr(event.src_addr, event.src_port)),
            false => end(event.src_addr, event.src_port),
        };
        Some(Record {
            time: names.time,
            kind: kind.into(),
            reason: event.counter()?.name().into(),
            service: names.service,
            service_id: event.group_id,
            protocol: parsed.then(|| protocol_name(event.proto)),
            source,
            destination: end(event.dst_addr, event.dst_port),
            backend: end(event.backend_addr, event.backend_port),
            nat: end(event.nat_addr, event.nat_port),
            iface: names.iface,
            ifindex: event.ifindex,
            hook: hook.into(),
        })
    }

    /// Whether `addr` is one of the event's addresses.
    pub fn involves(&self, addr: IpAddr) -> bool {
        [self.source, self.destination, self.backend, self.nat]
            .iter()
            .flatten()
            .any(|end| end.ip() == addr)
    }
}

fn protocol_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_SCTP => "sctp".into(),
        other => other.to_string(),
    }
}

/// The text form: `15:04:05.123 new-flow tcp 198.18.0.10:40000 -> 198.19.0.1:80 =>
/// 198.18.1.1:8080 svc e2e/web:http iface veth-a tc-ingress` (local time is not known to the
/// agent's container: UTC). Drops and rejects name their reason after the tuple, masquerade
/// allocations add `snat ADDR:PORT`; a socket call names no interface.
impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.time.strftime("%H:%M:%S%.3f"), self.kind)?;
        if let Some(protocol) = &self.protocol {
            write!(f, " {protocol}")?;
        }
        if let (Some(source), Some(destination)) = (self.source, self.destination) {
            write!(f, " {source} -> {destination}")?;
        }
        if let Some(backend) = self.backend {
            write!(f, " => {backend}")?;
        }
        if let Some(nat) = self.nat {
            write!(f, " snat {nat}")?;
        }
        if !matches!(self.kind.as_str(), "new-flow" | "masquerade") {
            write!(f, " reason {}", self.reason)?;
        }
        match &self.service {
            Some(service) => write!(f, " svc {service}")?,
            None if self.service_id != 0 => write!(f, " svc #{}", self.service_id)?,
            None => {}
        }
        match &self.iface {
            Some(iface) => write!(f, " iface {iface}")?,
            None if self.ifindex != 0 => write!(f, " ifindex {}", self.ifindex)?,
            None => {}
        }
        write!(f, " {}", self.hook)
    }
}

/// The counter named `name`, for `--reason`.
pub fn reason(name: &str) -> Result<Counter, String> {
    Counter::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| format!("{name:?} is no reason (a counter name such as drop_no_backend)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::ipv4_mapped;

    fn names() -> Names {
        Names {
            time: "2026-12-02T15:04:05.123456Z".parse().unwrap(),
            service: Some("e2e/web:http".into()),
            iface: Some("veth-a".into()),
        }
    }

    fn masquerade() -> Event {
        Event {
            timestamp_ns: 5,
            group_id: 3,
            reason: Counter::Masqueraded as u32,
            ifindex: 4,
            kind: kind::MASQUERADE,
            hook: hook::XDP,
            proto: IPPROTO_TCP,
            src_addr: ipv4_mapped([198, 18, 0, 10]),
            dst_addr: ipv4_mapped([198, 18, 0, 1]),
            backend_addr: ipv4_mapped([198, 18, 2, 7]),
            nat_addr: ipv4_mapped([198, 18, 0, 1]),
            src_port: 40000u16.to_be_bytes(),
            dst_port: 30080u16.to_be_bytes(),
            backend_port: 8080u16.to_be_bytes(),
            nat_port: 61234u16.to_be_bytes(),
            ..Event::ZERO
        }
    }

    #[test]
    fn a_masquerade_event_becomes_one_json_line_and_back() {
        let record = Record::new(&masquerade(), names()).unwrap();
        let json = serde_json::to_string(&Line::Event(Box::new(record.clone()))).unwrap();
        assert_eq!(
            json,
            r#"{"time":"2026-12-02T15:04:05.123456Z","kind":"masquerade","reason":"masqueraded","service":"e2e/web:http","service_id":3,"protocol":"tcp","source":"198.18.0.10:40000","destination":"198.18.0.1:30080","backend":"198.18.2.7:8080","nat":"198.18.0.1:61234","iface":"veth-a","ifindex":4,"hook":"xdp"}"#
        );
        assert_eq!(
            serde_json::from_str::<Line>(&json).unwrap(),
            Line::Event(Box::new(record))
        );
        assert_eq!(
            serde_json::from_str::<Line>(r#"{"lost":7}"#).unwrap(),
            Line::Lost { lost: 7 }
        );
    }

    #[test]
    fn the_text_form_shows_the_tuple_backend_and_names() {
        let record = Record::new(&masquerade(), names()).unwrap();
        assert_eq!(
            record.to_string(),
            "15:04:05.123 masquerade tcp 198.18.0.10:40000 -> 198.18.0.1:30080 => 198.18.2.7:8080 \
             snat 198.18.0.1:61234 svc e2e/web:http iface veth-a xdp"
        );
        let drop = Event {
            kind: kind::DROP,
            reason: Counter::DropUnallocatedServiceIp as u32,
            group_id: 0,
            proto: 0,
            ..masquerade()
        };
        let names = Names {
            service: None,
            iface: None,
            ..names()
        };
        assert_eq!(
            Record::new(&drop, names).unwrap().to_string(),
            "15:04:05.123 drop reason drop_unallocated_service_ip ifindex 4 xdp"
        );
    }

    #[test]
    fn a_socket_event_shows_its_source_as_bound_and_no_interface() {
        let connect = Event {
            kind: kind::NEW_FLOW,
            reason: Counter::NewFlows as u32,
            ifindex: 0,
            hook: hook::SOCKET,
            src_addr: ipv4_mapped([0; 4]),
            src_port: [0; 2],
            nat_addr: [0; 16],
            nat_port: [0; 2],
            ..masquerade()
        };
        let no_iface = || Names {
            iface: None,
            ..names()
        };
        let record = Record::new(&connect, no_iface()).unwrap();
        assert_eq!(record.source, Some("0.0.0.0:0".parse().unwrap()));
        assert_eq!(record.hook, "socket");
        assert_eq!(
            record.to_string(),
            "15:04:05.123 new-flow tcp 0.0.0.0:0 -> 198.18.0.1:30080 => 198.18.2.7:8080 \
             svc e2e/web:http socket"
        );
        let bound = Event {
            kind: kind::REJECT,
            reason: Counter::RejectNoBackend as u32,
            src_addr: ipv4_mapped([198, 18, 0, 10]),
            src_port: 40000u16.to_be_bytes(),
            backend_addr: [0; 16],
            backend_port: [0; 2],
            ..connect
        };
        assert_eq!(
            Record::new(&bound, no_iface()).unwrap().to_string(),
            "15:04:05.123 reject tcp 198.18.0.10:40000 -> 198.18.0.1:30080 reason \
             reject_no_backend svc e2e/web:http socket"
        );
    }

    #[test]
    fn an_event_of_an_unknown_kind_or_reason_has_no_record() {
        let unknown = Event {
            kind: 9,
            ..masquerade()
        };
        assert_eq!(Record::new(&unknown, names()), None);
        let bogus = Event {
            reason: Counter::COUNT,
            ..masquerade()
        };
        assert_eq!(Record::new(&bogus, names()), None);
        assert!(Record::new(&masquerade(), names())
            .unwrap()
            .involves("198.18.2.7".parse().unwrap()));
    }
}
