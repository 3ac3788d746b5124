//! `lb-agent inspect`: the maps' contents as tables or one JSON document, named after the
//! Services the agent wrote into `LB_SVC_NAMES`, narrowed by filters, conntrack paged.

mod filter;
mod json;
mod table;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use lb_common::conntrack::ct_flags;
use lb_common::{
    service::{backend_flags, scope, service_flags},
    Backend, Counter, CtKey, CtValue, NodeConfig, ServiceKey, ServiceStats, ServiceValue,
};

use crate::datapath::{DatapathError, DatapathMaps};
use crate::model::{unmap_addr, Protocol, SocketDisplay};
pub use filter::{AddrFilter, Filters, ServiceFilter};
use table::Table;

/// Conntrack rows shown when no limit is given.
pub const DEFAULT_CONNTRACK_LIMIT: usize = 50;

/// What to show: the filters and which conntrack rows (in the order of the table).
#[derive(Clone, Debug)]
pub struct Query {
    pub filters: Filters,
    /// Matching conntrack rows skipped before the first one shown.
    pub conntrack_offset: usize,
    /// Conntrack rows shown at most; `None` for all.
    pub conntrack_limit: Option<usize>,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            filters: Filters::default(),
            conntrack_offset: 0,
            conntrack_limit: Some(DEFAULT_CONNTRACK_LIMIT),
        }
    }
}

/// Everything `inspect` shows, read from the maps at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// Node-wide settings (masquerading, socket-level translation).
    pub node_config: NodeConfig,
    pub services: Vec<ServiceRow>,
    pub backends: Vec<(u32, Backend)>,
    /// The conntrack rows shown: a page of the matching ones, in table order.
    pub conntrack: Vec<(CtKey, CtValue)>,
    /// Matching conntrack rows, shown or not.
    pub conntrack_matched: usize,
    /// Matching conntrack rows before the first one shown.
    pub conntrack_offset: usize,
    pub counters: Vec<(Counter, u64)>,
    /// CLOCK_MONOTONIC at reading time (the clock of `CtValue::last_seen_ns`).
    pub now_ns: u64,
}

/// One service with its slots' backend ids and its counters.
#[derive(Debug)]
pub struct ServiceRow {
    pub key: ServiceKey,
    pub value: ServiceValue,
    /// `namespace/name:port` from `LB_SVC_NAMES`; `None` if the agent wrote none.
    pub name: Option<String>,
    /// Backend id of slots `1..=backend_count`, in slot order (0 for a missing slot).
    pub slots: Vec<u32>,
    pub stats: ServiceStats,
}

