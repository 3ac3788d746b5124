//! `lb-agent trace`: a packet described on the command line, or each packet of a capture
//! ([`capture`]), run through a dry-run copy of the live programs ([`DryRun`]) at the hook of
//! an interface ([`iface`]) or one named, and what they would do with it: the verdict, the
//! Service and backend, the headers before and after, the conntrack entries and counters.

mod capture;
mod iface;

pub use capture::{read as read_capture, CaptureError};
pub use iface::{hook_name, resolve as resolve_iface, Arrival, Iface, IfaceError};

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;

use lb_common::net::{
    tcp_flags, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_common::TraceRecord;
use lb_frames::{Frame, Frame6, L4};
use serde_json::json;

use crate::datapath::{DatapathError, DatapathMaps, DryRun, TraceHook};

/// The transport of a traced packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceProtocol {
    Tcp,
    Udp,
}

/// A packet to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub protocol: TraceProtocol,
    /// TCP flags (`lb_common::net::tcp_flags` bits); ignored for UDP.
    pub tcp_flags: u8,
}

/// `--from` and `--to` name addresses of different families.
#[derive(Debug, thiserror::Error)]
#[error("--from {from} and --to {to} are of different address families")]
pub struct MixedFamilies {
    from: SocketAddr,
    to: SocketAddr,
}

impl Packet {
    /// The Ethernet frame of the packet (a TCP segment without payload, or an empty datagram),
    /// IPv4 or IPv6 as its addresses are.
    pub fn frame(&self) -> Result<Vec<u8>, MixedFamilies> {
        let l4 = match self.protocol {
            TraceProtocol::Tcp => L4::tcp(self.from.port(), self.to.port(), self.tcp_flags),
            TraceProtocol::Udp => L4::udp(self.from.port(), self.to.port(), &[]),
        };
        match (self.from, self.to) {
            (SocketAddr::V4(from), SocketAddr::V4(to)) => {
                Ok(Frame::tcp(from, to, 0).with_l4(l4).to_bytes())
            }
            (SocketAddr::V6(from), SocketAddr::V6(to)) => {
                Ok(Frame6::new(*from.ip(), *to.ip(), l4).to_bytes())
            }
            (from, to) => Err(MixedFamilies { from, to }),
        }
    }
}

const FLAG_NAMES: [(&str, u8); 5] = [
    ("syn", tcp_flags::SYN),
    ("ack", tcp_flags::ACK),
    ("fin", tcp_flags::FIN),
    ("rst", tcp_flags::RST),
    ("psh", tcp_flags::PSH),
];

/// Parses `--tcp-flags`: comma-separated names (`syn`, `ack`, `fin`, `rst`, `psh`).
pub fn parse_tcp_flags(text: &str) -> Result<u8, String> {
    text.split(',').try_fold(0, |flags, name| {
        FLAG_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .map(|(_, bit)| flags | bit)
            .ok_or_else(|| format!("{name:?} is not one of syn, ack, fin, rst, psh"))
    })
}

/// A frame's addresses as one line: `198.18.1.2:40000 -> 198.19.0.10:80 TCP [syn]`, IPv6
/// ones bracketed: `[2001:2::a]:40000 -> [2001:2:0:53::10]:80 TCP [syn]`.
fn header(frame: &[u8]) -> String {
    let parsed = match lb_frames::parse(frame) {
        Ok(p) => Some((
            IpAddr::from(p.src),
            IpAddr::from(p.dst),
            p.protocol,
            p.ports,
            p.tcp_flags,
        )),
        Err(_) => lb_frames::parse6(frame).ok().map(|p| {
            let flags = frame.get(p.l4_offset + TCP_FLAGS).copied();
            (p.src.into(), p.dst.into(), p.protocol, p.ports, flags)
        }),
    };
    let Some((src, dst, protocol, ports, flags)) = parsed else {
        return format!("unparsed frame of {} bytes", frame.len());
    };
    let (sport, dport) = ports.unwrap_or_default();
    let (from, to) = (SocketAddr::new(src, sport), SocketAddr::new(dst, dport));
    match protocol {
        IPPROTO_TCP => {
            let flags = flags.unwrap_or_default();
            let names: Vec<_> = FLAG_NAMES
                .iter()
                .filter(|(_, bit)| flags & bit != 0)
                .map(|(n, _)| *n)
                .collect();
            format!("{from} -> {to} TCP [{}]", names.join(","))
        }
        IPPROTO_UDP => format!("{from} -> {to} UDP"),
        IPPROTO_SCTP => format!("{from} -> {to} SCTP"),
        IPPROTO_ICMP => format!("{src} -> {dst} ICMP"),
        IPPROTO_ICMPV6 => format!("{src} -> {dst} ICMPv6"),
        other => format!("{src} -> {dst} protocol {other}"),
    }
}

