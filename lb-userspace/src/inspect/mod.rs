//! `lb-agent inspect`: the maps' contents as tables.

mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use lb_common::conntrack::ct_flags;
use lb_common::{
    service::{backend_flags, scope, service_flags},
    Backend, Counter, CtKey, CtValue, NodeConfig, ServiceKey, ServiceStats, ServiceValue,
};

use crate::datapath::{DatapathError, DatapathMaps};
use crate::model::{unmap_addr, Protocol, SocketDisplay};
use table::Table;

/// Everything `inspect` shows, read from the maps at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// Node-wide settings (masquerading, socket-level translation).
    pub node_config: NodeConfig,
    pub services: Vec<ServiceRow>,
    pub backends: Vec<(u32, Backend)>,
    pub conntrack: Vec<(CtKey, CtValue)>,
    pub counters: Vec<(Counter, u64)>,
    /// CLOCK_MONOTONIC at reading time (the clock of `CtValue::last_seen_ns`).
    pub now_ns: u64,
}

/// One service with its slots' backend ids and its counters.
#[derive(Debug)]
pub struct ServiceRow {
    pub key: ServiceKey,
    pub value: ServiceValue,
    /// Backend id of slots `1..=backend_count`, in slot order (0 for a missing slot).
    pub slots: Vec<u32>,
    pub stats: ServiceStats,
}

impl Snapshot {
    pub fn read(maps: &DatapathMaps) -> Result<Snapshot, DatapathError> {
        let slots: BTreeMap<(u32, u32), u32> = maps
            .slots()?
            .into_iter()
            .map(|(k, id)| ((k.group_id, k.slot), id))
            .collect();
        let mut services = Vec::new();
        for (key, value) in maps.services()? {
            let ids = (1..=value.backend_count)
                .map(|slot| slots.get(&(value.group_id, slot)).copied().unwrap_or(0))
                .collect();
            services.push(ServiceRow {
                key,
                value,
                slots: ids,
                stats: maps.service_stats(value.group_id)?,
            });
        }
        services.sort_by_key(|s| (unmap_addr(s.key.addr), s.key.port(), s.key.proto));
        let mut backends = maps.backends()?;
        backends.sort_by_key(|(id, _)| *id);
        let mut conntrack = maps.conntrack()?;
        conntrack.sort_by_key(|(k, v)| (v.group_id, v.flags, k.src_addr, k.src_port, k.dst_port));
        Ok(Snapshot {
            node_config: maps.node_config()?,
            services,
            backends,
            conntrack,
            counters: maps.counters()?,
            now_ns: monotonic_now_ns(),
        })
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut node = Table::new(&["MASQUERADE", "PORTS", "SOCKETS"]);
        let mut row = match self.node_config.masquerades() {
            true => vec![
                unmap_addr(self.node_config.snat_addr).to_string(),
                format!(
                    "{}-{}",
                    self.node_config.snat_port_min(),
                    self.node_config.snat_port_max()
                ),
            ],
            false => vec!["off".to_string(), "-".to_string()],
        };
        row.push(sockets(&self.node_config).to_string());
        node.row(row);
        let mut services = Table::new(&[
            "FRONTEND",
            "SCOPE",
            "ID",
            "BACKENDS",
            "SLOTS",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
            "REJECTS",
            "DROPS",
            "FLAGS",
        ]);
        for s in &self.services {
            services.row(vec![
                frontend(&s.key),
                scope_name(s.key.scope).to_string(),
                s.value.group_id.to_string(),
                s.value.backend_count.to_string(),
                slot_list(&s.slots),
                s.stats.packets.to_string(),
                s.stats.bytes.to_string(),
                s.stats.new_flows.to_string(),
                s.stats.rejects.to_string(),
                s.stats.drops.to_string(),
                flags(&s.value),
            ]);
        }
        let mut backends = Table::new(&["ID", "ADDRESS", "FLAGS"]);
        for (id, b) in &self.backends {
            let local = match b.flags & backend_flags::LOCAL != 0 {
                true => "local",
                false => "-",
            };
            backends.row(vec![
                id.to_string(),
                socket(b.addr, b.port),
                local.to_string(),
            ]);
        }
        let mut conntrack = Table::new(&[
            "DIRECTION",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "NAT TO",
            "SNAT TO",
            "SERVICE",
            "BACKEND",
            "AGE",
            "STATE",
        ]);
        for (k, v) in &self.conntrack {
            let age = Duration::from_nanos(self.now_ns.saturating_sub(v.last_seen_ns));
            conntrack.row(vec![
                direction(v.flags),
                protocol(k.proto),
                socket(k.src_addr, k.src_port),
                socket(k.dst_addr, k.dst_port),
                socket(v.nat_addr, v.nat_port),
                snat(v),
                v.group_id.to_string(),
                v.backend_id.to_string(),
                format!("{}s", age.as_secs()),
                state(v.flags).to_string(),
            ]);
        }
        let mut counters = Table::new(&["COUNTER", "VALUE"]);
        for (c, value) in &self.counters {
            counters.row(vec![c.name().to_string(), value.to_string()]);
        }
        write!(
            f,
            "NODE\n{node}\nSERVICES\n{services}\nBACKENDS\n{backends}\nCONNTRACK\n{conntrack}\n\
             COUNTERS\n{counters}"
        )
    }
}