impl Snapshot {
    /// Reads every map, keeping what `query` selects.
    pub fn read(maps: &DatapathMaps, query: &Query) -> Result<Snapshot, DatapathError> {
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
                name: maps.service_name(value.group_id)?,
                slots: ids,
                stats: maps.service_stats(value.group_id)?,
            });
        }
        let conntrack = maps.conntrack()?;
        let snapshot = Snapshot {
            node_config: maps.node_config()?,
            services,
            backends: maps.backends()?,
            conntrack_matched: conntrack.len(),
            conntrack,
            conntrack_offset: 0,
            counters: maps.counters()?,
            now_ns: monotonic_now_ns(),
        };
        Ok(snapshot.select(query))
    }

    /// Keeps the services, backends and conntrack rows the filters select, and the conntrack
    /// page asked for; sorts what is kept. Counters and the node's settings stay whole.
    fn select(mut self, query: &Query) -> Snapshot {
        let filters = &query.filters;
        let backend_ids: Option<BTreeSet<u32>> = filters.backend.map(|filter| {
            self.backends
                .iter()
                .filter(|(_, b)| filter.matches(b.addr, b.port))
                .map(|(id, _)| *id)
                .collect()
        });
        self.services.retain(|s| {
            filters
                .service
                .as_ref()
                .is_none_or(|filter| s.name.as_deref().is_some_and(|name| filter.matches(name)))
                && filters
                    .frontend
                    .is_none_or(|filter| filter.matches(s.key.addr, s.key.port))
                && backend_ids
                    .as_ref()
                    .is_none_or(|ids| s.slots.iter().any(|id| ids.contains(id)))
        });
        self.services.sort_by_key(|s| {
            (
                unmap_addr(s.key.addr),
                s.key.port(),
                s.key.proto,
                s.key.scope,
            )
        });
        // Only the groups of the services kept, when a service filter chose them.
        let groups: Option<BTreeSet<u32>> = (filters.service.is_some()
            || filters.frontend.is_some())
        .then(|| self.services.iter().map(|s| s.value.group_id).collect());
        let used: Option<BTreeSet<u32>> = groups
            .is_some()
            .then(|| self.services.iter().flat_map(|s| s.slots.clone()).collect());
        self.backends.retain(|(id, _)| {
            backend_ids.as_ref().is_none_or(|ids| ids.contains(id))
                && used.as_ref().is_none_or(|ids| ids.contains(id))
        });
        self.backends.sort_by_key(|(id, _)| *id);
        self.conntrack.retain(|(_, v)| {
            groups.as_ref().is_none_or(|ids| ids.contains(&v.group_id))
                && backend_ids
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&v.backend_id))
        });
        self.conntrack_matched = self.conntrack.len();
        self.conntrack_offset = query.conntrack_offset;
        self.conntrack = page(
            self.conntrack,
            query.conntrack_offset,
            query.conntrack_limit,
        );
        self
    }

    /// The name of slot group `group_id`, if a service kept shows it.
    fn name_of(&self, group_id: u32) -> Option<&str> {
        self.services
            .iter()
            .find(|s| s.value.group_id == group_id)
            .and_then(|s| s.name.as_deref())
    }

    /// Matching conntrack rows after those shown.
    fn conntrack_after(&self) -> usize {
        self.conntrack_matched
            .saturating_sub(self.conntrack_offset + self.conntrack.len())
    }

    /// Where the conntrack rows shown lie among the matching ones, when not all are shown.
    fn paging_note(&self) -> Option<String> {
        let (shown, first) = (self.conntrack.len(), self.conntrack_offset + 1);
        let after = self.conntrack_after();
        if shown == self.conntrack_matched {
            return None;
        }
        let range = match shown {
            0 => format!("no rows at offset {}", self.conntrack_offset),
            _ => format!("rows {first}-{}", first + shown - 1),
        };
        let more = match after {
            0 => String::new(),
            _ => format!(
                "; {after} more: --conntrack-offset {}, --conntrack-limit N or --all",
                self.conntrack_offset + shown
            ),
        };
        Some(format!(
            "{range} of {} matching entries{more}",
            self.conntrack_matched
        ))
    }
}

/// The table order of conntrack rows: by service, direction, then the flow.
fn ct_order((k, v): &(CtKey, CtValue)) -> impl Ord {
    (
        v.group_id,
        v.flags & ct_flags::DIRECTION,
        k.src_addr,
        k.src_port,
        k.dst_addr,
        k.dst_port,
        k.proto,
        Reverse(v.last_seen_ns),
    )
}

