//! `inspect --json`: the snapshot as one JSON document. Field names are stable (the README
//! lists them); addresses are `IP:PORT` strings, absent values `null`.

use std::collections::BTreeMap;
use std::time::Duration;

use lb_common::conntrack::ct_flags;
use lb_common::service::backend_flags;
use serde::Serialize;

use super::{
    direction, flag_list, frontend_addr, masquerade_addresses, protocol, scope_name, socket,
    sockets, Snapshot,
};

#[derive(Serialize)]
struct Document<'a> {
    node: Node,
    services: Vec<Service<'a>>,
    backends: Vec<Backend>,
    conntrack: Conntrack<'a>,
    counters: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct Node {
    /// The address masqueraded flows leave with; `null` when not masquerading.
    masquerade: Option<String>,
    snat_port_min: Option<u16>,
    snat_port_max: Option<u16>,
    sockets: &'static str,
}

#[derive(Serialize)]
struct Service<'a> {
    frontend: String,
    protocol: String,
    name: Option<&'a str>,
    scope: &'static str,
    id: u32,
    backend_count: u32,
    slots: &'a [u32],
    packets: u64,
    bytes: u64,
    new_flows: u64,
    rejects: u64,
    drops: u64,
    flags: Vec<String>,
}

#[derive(Serialize)]
struct Backend {
    id: u32,
    address: String,
    local: bool,
}

#[derive(Serialize)]
struct Conntrack<'a> {
    /// Entries the filters match, shown or not.
    matched: usize,
    offset: usize,
    /// Matching entries after those in `entries`.
    more: usize,
    entries: Vec<Flow<'a>>,
}

#[derive(Serialize)]
struct Flow<'a> {
    direction: String,
    protocol: String,
    source: String,
    destination: String,
    nat_to: String,
    snat_to: Option<String>,
    service: Option<&'a str>,
    service_id: u32,
    backend_id: u32,
    age_s: u64,
    closing: bool,
}

impl Snapshot {
    /// The snapshot as pretty-printed JSON, with a final newline.
    pub fn to_json(&self) -> String {
        let config = &self.node_config;
        let masquerades = config.masquerades();
        let document = Document {
            node: Node {
                masquerade: masquerade_addresses(config),
                snat_port_min: masquerades.then(|| config.snat_port_min()),
                snat_port_max: masquerades.then(|| config.snat_port_max()),
                sockets: sockets(config),
            },
            services: self
                .services
                .iter()
                .map(|s| Service {
                    frontend: frontend_addr(&s.key),
                    protocol: protocol(s.key.proto),
                    name: s.name.as_deref(),
                    scope: scope_name(s.key.scope),
                    id: s.value.group_id,
                    backend_count: s.value.backend_count,
                    slots: &s.slots,
                    packets: s.stats.packets,
                    bytes: s.stats.bytes,
                    new_flows: s.stats.new_flows,
                    rejects: s.stats.rejects,
                    drops: s.stats.drops,
                    flags: flag_list(&s.value),
                })
                .collect(),
            backends: self
                .backends
                .iter()
                .map(|(id, b)| Backend {
                    id: *id,
                    address: socket(b.addr, b.port),
                    local: b.flags & backend_flags::LOCAL != 0,
                })
                .collect(),
            conntrack: Conntrack {
                matched: self.conntrack_matched,
                offset: self.conntrack_offset,
                more: self.conntrack_after(),
                entries: self
                    .conntrack
                    .iter()
                    .map(|(k, v)| Flow {
                        direction: direction(v.flags),
                        protocol: protocol(k.proto),
                        source: socket(k.src_addr, k.src_port),
                        destination: socket(k.dst_addr, k.dst_port),
                        nat_to: socket(v.nat_addr, v.nat_port),
                        snat_to: (v.flags & ct_flags::SNAT != 0)
                            .then(|| socket(v.snat_addr, v.snat_port)),
                        service: self.name_of(v.group_id),
                        service_id: v.group_id,
                        backend_id: v.backend_id,
                        age_s: Duration::from_nanos(self.now_ns.saturating_sub(v.last_seen_ns))
                            .as_secs(),
                        closing: v.flags & ct_flags::CLOSING != 0,
                    })
                    .collect(),
            },
            counters: self.counters.iter().map(|(c, v)| (c.name(), *v)).collect(),
        };
        let mut text = serde_json::to_string_pretty(&document)
            .unwrap_or_else(|e| unreachable!("plain structs always serialize: {e}"));
        text.push('\n');
        text
    }
}