/// Offset of the TCP flags byte in the TCP header.
const TCP_FLAGS: usize = 13;

/// The verdict's name for a program's return code.
fn verdict(hook: TraceHook, code: u32) -> String {
    match (hook, code) {
        (TraceHook::Tc, u32::MAX) => "pass".into(),
        (TraceHook::Tc, 0) => "ok".into(),
        (TraceHook::Tc, 2) | (TraceHook::Xdp, 1) => "drop".into(),
        (TraceHook::Tc, 7) | (TraceHook::Xdp, 4) => "redirect".into(),
        (TraceHook::Xdp, 2) => "pass".into(),
        (TraceHook::Xdp, 3) => "tx".into(),
        (_, other) => format!("return code {other}"),
    }
}

/// What the programs would do with a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Its number in the capture it came from (from 1).
    pub packet: Option<usize>,
    pub hook: TraceHook,
    /// The interface it arrived on, if one was named.
    pub iface: Option<String>,
    pub verdict: String,
    pub before: String,
    /// The frame as the program left it (an ICMP error for a reject).
    pub after: String,
    /// `namespace/name:port` of the slot group whose counters would move, and its id.
    pub service: Option<(u32, Option<String>)>,
    /// The backend the packet goes to (of the entry it matched or would create).
    pub backend: Option<(u32, Option<SocketAddr>)>,
    pub record: TraceRecord,
    /// Node-wide counters and how much they would move.
    pub counters: Vec<(&'static str, u64)>,
}

/// A dry-run copy of the programs sharing the maps pinned in a directory, tracing frames at
/// one arrival point; the live maps are not changed, so each frame meets them as they are
/// (a traced SYN leaves no entry for a traced ACK after it).
pub struct Tracer {
    maps: DatapathMaps,
    dry_run: DryRun,
    arrival: Arrival,
}

impl Tracer {
    /// Loads the copy on the maps pinned in `maps_dir`.
    pub fn load(maps_dir: &Path, arrival: Arrival) -> Result<Self, DatapathError> {
        Ok(Self {
            maps: DatapathMaps::from_pins(maps_dir)?,
            dry_run: DryRun::load(maps_dir)?,
            arrival,
        })
    }