/// Whose sockets the socket programs translate: `node` (its network namespace), `node+pods`
/// (every namespace) or `off`.
fn sockets(config: &NodeConfig) -> &'static str {
    match (config.sock_netns_cookie, config.sock_all_netns) {
        (0, _) => "off",
        (_, 0) => "node",
        _ => "node+pods",
    }
}

fn frontend(key: &ServiceKey) -> String {
    format!("{}/{}", socket(key.addr, key.port), protocol(key.proto))
}

/// The slots' backend ids, comma-separated; where ids repeat (a Maglev table), each id once
/// with its number of slots (`3x340`), in order of first appearance; `-` for none.
fn slot_list(slots: &[u32]) -> String {
    let mut counts: Vec<(u32, usize)> = Vec::new();
    for id in slots {
        match counts.iter_mut().find(|(seen, _)| seen == id) {
            Some((_, n)) => *n += 1,
            None => counts.push((*id, 1)),
        }
    }
    let repeated = counts.len() < slots.len();
    let list: Vec<String> = counts
        .iter()
        .map(|(id, n)| match repeated {
            true => format!("{id}x{n}"),
            false => id.to_string(),
        })
        .collect();
    match list.is_empty() {
        true => "-".to_string(),
        false => list.join(","),
    }
}

/// `affinity=<timeout>s`, `drop` (DROP_IF_NO_BACKEND), `source-ranges` (SOURCE_RANGES) and
/// `node-in-ranges` (NODE_IN_SOURCE_RANGES), comma-separated; `-` for none.
fn flags(value: &ServiceValue) -> String {
    let mut flags = Vec::new();
    if value.flags & service_flags::AFFINITY != 0 {
        flags.push(format!("affinity={}s", value.affinity_timeout_s));
    }
    if value.flags & service_flags::DROP_IF_NO_BACKEND != 0 {
        flags.push("drop".to_string());
    }
    if value.flags & service_flags::SOURCE_RANGES != 0 {
        flags.push("source-ranges".to_string());
    }
    if value.flags & service_flags::NODE_IN_SOURCE_RANGES != 0 {
        flags.push("node-in-ranges".to_string());
    }
    match flags.is_empty() {
        true => "-".to_string(),
        false => flags.join(","),
    }
}

fn scope_name(scope: u8) -> &'static str {
    match scope {
        scope::EXTERNAL => "external",
        scope::INTERNAL => "internal",
        _ => "unknown",
    }
}

fn socket(addr: [u8; 16], port: [u8; 2]) -> String {
    SocketDisplay(unmap_addr(addr), u16::from_be_bytes(port)).to_string()
}

fn protocol(number: u8) -> String {
    Protocol::from_number(number).map_or_else(|| number.to_string(), |p| p.to_string())
}

fn direction(flags: u8) -> String {
    match flags & ct_flags::DIRECTION {
        ct_flags::FORWARD => "forward".to_string(),
        ct_flags::REPLY => "reply".to_string(),
        _ => format!("flags={flags:#x}"),
    }
}

/// `closing` for a TCP flow that saw a FIN or RST (collected after the close timeout; a
/// masqueraded one's port a new flow may take once it has been idle for a while); `-`
/// otherwise.
fn state(flags: u8) -> &'static str {
    match flags & ct_flags::CLOSING != 0 {
        true => "closing",
        false => "-",
    }
}