/// Rows `offset..offset + limit` of `rows` in table order, sorting no more than those: a
/// selection moves the first `offset + limit` ahead in linear time, then only they are sorted.
fn page(
    mut rows: Vec<(CtKey, CtValue)>,
    offset: usize,
    limit: Option<usize>,
) -> Vec<(CtKey, CtValue)> {
    let end = limit.map_or(rows.len(), |limit| offset.saturating_add(limit));
    if end < rows.len() {
        rows.select_nth_unstable_by_key(end, ct_order);
        rows.truncate(end);
    }
    rows.sort_unstable_by_key(ct_order);
    rows.drain(..offset.min(rows.len()));
    rows
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut node = Table::new(&["MASQUERADE", "PORTS", "SOCKETS"]);
        let mut row = match masquerade_addresses(&self.node_config) {
            Some(addrs) => vec![
                addrs,
                format!(
                    "{}-{}",
                    self.node_config.snat_port_min(),
                    self.node_config.snat_port_max()
                ),
            ],
            None => vec!["off".to_string(), "-".to_string()],
        };
        row.push(sockets(&self.node_config).to_string());
        node.row(row);
        let mut services = Table::new(&[
            "FRONTEND",
            "SERVICE",
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
                s.name.as_deref().unwrap_or("-").to_string(),
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
            "ID",
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
                self.name_of(v.group_id).unwrap_or("-").to_string(),
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
        // After the table's blank line, so readers of the table stop before it.
        let note = self
            .paging_note()
            .map_or_else(String::new, |note| format!("{note}\n\n"));
        write!(
            f,
            "NODE\n{node}\nSERVICES\n{services}\nBACKENDS\n{backends}\nCONNTRACK\n{conntrack}\n\
             {note}COUNTERS\n{counters}"
        )
    }
}

/// The addresses external flows are masqueraded to, IPv4 first, comma-separated (`None`: off).
fn masquerade_addresses(config: &NodeConfig) -> Option<String> {
    let v4 = (config.snat_addr != [0; 16]).then(|| unmap_addr(config.snat_addr).to_string());
    let v6 = (config.snat_addr6 != [0; 16])
        .then(|| std::net::Ipv6Addr::from(config.snat_addr6).to_string());
    let addrs: Vec<String> = v4.into_iter().chain(v6).collect();
    (!addrs.is_empty()).then(|| addrs.join(","))
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
    format!("{}/{}", frontend_addr(key), protocol(key.proto))
}

fn frontend_addr(key: &ServiceKey) -> String {
    socket(key.addr, key.port)
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
/// `node-in-ranges` (NODE_IN_SOURCE_RANGES).
fn flag_list(value: &ServiceValue) -> Vec<String> {
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
    flags
}

/// [`flag_list`] comma-separated; `-` for none.
fn flags(value: &ServiceValue) -> String {
    let flags = flag_list(value);
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

/// CLOCK_MONOTONIC in nanoseconds, the clock the programs stamp with (to the tick).
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

    use super::{
        masquerade_addresses, page, slot_list, AddrFilter, Filters, Query, ServiceRow, Snapshot,
    };

    #[test]
    fn a_maglev_tables_slots_are_listed_per_backend() {
        assert_eq!(slot_list(&[]), "-");
        assert_eq!(slot_list(&[2, 1]), "2,1");
        assert_eq!(slot_list(&[2, 1, 1, 3, 2, 1]), "2x2,1x3,3x1");
    }

    /// One service with two backends and three conntrack entries, the third a reply.
    fn sample() -> Snapshot {
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
        Snapshot {
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
                name: Some("default/web:http".to_string()),
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
            conntrack_matched: 3,
            conntrack_offset: 0,
            counters: vec![(Counter::Packets, 12), (Counter::NewFlows, 2)],
            now_ns: 4_500_000_000,
        }
    }

    #[test]
    fn renders_every_section_as_aligned_tables() {
        let snapshot = sample();
        let expected = "\
NODE
MASQUERADE  PORTS        SOCKETS
198.18.0.1  61000-65535  node+pods

SERVICES
FRONTEND            SERVICE           SCOPE     ID  BACKENDS  SLOTS  PACKETS  BYTES  NEW FLOWS  REJECTS  DROPS  FLAGS
198.19.0.10:80/TCP  default/web:http  internal  1   2         1,2    10       1000   2          1        0      affinity=600s,drop

BACKENDS
ID  ADDRESS          FLAGS
1   198.18.1.1:8080  local
2   198.18.2.1:8080  -

CONNTRACK
DIRECTION  PROTO  SOURCE            DESTINATION       NAT TO           SNAT TO           SERVICE           ID  BACKEND  AGE  STATE
forward    TCP    198.18.0.2:40000  198.19.0.10:80    198.18.1.1:8080  -                 default/web:http  1   1        3s   -
forward    TCP    198.18.0.2:40001  198.19.0.10:80    198.18.2.1:8080  198.18.0.1:61000  default/web:http  1   2        3s   -
reply      TCP    198.18.2.1:8080   198.18.0.1:61000  198.19.0.10:80   198.18.0.2:40001  default/web:http  1   2        3s   closing

COUNTERS
COUNTER    VALUE
packets    12
new_flows  2
";
        assert_eq!(snapshot.to_string(), expected);
    }

    fn query(service: Option<&str>, frontend: Option<&str>, backend: Option<&str>) -> Query {
        Query {
            filters: Filters {
                service: service.map(|s| s.parse().unwrap()),
                frontend: frontend.map(|s| s.parse().unwrap()),
                backend: backend.map(|s| s.parse::<AddrFilter>().unwrap()),
            },
            ..Query::default()
        }
    }

    /// (services, backend ids, conntrack source ports) `query` keeps of the sample.
    fn kept(query: &Query) -> (usize, Vec<u32>, Vec<u16>) {
        let snapshot = sample().select(query);
        (
            snapshot.services.len(),
            snapshot.backends.iter().map(|(id, _)| *id).collect(),
            snapshot
                .conntrack
                .iter()
                .map(|(k, _)| u16::from_be_bytes(k.src_port))
                .collect(),
        )
    }

    #[test]
    fn filters_narrow_services_backends_and_flows() {
        let all = (1, vec![1, 2], vec![40000, 40001, 8080]);
        assert_eq!(kept(&Query::default()), all);
        assert_eq!(kept(&query(Some("default/web"), None, None)), all);
        assert_eq!(kept(&query(Some("default/web:http"), None, None)), all);
        let nothing = (0, vec![], vec![]);
        assert_eq!(kept(&query(Some("default/web:https"), None, None)), nothing);
        assert_eq!(kept(&query(Some("other/web"), None, None)), nothing);
        assert_eq!(kept(&query(None, Some("198.19.0.10:80"), None)), all);
        assert_eq!(kept(&query(None, Some("198.19.0.10"), None)), all);
        assert_eq!(kept(&query(None, Some("198.19.0.10:81"), None)), nothing);
        // The backend's own flows (forward and reply), and the service using it.
        let remote = (1, vec![2], vec![40001, 8080]);
        assert_eq!(kept(&query(None, None, Some("198.18.2.1:8080"))), remote);
        assert_eq!(
            kept(&query(Some("default/web"), None, Some("198.18.2.1"))),
            remote
        );
        assert_eq!(
            kept(&query(None, None, Some("198.18.9.9"))),
            (0, vec![], vec![])
        );
    }

    #[test]
    fn a_service_without_a_name_matches_no_service_filter() {
        let mut snapshot = sample();
        snapshot.services[0].name = None;
        let snapshot = snapshot.select(&query(Some("default/web"), None, None));
        assert!(snapshot.services.is_empty() && snapshot.conntrack.is_empty());
        let mut unnamed = sample();
        unnamed.services[0].name = None;
        assert!(unnamed.to_string().contains("198.19.0.10:80/TCP  -  "));
    }

    #[test]
    fn conntrack_is_paged_in_table_order_with_a_note() {
        let limited = |offset, limit| Query {
            conntrack_offset: offset,
            conntrack_limit: limit,
            ..Query::default()
        };
        let first = sample().select(&limited(0, Some(2)));
        let ports: Vec<u16> = first
            .conntrack
            .iter()
            .map(|(k, _)| u16::from_be_bytes(k.src_port))
            .collect();
        assert_eq!(ports, [40000, 40001], "forward entries before replies");
        assert_eq!(
            first.paging_note().as_deref(),
            Some(
                "rows 1-2 of 3 matching entries; 1 more: --conntrack-offset 2, \
                 --conntrack-limit N or --all"
            )
        );
        assert!(first.to_string().contains("--conntrack-offset 2"));
        let last = sample().select(&limited(2, Some(2)));
        assert_eq!(last.conntrack.len(), 1);
        assert_eq!(
            last.paging_note().as_deref(),
            Some("rows 3-3 of 3 matching entries")
        );
        let past = sample().select(&limited(5, Some(2)));
        assert_eq!(
            past.paging_note().as_deref(),
            Some("no rows at offset 5 of 3 matching entries")
        );
        assert_eq!(sample().select(&limited(0, None)).paging_note(), None);
        assert_eq!(sample().select(&limited(0, Some(3))).paging_note(), None);
    }

    #[test]
    fn a_page_is_the_same_slice_of_the_sorted_rows_whatever_the_input_order() {
        let rows: Vec<_> = sample().conntrack;
        let mut many = Vec::new();
        for port in 0..200u16 {
            let mut row = rows[(port % 3) as usize];
            row.0.src_port = (1000 + port * 7 % 200).to_be_bytes();
            many.push(row);
        }
        let mut sorted = many.clone();
        sorted.sort_by_key(super::ct_order);
        for (offset, limit) in [(0, 10), (15, 20), (190, 50), (250, 5)] {
            let end = (offset + limit).min(sorted.len());
            let want = sorted.get(offset.min(end)..end).unwrap().to_vec();
            let mut shuffled = many.clone();
            shuffled.reverse();
            assert_eq!(
                page(shuffled, offset, Some(limit)),
                want,
                "{offset} {limit}"
            );
        }
        assert_eq!(page(many, 0, None), sorted);
    }

    #[test]
    fn json_has_the_tables_content_under_stable_names() {
        let snapshot = sample().select(&Query {
            conntrack_limit: Some(1),
            ..Query::default()
        });
        let json: serde_json::Value = serde_json::from_str(&snapshot.to_json()).unwrap();
        assert_eq!(json["node"]["masquerade"], "198.18.0.1");
        assert_eq!(json["node"]["snat_port_min"], 61000);
        assert_eq!(json["node"]["sockets"], "node+pods");
        let service = &json["services"][0];
        assert_eq!(service["frontend"], "198.19.0.10:80");
        assert_eq!(service["protocol"], "TCP");
        assert_eq!(service["name"], "default/web:http");
        assert_eq!(service["scope"], "internal");
        assert_eq!(service["slots"], serde_json::json!([1, 2]));
        assert_eq!(service["new_flows"], 2);
        assert_eq!(
            service["flags"],
            serde_json::json!(["affinity=600s", "drop"])
        );
        assert_eq!(json["backends"][0]["address"], "198.18.1.1:8080");
        assert_eq!(json["backends"][0]["local"], true);
        let conntrack = &json["conntrack"];
        assert_eq!(
            (conntrack["matched"].as_u64(), conntrack["more"].as_u64()),
            (Some(3), Some(2))
        );
        let flow = &conntrack["entries"][0];
        assert_eq!(flow["source"], "198.18.0.2:40000");
        assert_eq!(flow["nat_to"], "198.18.1.1:8080");
        assert_eq!(flow["snat_to"], serde_json::Value::Null);
        assert_eq!(flow["service"], "default/web:http");
        assert_eq!(flow["backend_id"], 1);
        assert_eq!(flow["age_s"], 3);
        assert_eq!(json["counters"]["packets"], 12);
    }

    #[test]
    fn the_masquerade_addresses_of_both_families_are_listed() {
        let node = ipv4_mapped([198, 18, 0, 1]);
        let v6: std::net::Ipv6Addr = "2001:2::1".parse().unwrap();
        let both = NodeConfig::masquerading(node, 61000, 65535).with_snat_addr6(v6.octets());
        let only_v6 = NodeConfig::masquerading([0; 16], 61000, 65535).with_snat_addr6(v6.octets());
        assert_eq!(
            masquerade_addresses(&both).as_deref(),
            Some("198.18.0.1,2001:2::1")
        );
        assert_eq!(masquerade_addresses(&only_v6).as_deref(), Some("2001:2::1"));
        assert_eq!(masquerade_addresses(&NodeConfig::default()), None);
    }
}