    /// Runs `frame` (Ethernet, as it arrives) through the hook once.
    pub fn trace(&mut self, frame: &[u8]) -> Result<Report, DatapathError> {
        let hook = self.arrival.hook;
        let iface = self.arrival.iface.as_ref();
        let result = self.dry_run.run(hook, iface.map(|i| i.index), frame)?;
        let record = result.record;
        let service = match record.group_id {
            0 => None,
            id => Some((id, self.maps.service_name(id)?)),
        };
        let backend_id = match record.conntrack_backend_id {
            0 => record.new_backend_id,
            id => id,
        };
        let backend = match backend_id {
            0 => None,
            id => {
                let addr = self.maps.backends()?.into_iter().find(|(b, _)| *b == id);
                let addr = addr.map(|(_, b)| {
                    let ip = Ipv6Addr::from(b.addr);
                    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
                    SocketAddr::new(ip, u16::from_be_bytes(b.port))
                });
                Some((id, addr))
            }
        };
        Ok(Report {
            packet: None,
            hook,
            iface: iface.map(|i| i.name.clone()),
            verdict: verdict(hook, result.return_value),
            before: header(frame),
            after: header(&result.frame),
            service,
            backend,
            record,
            counters: result
                .counters
                .into_iter()
                .map(|(c, n)| (c.name(), n))
                .collect(),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.packet {
            writeln!(f, "packet:    {n}")?;
        }
        match &self.iface {
            Some(iface) => writeln!(f, "hook:      {} on {iface}", hook_name(self.hook))?,
            None => writeln!(f, "hook:      {}", hook_name(self.hook))?,
        }
        writeln!(f, "verdict:   {}", self.verdict)?;
        writeln!(f, "before:    {}", self.before)?;
        writeln!(f, "after:     {}", self.after)?;
        match &self.service {
            Some((id, name)) => {
                let name = name.as_deref().unwrap_or("(no name)");
                writeln!(f, "service:   {name} (slot group {id})")?
            }
            None => writeln!(f, "service:   -")?,
        }
        match &self.backend {
            Some((id, Some(addr))) => writeln!(f, "backend:   {addr} (id {id})")?,
            Some((id, None)) => writeln!(f, "backend:   id {id} (not in LB_BACKENDS)")?,
            None => writeln!(f, "backend:   -")?,
        }
        let r = &self.record;
        let matched = match r.conntrack_backend_id {
            0 => "no entry matched".to_string(),
            id => format!("matched an entry (backend id {id})"),
        };
        writeln!(
            f,
            "conntrack: {matched}; would create {}, remove {}",
            r.new_entries, r.removed_entries
        )?;
        let counters: Vec<_> = self
            .counters
            .iter()
            .map(|(name, n)| format!("{name} +{n}"))
            .collect();
        writeln!(f, "counters:  {}", counters.join(", "))
    }
}

impl Report {
    /// The report as one JSON document.
    pub fn to_json(&self) -> String {
        let counters: serde_json::Map<_, _> = self
            .counters
            .iter()
            .map(|(name, n)| (name.to_string(), json!(n)))
            .collect();
        let doc = json!({
            "packet": self.packet,
            "hook": hook_name(self.hook),
            "iface": self.iface,
            "verdict": self.verdict,
            "before": self.before,
            "after": self.after,
            "service": self.service.as_ref().map(|(id, name)| json!({"group_id": id, "name": name})),
            "backend": self.backend.as_ref().map(|(id, addr)| json!({"id": id, "addr": addr.map(|a| a.to_string())})),
            "conntrack": {
                "matched_backend_id": self.record.conntrack_backend_id,
                "new_entries": self.record.new_entries,
                "removed_entries": self.record.removed_entries,
            },
            "counters": counters,
        });
        format!("{doc}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_flags_parse_by_name_and_reject_unknown_ones() {
        assert_eq!(parse_tcp_flags("syn"), Ok(tcp_flags::SYN));
        assert_eq!(
            parse_tcp_flags("SYN, ack"),
            Ok(tcp_flags::SYN | tcp_flags::ACK)
        );
        assert!(parse_tcp_flags("syn,urg").unwrap_err().contains("\"urg\""));
    }

    #[test]
    fn headers_name_addresses_ports_protocol_and_flags() {
        let packet = Packet {
            from: "198.18.1.2:40000".parse().unwrap(),
            to: "198.19.0.10:80".parse().unwrap(),
            protocol: TraceProtocol::Tcp,
            tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
        };
        assert_eq!(
            header(&packet.frame().unwrap()),
            "198.18.1.2:40000 -> 198.19.0.10:80 TCP [syn,ack]"
        );
        let udp = Packet {
            protocol: TraceProtocol::Udp,
            ..packet.clone()
        };
        assert_eq!(
            header(&udp.frame().unwrap()),
            "198.18.1.2:40000 -> 198.19.0.10:80 UDP"
        );
        let six = Packet {
            from: "[2001:2::a]:40000".parse().unwrap(),
            to: "[2001:2:0:53::10]:80".parse().unwrap(),
            ..packet.clone()
        };
        assert_eq!(
            header(&six.frame().unwrap()),
            "[2001:2::a]:40000 -> [2001:2:0:53::10]:80 TCP [syn,ack]"
        );
        let mixed = Packet {
            to: six.to,
            ..packet
        };
        assert!(mixed
            .frame()
            .unwrap_err()
            .to_string()
            .contains("different address families"));
        assert_eq!(header(&[0; 10]), "unparsed frame of 10 bytes");
    }

    #[test]
    fn verdicts_are_named_per_hook() {
        assert_eq!(verdict(TraceHook::Tc, u32::MAX), "pass");
        assert_eq!(verdict(TraceHook::Xdp, 1), "drop");
        assert_eq!(verdict(TraceHook::Xdp, 3), "tx");
        assert_eq!(verdict(TraceHook::Tc, 9), "return code 9");
    }

    #[test]
    fn a_report_prints_one_line_per_finding() {
        let report = Report {
            packet: Some(2),
            hook: TraceHook::Tc,
            iface: Some("veth1".into()),
            verdict: "pass".into(),
            before: "a".into(),
            after: "b".into(),
            service: Some((3, Some("default/web:http".into()))),
            backend: Some((7, Some("198.18.2.2:8080".parse().unwrap()))),
            record: TraceRecord {
                group_id: 3,
                new_backend_id: 7,
                new_entries: 2,
                ..TraceRecord::default()
            },
            counters: vec![("packets", 1), ("new_flows", 1)],
        };
        let text = report.to_string();
        assert!(
            text.starts_with("packet:    2\nhook:      tc on veth1\n"),
            "{text}"
        );
        assert!(
            text.contains("service:   default/web:http (slot group 3)\n"),
            "{text}"
        );
        assert!(
            text.contains("backend:   198.18.2.2:8080 (id 7)\n"),
            "{text}"
        );
        assert!(
            text.contains("no entry matched; would create 2, remove 0\n"),
            "{text}"
        );
        assert!(
            text.contains("counters:  packets +1, new_flows +1\n"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["backend"]["addr"], "198.18.2.2:8080");
        assert_eq!(json["counters"]["new_flows"], 1);
        assert_eq!(
            (&json["packet"], &json["iface"]),
            (&json!(2), &json!("veth1"))
        );
    }
}