/// A masqueraded entry's other translation: forward, the node's address and port the
/// source becomes; reply, the client the destination becomes. `-` when not masqueraded.
fn snat(value: &CtValue) -> String {
    match value.flags & ct_flags::SNAT != 0 {
        true => socket(value.snat_addr, value.snat_port),
        false => "-".to_string(),
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock `bpf_ktime_get_ns` reads.
fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use lb_common::conntrack::ct_flags;
    use lb_common::service::{backend_flags, service_flags};
    use lb_common::{ipv4_mapped, Backend, Counter, CtKey, CtValue, NodeConfig, ServiceKey};
    use lb_common::{ServiceStats, ServiceValue, IPPROTO_TCP};

    use super::{slot_list, ServiceRow, Snapshot};

    #[test]
    fn a_maglev_tables_slots_are_listed_per_backend() {
        assert_eq!(slot_list(&[]), "-");
        assert_eq!(slot_list(&[2, 1]), "2,1");
        assert_eq!(slot_list(&[2, 1, 1, 3, 2, 1]), "2x2,1x3,3x1");
    }

    #[test]
    fn renders_every_section_as_aligned_tables() {
        let vip = ipv4_mapped([198, 19, 0, 10]);
        let pod = ipv4_mapped([198, 18, 1, 1]);
        let client = ipv4_mapped([198, 18, 0, 2]);
        let node = ipv4_mapped([198, 18, 0, 1]);
        let remote_pod = ipv4_mapped([198, 18, 2, 1]);
        let key = |src, sport: u16, dst, dport: u16| CtKey {
            src_addr: src,
            dst_addr: dst,
            src_port: sport.to_be_bytes(),
            dst_port: dport.to_be_bytes(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let snapshot = Snapshot {
            node_config: NodeConfig::masquerading(node, 61000, 65535)
                .with_sock_netns(1)
                .with_sock_all_netns(true),
            services: vec![ServiceRow {
                key: ServiceKey::new(vip, 80, IPPROTO_TCP, lb_common::service::scope::INTERNAL),
                value: ServiceValue {
                    group_id: 1,
                    backend_count: 2,
                    flags: service_flags::AFFINITY | service_flags::DROP_IF_NO_BACKEND,
                    affinity_timeout_s: 600,
                },
                slots: vec![1, 2],
                stats: ServiceStats {
                    packets: 10,
                    bytes: 1000,
                    new_flows: 2,
                    rejects: 1,
                    drops: 0,
                },
            }],
            backends: vec![
                (
                    1,
                    Backend {
                        flags: backend_flags::LOCAL,
                        ..Backend::new(pod, 8080)
                    },
                ),
                (2, Backend::new(remote_pod, 8080)),
            ],
            conntrack: vec![
                (
                    key(client, 40000, vip, 80),
                    CtValue {
                        nat_addr: pod,
                        nat_port: 8080u16.to_be_bytes(),
                        flags: ct_flags::FORWARD,
                        group_id: 1,
                        backend_id: 1,
                        last_seen_ns: 1_000_000_000,
                        ..Default::default()
                    },
                ),
                (
                    key(client, 40001, vip, 80),
                    CtValue {
                        nat_addr: remote_pod,
                        nat_port: 8080u16.to_be_bytes(),
                        flags: ct_flags::FORWARD | ct_flags::SNAT,
                        group_id: 1,
                        backend_id: 2,
                        last_seen_ns: 1_000_000_000,
                        snat_addr: node,
                        snat_port: 61000u16.to_be_bytes(),
                        ..Default::default()
                    },
                ),
                (
                    key(remote_pod, 8080, node, 61000),
                    CtValue {
                        nat_addr: vip,
                        nat_port: 80u16.to_be_bytes(),
                        flags: ct_flags::REPLY | ct_flags::SNAT | ct_flags::CLOSING,
                        group_id: 1,
                        backend_id: 2,
                        last_seen_ns: 1_000_000_000,
                        snat_addr: client,
                        snat_port: 40001u16.to_be_bytes(),
                        ..Default::default()
                    },
                ),
            ],
            counters: vec![(Counter::Packets, 12), (Counter::NewFlows, 2)],
            now_ns: 4_500_000_000,
        };
        let expected = "\
NODE
MASQUERADE  PORTS        SOCKETS
198.18.0.1  61000-65535  node+pods

SERVICES
FRONTEND            SCOPE     ID  BACKENDS  SLOTS  PACKETS  BYTES  NEW FLOWS  REJECTS  DROPS  FLAGS
198.19.0.10:80/TCP  internal  1   2         1,2    10       1000   2          1        0      affinity=600s,drop

BACKENDS
ID  ADDRESS          FLAGS
1   198.18.1.1:8080  local
2   198.18.2.1:8080  -

CONNTRACK
DIRECTION  PROTO  SOURCE            DESTINATION       NAT TO           SNAT TO           SERVICE  BACKEND  AGE  STATE
forward    TCP    198.18.0.2:40000  198.19.0.10:80    198.18.1.1:8080  -                 1        1        3s   -
forward    TCP    198.18.0.2:40001  198.19.0.10:80    198.18.2.1:8080  198.18.0.1:61000  1        2        3s   -
reply      TCP    198.18.2.1:8080   198.18.0.1:61000  198.19.0.10:80   198.18.0.2:40001  1        2        3s   closing

COUNTERS
COUNTER    VALUE
packets    12
new_flows  2
";
        assert_eq!(snapshot.to_string(), expected);
    }
}
